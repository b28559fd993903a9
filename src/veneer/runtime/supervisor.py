"""Who keeps a booted machine running: the interface machines/ asks, and the choice made at run time.

Two supervisors: where systemd is PID 1 on a unified cgroup v2 hierarchy, each booted machine is a
systemd service of its own in machine.slice (`runtime.systemd_unit`); elsewhere (containers, CI runners,
WSL, hosts with other inits, hybrid cgroups) veneer's standalone keeper holds it (`runtime.keeper`).
machines/ calls `supervisor_for(layout)` and the methods below and never asks which one it got, as
podman's libpod over conmon or its systemd integration.

This module imports neither implementation at import time: the CLI stays cheap to start.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from veneer.config.layout import Layout
from veneer.config.settings import Limits
from veneer.runtime.base import Confined
from veneer.runtime.cgroups import Hierarchies


class SupervisorKind(enum.StrEnum):
    SYSTEMD = "systemd"
    STANDALONE = "standalone"


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    """Which supervisor this host gets, and why (what `veneer doctor` says)."""

    kind: SupervisorKind
    reason: str


def pid1_name() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip()
    except OSError:
        return "unknown"


def choose_supervisor(*, pid1: str, systemd_booted: bool, hierarchies: Hierarchies) -> Choice:
    """The supervisor for a host with this PID 1 and these cgroup hierarchies (pure)."""
    unified_only = hierarchies.unified == Path("/sys/fs/cgroup") and not hierarchies.v1
    if pid1 == "systemd" and systemd_booted and unified_only:
        return Choice(
            kind=SupervisorKind.SYSTEMD,
            reason="systemd is PID 1 on a unified cgroup v2 hierarchy: each machine is a unit in "
            "machine.slice, registered with machined",
        )
    if pid1 == "systemd" and systemd_booted:
        why = "systemd is PID 1, but the cgroup hierarchy is not pure v2"
    else:
        why = f"PID 1 is {pid1}, not systemd"
    return Choice(kind=SupervisorKind.STANDALONE, reason=f"{why}: veneer keeps its machines itself")


def detect_supervisor() -> Choice:
    return choose_supervisor(
        pid1=pid1_name(),
        systemd_booted=Path("/run/systemd/system").is_dir(),
        hierarchies=Hierarchies.detect(),
    )


class Supervisor(Protocol):
    """Keeps booted machines: starts their nspawn, tells whether it runs, ends it, keeps its console."""

    kind: SupervisorKind
    terminal: bool  # nspawn's console is a terminal veneer keeps (`console` attaches to it)
    registers: bool  # machines are registered with machined, nspawn keeps the supervisor's unit
    # The longest pause between two questions about a starting machine: asking systemd runs `systemctl`,
    # and many starts asking at once keep PID 1 too busy to run their start jobs.
    longest_poll: float

    def cgroup(self, name: str) -> str:
        """The machine's cgroup, relative to the unified hierarchy's root (and the v1 ones, standalone)."""
        ...

    def confine(self, name: str, limits: Limits, argv: Sequence[str], *, boot: bool) -> Confined:
        """`argv` (nspawn) as launched with the machine's limits: a `run` here, forked by the caller, or
        a boot by `start` (as a command line)."""
        ...

    def start(
        self, name: str, launch: Sequence[str], *, env: Mapping[str, str], limits: Limits, notify: bool
    ) -> None:
        """Start the machine's nspawn (`launch`) in the background; `notify`: veneer listens for READY=1
        on the machine's notify socket."""
        ...

    def enabled(self, name: str) -> bool:
        """Whether the machine starts at host boot (`veneer enable`): then its own unit starts it."""
        ...

    def start_enabled(self, name: str) -> None:
        """Start an enabled machine through its unit; return once it runs."""
        ...

    def nspawn_pid(self, name: str) -> int | None:
        """nspawn's pid once it runs; None before (or after)."""
        ...

    def ended(self, name: str) -> bool:
        """Whether what `start` started has ended already."""
        ...

    def ready(self, name: str) -> bool | None:
        """Whether the init reported ready; None where the supervisor cannot tell (veneer listens)."""
        ...

    def exit_status(self, name: str) -> int | None:
        """nspawn's exit status once it ended, if known."""
        ...

    def release(self, name: str) -> None:
        """After the machine ended: let go of what kept it (idempotent)."""
        ...

    def remove_cgroups(self, name: str) -> None:
        """Remove the machine's cgroups if they are veneer's to remove."""
        ...

    def set_limits(self, name: str, limits: Limits) -> None:
        """Change the limits of the running machine."""
        ...

    def set_frozen(self, name: str, frozen: bool) -> None:
        """Freeze (or thaw) every process of the running machine; return once the kernel has."""
        ...

    def accounting_cgroup(self, name: str, *, boot: bool) -> str:
        """The cgroup that holds all a running machine runs (a boot, or a `run` with `boot` False),
        relative to the unified hierarchy (and the v1 ones, standalone): what `stats` reads."""
        ...

    def read_log(self, name: str, *, lines: int | None) -> bytes:
        """The console output of the machine's current or last boot (its last `lines` lines)."""
        ...

    def follow_log(self, name: str, *, lines: int | None, running: Callable[[], bool]) -> Iterator[bytes]:
        """The console output, then what is added to it, until `running()` is False."""
        ...

    def console_argv(self, name: str) -> list[str]:
        """The command that attaches a terminal to the machine's console."""
        ...


def supervisor_for(layout: Layout, choice: Choice | None = None) -> Supervisor:
    """The supervisor of this host for the machines of `layout`."""
    kind = (choice or detect_supervisor()).kind
    if kind is SupervisorKind.SYSTEMD:
        from veneer.runtime.systemd_unit import SystemdUnits

        return SystemdUnits(layout)
    from veneer.runtime.keeper import Keeper

    return Keeper(layout)
