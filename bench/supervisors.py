"""Memory per running machine of the supervisor this host gets: what stays alive outside the container
for each booted machine. `sudo python3 bench/supervisors.py [--machines N]`; bench/README.md, `supervisors`.

Starts N busybox machines (`--network none`) with `veneer start --wait`, one after the other, waits a second
and sums, per machine, Pss, Private (Private_Clean + Private_Dirty) and Rss from /proc/PID/smaps_rollup
over the host's processes that are the machine's but not the container's:
- standalone (systemd not PID 1): the console keeper's tree, the tmux server and all below it (the pane's
  `sh`, the log's `head`), and nspawn;
- systemd: every process of the unit's cgroup outside its `payload` (where the container is), nspawn
  alone, and every process of its console unit (the tmux server holding its terminal, the holder's
  `sleep`, the log's `head`); what systemd keeps for the units lives in PID 1, in no process of the
  machine's (not measured here).
Prints the table as JSON on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from harness import (
    Scratch,
    child_pids,
    executable,
    exit_with,
    log,
    measure_process,
    memory_row,
    scratch_dir,
    unit_pids,
)

from veneer.runtime.supervisor import SupervisorKind, detect_supervisor
from veneer.util.proc import run

SETTLE_SECONDS = 1.0  # after the last start: the machines are idle


def keeper_processes(bench: Scratch, name: str) -> list[int]:
    """The standalone keeper's processes of a machine: the tmux server and all below it, nspawn included,
    the container (below nspawn) not."""
    socket = bench.runtime / "machines" / f"{name}.console"
    server = run(["tmux", "-S", socket, "display-message", "-p", "#{pid}"], capture=True)
    found, todo = [], [int(server.stdout)]
    while todo:
        pid = todo.pop()
        found.append(pid)
        if executable(pid) != "systemd-nspawn":
            todo += child_pids(pid)
    return found


def survey(bench: Scratch, count: int) -> dict[str, Any]:
    choice = detect_supervisor()
    names = [f"sup{n:02d}" for n in range(1, count + 1)]
    bench.veneer("image", "create", "bb", "--busybox")
    processes: list[dict[str, Any]] = []
    for name in names:
        bench.veneer("create", name, "--from", "bb", "--network", "none")
        bench.defer(functools.partial(bench.veneer, "rm", name, check=False), f"veneer rm {name}")
        bench.veneer("start", name, "--wait")
        bench.defer(functools.partial(bench.veneer, "stop", name, check=False), f"veneer stop {name}")
    time.sleep(SETTLE_SECONDS)
    for name in names:
        if choice.kind is SupervisorKind.SYSTEMD:
            console, unit = unit_pids(bench.layout, name)
            pids = unit + console
        else:
            pids = keeper_processes(bench, name)
        for pid in pids:
            kind = "nspawn" if executable(pid) == "systemd-nspawn" else "veneer"
            processes.append(measure_process(pid, machine=name, kind=kind))
    ours = [p for p in processes if p["kind"] == "veneer"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for process in ours:
        by_name.setdefault(process["name"], []).append(process)
    rows = [
        memory_row(f"veneer's own processes ({', '.join(by_name) or 'none'})", ours, count),
        *(memory_row(f"veneer: {name}", group, count) for name, group in by_name.items()),
        memory_row("systemd-nspawn", [p for p in processes if p["kind"] == "nspawn"], count),
    ]
    return {"supervisor": choice.kind.value, "why": choice.reason, "machines": count, "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--machines", type=int, default=5, help="busybox machines to start (default 5)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (overlay mounts, nspawn)", file=sys.stderr)
        return 2
    with scratch_dir("veneer-supbench-") as scratch, contextlib.ExitStack() as cleanups:
        bench = Scratch(scratch=scratch, cleanups=cleanups)
        log(f"starting {args.machines} busybox machines")
        report = survey(bench, args.machines)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    exit_with(main)
