"""How long work says how far it is: the interface the library reports into, never a printer itself.

Long work (a bootstrap, an import, a pull, an export) names its phases and counts within them: bytes,
files or packages, out of a total when one is known. The library calls a `Progress`; the command line
passes one that draws (`veneer.cli.progress`), everyone else gets `QUIET`, which drops every report.
Reports may come from several threads (parallel downloads): a drawer serialises them itself.
"""

from __future__ import annotations

from enum import StrEnum


class Unit(StrEnum):
    """What a phase counts."""

    BYTES = "bytes"
    FILES = "files"
    PACKAGES = "packages"


class Progress:
    """Receives the phases and counts of long work; this base drops them (the library's default)."""

    def phase(self, text: str, *, total: int | None = None, unit: Unit = Unit.BYTES) -> None:
        """A new phase begins ("Applying layer 1/2"); `total`: its end count, if known."""

    def advance(self, done: int, *, item: str = "") -> None:
        """How far the current phase is (`done` in its unit), and what it works on now."""


QUIET = Progress()
