"""Density: many machines on one host. Starts 50 busybox machines, then 10 Debian machines, one after the
other with `veneer start M --wait`, all of them left running, and reports:

- the start time of each machine as the count grows (the 1st, 10th, ... machine);
- memory per running machine, apart for veneer's own processes (the console keeper: tmux server, the boot
  script's `sh`, the log's `head`), nspawn, and the guest (everything below nspawn), as Pss and Private
  from /proc/PID/smaps_rollup, and the host's MemAvailable drop per machine (kernel memory included);
- page-cache sharing of the base: a file of the base that every guest maps (busybox's binary, Debian's
  libc) is dropped from the page cache before the first start; afterwards `fincore` shows it resident
  once, whatever the number of children, and the page cache grows by less per machine than that file.

Run as root from a checkout: `python3 bench/density.py [--busybox N] [--debian N]`. The Debian base is
made by debootstrap once per run (about a minute, from the Debian mirror). Everything is stopped (one
`veneer stop` of all), removed, and the scratch dir deleted on the way out, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    descendants,
    exit_with,
    human_time,
    loadavg,
    log,
    machine_info,
    measure_process,
    raise_on_sigterm,
    save_report,
    scratch_dir,
)
from run import Base, Bases, Bench, VeneerFleet, remove_store_cgroups

from veneer.util.proc import run

MB = 1024 * 1024
SETTLE_SECONDS = 2.0
# The base file every guest maps, per base: busybox's one binary; Debian's C library.
SHARED_FILE = {"bb": "bin/busybox", "deb": "usr/lib/x86_64-linux-gnu/libc.so.6"}


def meminfo(key: str) -> int:
    """A /proc/meminfo value in kB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_bytes(path: Path) -> int:
    """How much of the file is in the page cache (util-linux fincore)."""
    out = run(["fincore", "--bytes", "--noheadings", "--output", "RES", os.fspath(path)], capture=True)
    return int(out.stdout.split()[0])


def survey(bench: Bench, base: Base, *, prefix: str, count: int) -> dict[str, Any]:
    """Start `count` machines of `base` one after the other; measure them all running; leave them running
    (the fleet's teardown, registered by the caller, stops and removes them)."""
    fleet = VeneerFleet(bench, Bases(bench), prefix=prefix, count=count, base=lambda: base)
    bench.cleanups.callback(fleet.teardown)
    fleet.setup()
    shared = base.tree / SHARED_FILE[base.image]
    os.sync()
    drop_from_cache(shared)
    before = {"available_kb": meminfo("MemAvailable"), "cached_kb": meminfo("Cached")}
    resident_before = resident_bytes(shared)
    starts = []
    for name in fleet.names:
        started = time.perf_counter()
        bench.veneer("start", name, "--wait")
        starts.append(time.perf_counter() - started)
        log(f"{name}: started in {human_time(starts[-1])}")
    time.sleep(SETTLE_SECONDS)
    after = {"available_kb": meminfo("MemAvailable"), "cached_kb": meminfo("Cached")}
    processes: list[dict[str, Any]] = []
    for name in fleet.names:
        ours, nspawns = fleet.keeper_tree(name)
        processes += [measure_process(pid, machine=name, kind="veneer") for pid in ours]
        for nspawn in nspawns:
            processes.append(measure_process(nspawn, machine=name, kind="nspawn"))
            for pid in descendants(nspawn):
                with contextlib.suppress(OSError, KeyError):
                    processes.append(measure_process(pid, machine=name, kind="guest"))
    rows = []
    for kind in ("veneer", "nspawn", "guest"):
        mine = [p for p in processes if p["kind"] == kind]
        rows.append(
            {
                "kind": kind,
                "processes_per_machine": len(mine) / count,
                **{
                    f"{k}_mb": sum(p[f"{k}_kb"] for p in mine) / 1024 / count
                    for k in ("pss", "private", "rss")
                },
            }
        )
    return {
        "base": base.image,
        "machines": count,
        "start_s": starts,
        "rows": rows,
        "processes": processes,
        "available_drop_mb_per_machine": (before["available_kb"] - after["available_kb"]) / 1024 / count,
        "cached_growth_mb": (after["cached_kb"] - before["cached_kb"]) / 1024,
        "shared_file": os.fspath(SHARED_FILE[base.image]),
        "shared_file_mb": shared.stat().st_size / MB,
        "shared_resident_mb_before": resident_before / MB,
        "shared_resident_mb_after": resident_bytes(shared) / MB,
    }


def format_result(result: dict[str, Any]) -> list[str]:
    n, starts = result["machines"], result["start_s"]
    marks = sorted({1, *range(10, n + 1, 10), n})
    lines = [
        f"### {n} {result['base']} machines",
        "",
        "| machine # | " + " | ".join(str(m) for m in marks) + " | median |",
        "|---|" + "---:|" * (len(marks) + 1),
        "| veneer start --wait | "
        + " | ".join(human_time(starts[m - 1]) for m in marks)
        + f" | {human_time(statistics.median(starts))} |",
        "",
        "| per running machine | processes | Pss | Private | Rss |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['kind']} | {row['processes_per_machine']:.1f} | {row['pss_mb']:.2f} MB "
            f"| {row['private_mb']:.2f} MB | {row['rss_mb']:.2f} MB |"
        )
    lines += [
        "",
        f"- host MemAvailable drop per machine: {result['available_drop_mb_per_machine']:.2f} MB",
        f"- page cache (Cached) growth over all {n} starts: {result['cached_growth_mb']:.1f} MB",
        f"- base file `{result['shared_file']}` ({result['shared_file_mb']:.2f} MB): resident "
        f"{result['shared_resident_mb_before']:.2f} MB before the first start, "
        f"{result['shared_resident_mb_after']:.2f} MB with {n} machines running (once for all)",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="veneer density benchmark (as root)")
    parser.add_argument("--busybox", type=int, default=50, help="busybox machines (default 50)")
    parser.add_argument("--debian", type=int, default=10, help="Debian machines (default 10)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    started, load_at_start = time.time(), loadavg()
    with scratch_dir() as scratch, contextlib.ExitStack() as cleanups:
        bench = Bench(scratch=scratch, quick=True, cleanups=cleanups)
        bench.defer(lambda: remove_store_cgroups(bench), "remove the store's cgroup group")
        bases = Bases(bench)
        results = []
        if args.busybox:
            results.append(survey(bench, bases.busybox(), prefix="vdbb", count=args.busybox))
        if args.debian:
            results.append(survey(bench, bases.debian(), prefix="vddeb", count=args.debian))
        report = {
            "version": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "host": {**machine_info(scratch), "loadavg_at_start": load_at_start},
            "bases": bench.base_info,
            "setup_s": bench.setup_seconds,
            "results": results,
        }
    report["cleanup_failures"] = bench.cleanup_failures
    table = "\n".join(line for result in results for line in [*format_result(result), ""])
    print(table)
    save_report({**report, "table": table}, started, prefix="density-")
    return 1 if bench.cleanup_failures else 0


if __name__ == "__main__":
    exit_with(main)
