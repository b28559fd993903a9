"""What a runtime backend is asked to do: the `RunSpec`, independent of systemd-nspawn's spelling."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from veneer.config.settings import Bind, NetworkMode


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """One command to run in a machine's mounted root, in the foreground."""

    name: str
    root: Path
    machine_id: str
    uid_base: int | None  # None: no user namespace (--privileged)
    command: tuple[str, ...]
    network: NetworkMode = NetworkMode.NONE
    interactive: bool = False  # stdin and stdout are a terminal
    user: str | None = None
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    binds: tuple[Bind, ...] = field(default_factory=tuple)
    systemd_host: bool = False  # systemd is PID 1 on the host: register with machined
