"""`veneer stats [NAME...] [--json] [--watch [SECONDS]] [--format table|json|openmetrics]`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from veneer.cli.args import layout_of
from veneer.cli.output import human_size, print_json, print_table
from veneer.config.values import parse_machine_name
from veneer.errors import UsageError

if TYPE_CHECKING:
    from veneer.machines.stats import MachineStats

FORMATS = ("table", "json", "openmetrics", "prometheus")


def register(verbs: Any) -> None:
    stats = verbs.add_parser("stats", help="cpu, memory, tasks, block and network I/O of running machines")
    stats.add_argument("names", nargs="*", type=parse_machine_name, metavar="NAME")
    stats.add_argument("--json", action="store_true")
    stats.add_argument(
        "--format",
        choices=FORMATS,
        help="table, json, openmetrics (a Prometheus scrape), prometheus (node_exporter's textfiles)",
    )
    stats.add_argument(
        "--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
        help="read again every SECONDS (default 2) until interrupted",
    )  # fmt: skip
    stats.set_defaults(handler=cmd_stats)


def cmd_stats(args: argparse.Namespace) -> int:
    from veneer.machines.stats import machine_stats

    fmt = args.format or ("json" if args.json else "table")
    if args.json and fmt != "json":
        raise UsageError(f"--json and --format {fmt} disagree", hint="Give one of them.")
    if args.watch is not None and args.watch <= 0:
        raise UsageError(f"Invalid --watch {args.watch:g}", hint="Give a number of seconds above 0.")
    layout = layout_of(args)
    previous: dict[str, MachineStats] = {}
    while True:
        readings = machine_stats(layout, args.names)
        _show(fmt, readings, previous, watching=args.watch is not None)
        if args.watch is None:
            return 0
        previous = {r.name: r for r in readings}
        sys.stdout.flush()
        time.sleep(args.watch)


def _show(
    fmt: str, readings: list[MachineStats], previous: dict[str, MachineStats], *, watching: bool
) -> None:
    import json

    from veneer.machines.stats import cpu_percent, format_openmetrics, format_prometheus

    if fmt == "openmetrics":
        sys.stdout.write(format_openmetrics(readings))
    elif fmt == "prometheus":
        sys.stdout.write(format_prometheus(readings))
    elif fmt == "json" and watching:  # one line per reading, for a consumer that reads lines
        print(json.dumps([r.to_json() for r in readings], sort_keys=True))
    elif fmt == "json":
        print_json([r.to_json() for r in readings])
    else:
        if watching and sys.stdout.isatty():
            sys.stdout.write("\033[H\033[2J")  # clear the screen, as top does
        rows = []
        for reading in readings:
            data = reading.to_json()
            before = previous.get(reading.name)
            percent = None if before is None else cpu_percent(before, reading)
            rows.append((
                reading.name,
                _figure(data["cpu_seconds"], lambda s: f"{s:.2f}s"),
                "-" if percent is None else f"{percent:.1f}%",
                _figure(data["memory_bytes"], human_size)
                + ("" if reading.memory_limit is None else f" / {human_size(reading.memory_limit)}"),
                _figure(data["pids"], str),
                _pair(data, "block_read_bytes", "block_write_bytes"),
                _pair(data, "net_rx_bytes", "net_tx_bytes"),
            ))  # fmt: skip
        print_table(("NAME", "CPU", "CPU%", "MEMORY", "PIDS", "BLOCK READ/WRITE", "NET RX/TX"), rows)


def _pair(data: dict[str, Any], first: str, second: str) -> str:
    return f"{_figure(data[first], human_size)} / {_figure(data[second], human_size)}"


def _figure(value: Any, show: Any) -> str:
    return "-" if value is None else str(show(value))
