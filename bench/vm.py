"""run.py on a systemd host: the tests' Debian VM (tests/integration/vms.py) booted under QEMU, run.py run
inside on the systemd supervisor, its results brought back. `sudo python3 bench/vm.py [--only ...]`;
bench/README.md, "On a systemd host".

The VM is the tests' own (same cached image, same boot, this checkout read-only at /veneer), so the
guest's veneer is this checkout's: its src/ and bench/ copied onto the guest's disk first (GUEST_COPY), as
a host has veneer installed, since reading modules through 9p would slow veneer's imports alone (the
contenders are installed in the image). It has no network, no podman and no mirror: run.py runs with
--no-podman and makes `deb` from the image's Debian tree. Each benchmark is a run.py of its own, its JSON
written on the guest's disk and read back through the guest agent, so one that fails costs only its rows.
qemu is killed on every way out (the tests' `booted_vm`), and with this process should it be killed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import REPO, exit_with, log, raise_on_sigterm, save_report
from run import format_table

from veneer.util.proc import run

sys.path.insert(0, str(REPO))
from tests.integration.vms import (
    GUEST_CHECKOUT,
    GUEST_DEBIAN_TREE,
    SUITES,
    Recipe,
    VirtualMachine,
    booted_vm,
    cached_image,
)

# What works there: `create` needs podman, `memory` is bench/supervisors.py's on that supervisor, and
# `many` did not finish (bench/README.md, "On a systemd host"): --only many to try it.
DEFAULT_ONLY = ("startup", "run", "boot-bb", "boot")
RUN_TIMEOUT = 3600.0  # seconds for one benchmark under emulation
GUEST_COPY = "/var/tmp/veneer-bench"  # where the checkout's src/ and bench/ are copied in the guest


def copy_checkout(vm: VirtualMachine) -> None:
    """src/ and bench/ onto the guest's disk, bytecode included (`cp -a` keeps the times it checks)."""
    vm.run(["rm", "-rf", GUEST_COPY])
    vm.run(["mkdir", "-p", GUEST_COPY])
    vm.run(["cp", "-a", f"{GUEST_CHECKOUT}/src", f"{GUEST_CHECKOUT}/bench", GUEST_COPY])


def run_in_guest(vm: VirtualMachine, name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """One benchmark by run.py in the guest; its report, or None (and its output logged) if it failed."""
    output = f"/var/tmp/vmbench-{name}.json"
    argv = [
        "python3", f"{GUEST_COPY}/bench/run.py", "--only", name, "--no-podman",
        "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--machines", str(args.machines),
        "--debian-from", GUEST_DEBIAN_TREE, "--output", output,
    ]  # fmt: skip
    log(f"in the VM: {' '.join(argv[1:])}")
    started = time.monotonic()
    result = vm.run(argv, ok=None, timeout=RUN_TIMEOUT)
    log(f"'{name}' took {time.monotonic() - started:.0f} s in the VM, exit status {result.returncode}")
    if result.returncode != 0:
        log(f"'{name}' failed in the VM:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
        return None
    report: dict[str, Any] = json.loads(vm.run(["cat", output]).stdout)
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--suite", choices=SUITES, default=SUITES[0], help="the VM's Debian (default bookworm)"
    )
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=list(DEFAULT_ONLY),
        help=f"benchmarks, comma-separated (default {','.join(DEFAULT_ONLY)})",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per contender (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument("--machines", type=int, default=10, help="machines `many` starts (default 10)")
    parser.add_argument("--cpus", type=int, default=2, help="the VM's vCPUs (default 2)")
    parser.add_argument("--memory", default="4G", help="the VM's memory (default 4G)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_on_sigterm)  # unwinds, so qemu is killed
    # Bytecode made here (the same Python 3.11) goes with the copy, so the guest's first commands do not
    # compile what they import.
    run([sys.executable, "-m", "compileall", "-q", REPO / "src", REPO / "bench"], capture=True)
    started = time.time()
    image = cached_image(Recipe(suite=args.suite))
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="veneer-vmbench-") as directory:
        log(f"booting the {args.suite} VM ({args.cpus} vCPUs, {args.memory}, TCG)")
        with booted_vm(image, Path(directory), cpus=args.cpus, memory=args.memory) as vm:
            guest = {
                "kernel": vm.run(["uname", "-r"]).stdout.strip(),
                "systemd": vm.run(["systemctl", "--version"]).stdout.splitlines()[0],
                "cpus": args.cpus,
                "memory": args.memory,
            }
            copy_checkout(vm)
            for name in args.only:
                report = run_in_guest(vm, name, args)
                if report is not None:
                    reports.append(report)
                    # After each benchmark, so that an interrupted run keeps what it measured.
                    save(args, guest, reports, started, quiet=True)
    if reports:
        save(args, guest, reports, started, quiet=False)
    failed = sorted(set(args.only) - {r["arguments"]["only"][0] for r in reports})
    if failed:
        log(f"failed in the VM (see above): {', '.join(failed)}")
        return 1
    return 0


def save(
    args: argparse.Namespace,
    guest: dict[str, Any],
    reports: list[dict[str, Any]],
    started: float,
    *,
    quiet: bool,
) -> None:
    """Write the runs so far to bench/results/vm-SUITE-TIME.json, and print their table unless `quiet`."""
    results = [benchmark for report in reports for benchmark in report["benchmarks"]]
    table = format_table(results)
    git = run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture=True, check=False)
    summary = {
        "suite": args.suite,
        "guest": guest,
        "arguments": vars(args),
        "veneer_git": git.stdout.strip(),
    }
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        if not quiet:
            print(table)
        save_report({**summary, "table": table, "runs": reports}, started, prefix=f"vm-{args.suite}-")


if __name__ == "__main__":
    exit_with(main)
