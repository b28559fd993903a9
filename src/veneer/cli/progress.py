"""Drawing the progress of long work on stderr: one updating line on a terminal, phase lines in a pipe.

On a terminal the line is rewritten in place (a carriage return, at most ten times a second) and
cleared at the end, so only results stay on the screen; a log message first clears it, and the next
report draws it again. Piped, each phase is one plain line and counts are left out: a log file gets a
short story, not a carriage-return flood.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from veneer.cli.output import human_size
from veneer.util.progress import Progress, Unit

_INTERVAL = 0.1


def _count(n: int, unit: Unit) -> str:
    return human_size(n) if unit is Unit.BYTES else str(n)


def progress_text(
    text: str, unit: Unit, done: int, total: int | None, item: str, *, width: int = 1000
) -> str:
    """The line for a report, as "Applying layer 1/2: 3.1 MiB of 12.0 MiB (25%)" or "Retrieving
    packages: 12 packages bash"; within `width` columns the counts stay, the item and then the end of
    the phase's text go."""
    if total:
        shown = f"{_count(done, unit)} of {_count(total, unit)} ({min(done, total) * 100 // total}%)"
    elif unit is Unit.BYTES:
        shown = human_size(done)
    else:
        shown = f"{done} {unit}"
    line = f"{text}: {shown}" + (f" {item}" if item else "")
    if len(line) <= width:
        return line
    room = width - len(shown) - 3
    return f"{text[: max(room, 0)]}…: {shown}"[-width:]


class Drawer(Progress):
    """What the command line draws progress with; `clear()` makes room for a line on stdout."""

    def clear(self) -> None:
        """Take what is drawn off the screen (the next report draws it again)."""


class PhaseLines(Drawer):
    """A pipe's view: each phase once, as a line of its own (debootstrap goes back and forth)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def phase(self, text: str, *, total: int | None = None, unit: Unit = Unit.BYTES) -> None:
        with self._lock:
            if text not in self._seen:
                self._seen.add(text)
                print(text, file=self._stream, flush=True)


class TerminalLine(Drawer):
    """A terminal's view: one line, rewritten as the work goes on, cleared by `clear()`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._text = ""
        self._unit = Unit.BYTES
        self._total: int | None = None
        self._shown = 0
        self._drawn_at = 0.0
        self._lock = threading.RLock()

    def phase(self, text: str, *, total: int | None = None, unit: Unit = Unit.BYTES) -> None:
        with self._lock:
            self._text, self._total, self._unit = text, total, unit
            self._draw(f"{text}...")

    def advance(self, done: int, *, item: str = "") -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._drawn_at < _INTERVAL and (self._total is None or done < self._total):
                return
            self._drawn_at = now
            self._draw(progress_text(self._text, self._unit, done, self._total, item, width=_width()))

    def _draw(self, line: str) -> None:
        line = line[: _width()]
        self._stream.write("\r" + line.ljust(self._shown))
        self._stream.flush()
        self._shown = len(line)

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self._stream.write("\r" + " " * self._shown + "\r")
                self._stream.flush()
                self._shown = 0


def _width() -> int:
    # One column short of the edge: a character in the last column wraps the line on some terminals.
    return shutil.get_terminal_size().columns - 1


class _ClearFirst(logging.Filter):
    def __init__(self, line: TerminalLine) -> None:
        super().__init__()
        self._line = line

    def filter(self, record: logging.LogRecord) -> bool:
        self._line.clear()
        return True


@contextlib.contextmanager
def stderr_progress() -> Iterator[Drawer]:
    """The progress drawer for this command's stderr, for the length of the work."""
    if not sys.stderr.isatty():
        yield PhaseLines(sys.stderr)
        return
    line = TerminalLine(sys.stderr)
    handlers = logging.getLogger().handlers
    clear_first = _ClearFirst(line)
    for handler in handlers:
        handler.addFilter(clear_first)
    try:
        yield line
    finally:
        for handler in handlers:
            handler.removeFilter(clear_first)
        line.clear()
