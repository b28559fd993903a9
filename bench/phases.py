"""Where the time of one `veneer run M -- /bin/true` goes: its phases, timed inside the veneer process.

Run as root from a checkout: `python3 bench/phases.py [--repeat N]`. It makes a store of its own in a scratch
dir with the busybox image and a machine per network (none, nat), then runs each machine N times in a
fresh interpreter (`python3 -c`, as `veneer` starts) that wraps the steps `machines.run.run_machine` calls
with a clock, and prints the median of each phase in milliseconds. The interpreter's own start is
measured apart (`python3 -c pass`) and so are veneer's imports for `run`. The scratch dir, its machines and
image go on the way out (bench/harness.py's scratch dir and cleanups).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import secrets
import statistics
import sys
import time
from collections.abc import Sequence

# The harness (bench/ is on sys.path when a script in it runs); importing it puts src/ on sys.path.
from harness import Scratch, exit_with, log, scratch_dir

from veneer.util.proc import run

# Runs in the child: wraps the steps of run_machine, runs it, prints {phase: seconds} as JSON on stderr.
PROBE = """
import json, sys, time
start = time.perf_counter()
import veneer.cli.machine, veneer.machines.run as r
from veneer.config.layout import Layout
from veneer.config.settings import MachineName
spent = {"imports for run": time.perf_counter() - start}
def clocked(label, function):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
    return wrapper
steps = {
    "refuse_if_running": "recovery check",
    "mount_overlay_of": "mount the idmapped overlay", "prepare_launch": "network and cgroups set up, argv",
    "spawn": "fork nspawn (in its process: join the cgroups, private state dir), until its exec",
    "_configure_when_ready": "nat: wait for the container, set its address",
    "wait_forwarding": "nspawn + /bin/true", "end_run": "clean up (unmount, cgroups, network)",
}
for name, label in steps.items():
    setattr(r, name, clocked(label, getattr(r, name)))
t = time.perf_counter()
status = r.run_machine(Layout.from_env(), MachineName(sys.argv[1]), ["/bin/true"])
spent["run_machine, all"] = time.perf_counter() - t
print(json.dumps(spent), file=sys.stderr)
sys.exit(status)
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="phases of veneer run (as root)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per machine (default 7)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with scratch_dir("veneer-phases-") as scratch, contextlib.ExitStack() as cleanups:
        bench = Scratch(scratch=scratch, cleanups=cleanups)
        bench.veneer("image", "create", "bb", "--busybox")
        bench.defer(lambda: bench.veneer("image", "rm", "bb"), "remove the image")
        bench.veneer("network", "subnet", f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(256)}.0/24")
        floors = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            run([sys.executable, "-c", "pass"], capture=True)
            floors.append(time.perf_counter() - t)
        print(f"python3 -c pass: {statistics.median(floors) * 1000:.1f} ms (the interpreter, before veneer)")
        for network in ("none", "nat"):
            machine = f"ph-{network}"
            bench.veneer("create", machine, "--from", "bb", "--network", network)
            bench.defer(functools.partial(bench.veneer, "rm", machine), f"remove {machine}")
            phases: dict[str, list[float]] = {}
            walls = []
            for i in range(args.repeat + 1):
                t = time.perf_counter()
                done = run([sys.executable, "-c", PROBE, machine], capture=True, env=bench.veneer_env())
                wall = time.perf_counter() - t
                if i == 0:
                    continue  # warm-up
                walls.append(wall)
                for label, seconds in json.loads(done.stderr.strip().splitlines()[-1]).items():
                    phases.setdefault(label, []).append(seconds)
            log(f"{network}: {args.repeat} runs")
            print(
                f"\nveneer run, --network {network}: wall {statistics.median(walls) * 1000:.1f} ms (median)"
            )
            for label, values in phases.items():
                print(f"  {label}: {statistics.median(values) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    exit_with(main)
