"""What is inside a machine: which init it boots, its leader process, its users. Reads only."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from veneer.errors import MachineError
from veneer.util.procfs import child_pids

ACCOUNTS_LIMIT_BYTES = 16 << 20


class InitKind(enum.StrEnum):
    """The init a machine boots, and how it is asked to power off."""

    SYSTEMD = "systemd"
    BUSYBOX = "busybox"
    SYSVINIT = "sysvinit"
    OTHER = "other"
    # No init: the image's application runs as PID 2 under nspawn's stub init (`machines.app`).
    APP = "app"

    def kill_signal(self) -> str:
        """The signal nspawn sends PID 1 when veneer asks it to stop (SIGTERM to nspawn)."""
        # systemd powers off on SIGRTMIN+3; busybox init on SIGUSR2 (it ignores SIGRTMIN+3; veneer's init
        # of busybox images takes both); sysvinit has no poweroff signal: SIGINT runs its ctrlaltdel
        # action, which veneer's stop replaces with `telinit 0` run inside (see stop_command). nspawn's stub
        # init ends its payload on SIGRTMIN+3 (veneer first sends the application its own stop signal:
        # `machines.boot`).
        return {InitKind.SYSTEMD: "SIGRTMIN+3", InitKind.BUSYBOX: "SIGUSR2", InitKind.APP: "SIGRTMIN+3"}.get(
            self, "SIGINT"
        )

    def stop_command(self) -> tuple[str, ...] | None:
        """A command run inside the machine to power it off, where no signal does."""
        return ("/sbin/telinit", "0") if self is InitKind.SYSVINIT else None

    def notifies(self) -> bool:
        """Whether the init reports readiness (sd_notify READY=1) through nspawn."""
        return self is InitKind.SYSTEMD


def resolve_in_root(root: Path, relative: str, *, depth: int = 0) -> Path | None:
    """Follow symlinks of `relative` as the machine would see them, never leaving `root`."""
    if depth > 16:
        return None
    path = root
    parts = [p for p in relative.split("/") if p]
    for index, part in enumerate(parts):
        candidate = path / part
        if candidate.is_symlink():
            target = os.readlink(candidate)
            base = "" if target.startswith("/") else os.path.relpath(path, root)
            rest = "/".join([target if base in ("", ".") else f"{base}/{target}", *parts[index + 1 :]])
            return resolve_in_root(root, os.path.normpath("/" + rest).lstrip("/"), depth=depth + 1)
        if not candidate.exists():
            return None
        path = candidate
    return path


def has_init(root: Path) -> bool:
    """Whether the mounted machine has an /sbin/init to boot."""
    return resolve_in_root(root, "sbin/init") is not None


def detect_init(root: Path) -> InitKind:
    """Which init `/sbin/init` of the mounted machine is."""
    init = resolve_in_root(root, "sbin/init")
    if init is None:
        raise MachineError(
            f"The machine at '{root}' has no /sbin/init to boot",
            hint="Use 'veneer run NAME -- CMD' for images without an init, or install one in the image.",
        )
    name = init.name
    if name == "systemd" or "systemd" in init.parts[-3:-1]:
        return InitKind.SYSTEMD
    # veneer's busybox images have an init of their own (busybox.INIT), older ones busybox's. Imported
    # here: the builder's module is not for the listings and runs that load this one.
    from veneer.images.distros.busybox import INIT_PATH as BUSYBOX_INIT_PATH

    if name == "busybox" or init == root / BUSYBOX_INIT_PATH:
        return InitKind.BUSYBOX
    if name == "init" and (root / "etc/inittab").exists():
        return InitKind.SYSVINIT
    return InitKind.OTHER


def find_leader(nspawn_pid: int) -> int | None:
    """The container's PID 1 (seen from the host): the child of nspawn that is PID 1 in its namespace."""
    for child in child_pids(nspawn_pid):
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == "1" and len(line.split()) > 2:
                return int(child)
    return None


def read_account_file(root: Path, path: str) -> str:
    """A file of the machine as the machine sees it (`read_in_root`): no symlink leads to the host's."""
    from veneer.util.inroot import read_in_root  # ctypes: only for the verbs that read accounts

    try:
        return read_in_root(root, path, limit=ACCOUNTS_LIMIT_BYTES).decode(errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise MachineError(
            f"Failed to read {path} of the machine: {e.strerror}", hint=f"Fix the machine's {path}."
        ) from None


def lookup_groups(root: Path, name: str) -> tuple[int, ...]:
    """The supplementary groups of user `name` in /etc/group of the machine at `root` (as initgroups)."""
    gids = []
    for line in read_account_file(root, "/etc/group").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit() and name in fields[3].split(","):
            gids.append(int(fields[2]))
    return tuple(gids)


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """A user of the machine, from its /etc/passwd."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


def lookup_user(root: Path, user: str) -> Account:
    """A user in /etc/passwd of the machine at `root`, by name or number."""
    for line in read_account_file(root, "/etc/passwd").splitlines():
        fields = line.split(":")
        if (
            len(fields) >= 7
            and user in (fields[0], fields[2])
            and fields[2].isdigit()
            and fields[3].isdigit()
        ):
            return Account(
                name=fields[0],
                uid=int(fields[2]),
                gid=int(fields[3]),
                home=fields[5] or "/",
                shell=fields[6] or "/bin/sh",
            )
    raise MachineError(f"No user '{user}' in the machine", hint="See the machine's /etc/passwd.")
