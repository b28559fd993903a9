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

# veneer's modules that every command loads: the CLI's frame and the plain values its options parse.
FRAME = {
    "veneer",
    "veneer.errors",
    "veneer.cli",
    "veneer.cli.args",
    "veneer.cli.help",
    "veneer.cli.output",
    "veneer.config",
    "veneer.config.values",
}
# What a listing adds: the store's paths and settings, the records, reading a machine's state, and the size
# of its upper dir (through a view that follows no symlink: ctypes).
LISTING = {
    "veneer.cli.machine",
    "veneer.config.layout",
    "veneer.config.settings",
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
    "veneer.util.mountinfo",
    "veneer.util.procfs",  # process start times, read from /proc (liveness of a machine)
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
STARTUP_MODULES = {"--help": FRAME | ALL_CLI, "list": FRAME | LISTING, "status": FRAME | LISTING}
# Never on these paths: the machinery of other verbs, and standard modules they do not need. `--help`
# declares every command's options and runs nothing: no settings (dataclasses, and inspect under it), no
# logging, no JSON. A listing reads files: it runs no command (subprocess) and writes no file (tempfile).
NEVER = (
    "veneer.machines.recovery",
    "veneer.network",
    "veneer.runtime",
    "veneer.images",
    "veneer.rebase",
    "veneer.util.proc",
    "veneer.util.inroot",
)
NEVER_STDLIB = (
    "tarfile", "zipfile", "email", "http", "urllib.request", "asyncio", "ansible", "subprocess", "tempfile",
    "shutil", "bz2", "lzma", "concurrent", "hashlib", "random",
)  # fmt: skip
NEVER_FOR_HELP = (
    "dataclasses",
    "inspect",
    "logging",
    "json",
    "pathlib",
    "veneer.config.settings",
    "veneer.config.layout",
)


def _within(modules: set[str], packages: tuple[str, ...]) -> set[str]:
    """The modules that are one of `packages` or inside one."""
    return {m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages)}


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
    assert sorted(_within(loaded, NEVER + NEVER_STDLIB)) == []
    if command == "--help":
        assert sorted(_within(loaded, NEVER_FOR_HELP)) == []


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


def _loaded_by_importing(*modules: str) -> set[str]:
    code = f"import sys, {', '.join(modules)}; print(*sorted(sys.modules))"
    env = {"PYTHONPATH": str(SRC)}
    return (
        set(proc.run([sys.executable, "-c", code], capture=True, env=env).stdout.split())
        - _loaded_by_python()
    )


def test_start_and_stop_load_neither_the_others_machinery_nor_a_run() -> None:
    # What `veneer start` and `stop` import before they know what they do: a start loads the launch (nspawn's
    # command line, the network, an application image's run config) once it starts, a stop the exec into
    # the machine once it asks the init to power off, and only `start A B` a pool of threads.
    loaded = _loaded_by_importing("veneer.cli.running", "veneer.machines.boot", "veneer.machines.many")
    assert "veneer.machines.recovery" in loaded
    others = {
        "veneer.machines.launch",
        "veneer.machines.app",
        "veneer.machines.inside",
        "veneer.machines.run",
        "veneer.machines.lifecycle",
        "veneer.runtime.nspawn",
        "veneer.runtime.enter",
        "veneer.images.distros.busybox",
        "veneer.util.inroot",
        "concurrent.futures",
        "tempfile",
    }
    assert sorted(loaded & others) == []


def test_a_run_loads_no_verb_but_its_own() -> None:
    loaded = _loaded_by_importing("veneer.cli.machine", "veneer.machines.run")
    others = {
        "veneer.machines.boot",
        "veneer.machines.inside",
        "veneer.machines.lifecycle",
        "veneer.images.distros.busybox",
        "veneer.util.inroot",
        "concurrent.futures",
        "tempfile",
    }
    assert sorted(loaded & others) == []
