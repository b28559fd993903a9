"""Crash points for tests: with `VENEER_FAULT=NAME[:N]` veneer kills itself with SIGKILL the N-th time
(default: the first) it passes the point NAME, as a power cut or `kill -9` would at that moment.

The points sit between the steps of multi-step mutations (a rebase and its undo), so tests can show that
the next command finishes or rolls back whatever was cut short. Unset, a point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_passes: dict[str, int] = {}


def checkpoint(name: str) -> None:
    spec = os.environ.get("VENEER_FAULT")
    if not spec:
        return
    wanted, _, nth = spec.partition(":")
    if wanted != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
