"""The CLI's start-up stays cheap: the commands people type most load only what they need.

A test on the set of modules loaded, not on time: a module that a change adds to these paths must be
added below on purpose (bench/README.md, `startup`, has the times).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.machines.state import MachineRecord, save_machine
from veneer.util import proc

SRC = Path(__file__).resolve().parents[2] / "src"

# veneer's modules that every command loads: the CLI's frame, the settings and the paths.
FRAME = {
    "veneer",
    "veneer.errors",
    "veneer.cli",
    "veneer.cli.help",
    "veneer.config",
    "veneer.config.layout",
    "veneer.config.settings",
}
# What a listing adds: the records, reading a machine's state, and the size of its upper dir.
LISTING = {
    "veneer.cli.machine",
    "veneer.cli.output",
    # The path of busybox's init, which `machines.guest` recognizes (a light module, as is its package).
    "veneer.images",
    "veneer.images.distros",
    "veneer.images.distros.busybox",
    "veneer.config.uidrange",
    "veneer.machines",
    "veneer.machines.guest",
    "veneer.machines.inspect",
    "veneer.machines.restoring",
    "veneer.machines.state",
    "veneer.machines.sweep",
    "veneer.machines.upper",
    "veneer.overlay",
    "veneer.overlay.idmap",
    "veneer.overlay.mount",
    "veneer.overlay.view",
    "veneer.util",
    "veneer.util.fs",
    "veneer.util.inroot",
    "veneer.util.mountinfo",
    "veneer.util.proc",
    "veneer.util.procfs",  # process start times, read from /proc (liveness of a machine)
    "veneer.util.progress",  # the interface long work reports into (distros' builders): an enum
    "veneer.util.staging",
    "veneer.util.walk",
}
ALL_CLI = {
    f"veneer.cli.{m}"
    for m in (
        "completion",
        "copy",
        "image",
        "machine",
        "network",
        "rebase",
        "running",
        "snapshot",
        "stats",
        "hosts",
    )
}
STARTUP_MODULES = {
    "--help": FRAME
    | ALL_CLI
    | {
        "veneer.cli.output",
        "veneer.cli.progress",
        "veneer.config.uidrange",
        "veneer.util",
        "veneer.util.progress",
    },
    "list": FRAME | LISTING,
    "status": FRAME | LISTING,
}
# Never on these paths: the machinery of other verbs, and heavy standard modules.
NEVER = (
    "veneer.machines.recovery",
    "veneer.network",
    "veneer.runtime",
    "veneer.images.store",
    "veneer.images.transfer",
    "veneer.images.bootstrap",
    "veneer.rebase",
)
NEVER_STDLIB = ("tarfile", "zipfile", "email", "http", "urllib.request", "asyncio", "ansible")


def _loaded_by_python() -> set[str]:
    """What the interpreter loads before veneer does anything (site hooks of this installation)."""
    code = "import sys; print(*sys.modules)"
    return set(proc.run([sys.executable, "-c", code], capture=True, env={}).stdout.split())


def _loaded(argv: list[str], root: Path) -> set[str]:
    code = (
        "import sys; from veneer.cli import main; status = main(sys.argv[1:]); "
        "print(status, *sorted(sys.modules), file=sys.stderr)"
    )
    env = {"PYTHONPATH": str(SRC), "VENEER_ROOT": str(root / "state"), "VENEER_RUN": str(root / "run")}
    stderr = proc.run([sys.executable, "-c", code, *argv], capture=True, env=env).stderr
    status, *modules = stderr.split("\n")[-2].split()
    assert status == "0", stderr
    return set(modules)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    layout = Layout(root=tmp_path / "state", run=tmp_path / "run", uids=tmp_path / "uids")
    name = MachineName("m1")
    layout.machine_upper(name).mkdir(parents=True)
    record = MachineRecord(
        name=name, image="bb", revision=0, created=1700000000.0, machine_id="0" * 32, uid_base=None
    )
    save_machine(layout.machine_record(name), record)
    return tmp_path


@pytest.mark.parametrize("command", sorted(STARTUP_MODULES))
def test_the_cheap_commands_load_only_what_they_need(command: str, store: Path) -> None:
    argv = {"--help": ["--help"], "list": ["list", "--json"], "status": ["status", "m1", "--json"]}[command]
    loaded = _loaded(argv, store) - _loaded_by_python()
    veneer_modules = {m for m in loaded if m == "veneer" or m.startswith("veneer.")}
    assert veneer_modules - STARTUP_MODULES[command] == set()
    assert [m for m in loaded if m.startswith(NEVER) or m.startswith(NEVER_STDLIB)] == []


def test_the_store_is_seen_by_the_listing(store: Path) -> None:
    # The fixture's machine is listed: the paths above are those of a real listing, not of an error.
    code = "import sys; from veneer.cli import main; sys.exit(main(['list', '--json']))"
    env = {"PYTHONPATH": str(SRC), "VENEER_ROOT": str(store / "state"), "VENEER_RUN": str(store / "run")}
    listed = json.loads(proc.run([sys.executable, "-c", code], capture=True, env=env).stdout)
    assert [m["name"] for m in listed] == ["m1"]


def test_a_run_loads_the_nat_machinery_and_the_rebase_journal_only_when_needed() -> None:
    # What `veneer run` imports before it knows the machine's network or whether a rebase was cut short.
    code = "import sys, veneer.cli.machine, veneer.machines.run; print(*sorted(sys.modules))"
    loaded = set(
        proc.run([sys.executable, "-c", code], capture=True, env={"PYTHONPATH": str(SRC)}).stdout.split()
    )
    assert "veneer.machines.netsetup" in loaded and "veneer.machines.recovery" in loaded
    nat_or_rebase = (
        "veneer.network.netlink",
        "veneer.network.nat",
        "veneer.network.dns",
        "veneer.network.libnft",
    )
    assert sorted(loaded & {*nat_or_rebase, "veneer.rebase.journal", "veneer.machines.lifecycle"}) == []
