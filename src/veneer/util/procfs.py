"""Facts about processes read from /proc, without running anything (so without importing subprocess:
the CLI's cheap verbs use this)."""

from __future__ import annotations

import os
import select
from pathlib import Path


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks after boot) of a process, or None if it does not exist (or is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None  # exited; only its parent has not collected it yet
    return int(fields[19])


def wait_for_exit(pid: int, start_time: int, *, timeout: float) -> bool:
    """Until the process with this pid and start time has exited (True) or `timeout` passes (False).

    Woken by the kernel through a pidfd (Linux 5.3) rather than by looking again and again; the start time
    is checked once the pidfd is open, so a pid used again by another process is not waited for."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if process_start_time(pid) != start_time:
            return True
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def child_pids(pid: int) -> list[int]:
    """The children of process `pid` (of its main thread), oldest first; none if it is gone."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
