"""Printing results: JSON for scripts, aligned tables and human sizes for people."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from veneer.errors import Error


def print_error(error: Error) -> None:
    """One failure among several the command reports (as `cli.main` reports the one that ends it)."""
    print(f"veneer: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"  {error.hint}", file=sys.stderr)


def print_json(value: Any) -> None:
    import json  # for `--json` alone: the tables and `--help` do without

    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """A rough length of time, as people say it: 45s, 12min, 3h 05min, 2d 4h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}min"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}min"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
