"""What a runtime backend is asked to do: the `RunSpec`, independent of systemd-nspawn's spelling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from veneer.config.settings import DEFAULT_NETWORK, Bind, Network


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """One command (or the machine's init, with `boot`) to run in a machine's mounted root."""

    name: str
    root: Path
    machine_id: str
    uid_base: int | None  # None: no user namespace (--privileged)
    command: tuple[str, ...]
    network: Network = DEFAULT_NETWORK
    nat_bridge: str | None = None  # nat: veneer's bridge; the address is set from the host after start
    resolv_conf: Path | None = None  # bound onto /etc/resolv.conf instead of the host's
    bind_timezone: bool = True  # the host's /etc/localtime bound over the guest's (False: the guest's own)
    binds_ro: tuple[tuple[Path, str], ...] = ()  # (host file, path in the machine), read-only
    # A nat run's command starts once a line arrives on this FIFO: the host writes it when the machine's
    # address is set (`machines.run`).
    address_gate: Path | None = None
    interactive: bool = False  # stdin and stdout are a terminal
    user: str | None = None
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    binds: tuple[Bind, ...] = field(default_factory=tuple)
    register: bool = False  # register with machined (the machine's supervisor is a systemd unit)
    boot: bool = False  # run the machine's init instead of `command`
    as_pid2: bool = False  # run `command` under nspawn's stub init (an application machine)
    ids: tuple[int, int] | None = None  # (uid, gid) the command runs as, switched to inside the machine
    kill_signal: str | None = None  # what nspawn sends the init when asked to stop (SIGTERM to nspawn)
    notify_ready: bool = False  # the init reports READY=1 (systemd), nspawn passes it on


@dataclass(frozen=True, slots=True)
class Confined:
    """nspawn's command line as a supervisor launches it, and, where the caller forks nspawn itself
    (`run`), what nspawn's process does first, between fork and exec (for a boot script: None)."""

    argv: tuple[str, ...]
    before_exec: Callable[[], None] | None = None
