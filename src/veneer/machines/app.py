"""Application images: the process an OCI image's run config asks for, resolved in a mounted machine.

`veneer run NAME` without a command, and `start` of a machine whose image has no init, run what the image
says (Podman's rules: the entrypoint, then the explicit command or else Cmd; `--entrypoint` replaces the
entrypoint and drops Cmd; the caller's user, working dir and variables win over the image's). The user is
resolved here from the machine's own /etc/passwd and /etc/group, read without following its symlinks out
of the machine, so images need no getent (systemd-nspawn's `--user` runs the guest's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from veneer.config.layout import Layout
from veneer.errors import MachineError, UsageError
from veneer.images.runconfig import MAX_ID, RunConfig, parse_user
from veneer.images.store import load_image
from veneer.machines.guest import lookup_user, read_account_file
from veneer.machines.state import MachineRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class AppProcess:
    """The application process of a machine: what runs, how, and as whom."""

    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str | None
    ids: tuple[int, int] | None  # (uid, gid) in the machine, None: root


def image_run_config(layout: Layout, record: MachineRecord) -> RunConfig | None:
    """The run config of the machine's image revision."""
    return load_image(layout, record.image).config_of(record.revision)


def app_command(
    config: RunConfig | None, command: Sequence[str], *, entrypoint: Sequence[str] | None
) -> tuple[str, ...]:
    """What runs, by Podman's rules; pure."""
    image_entrypoint = config.entrypoint if config is not None else ()
    image_cmd = config.cmd if config is not None else ()
    if entrypoint is not None:
        return (*entrypoint, *command)
    return (*image_entrypoint, *(command or image_cmd))


def resolve_app(
    root: Path,
    config: RunConfig | None,
    *,
    command: Sequence[str] = (),
    entrypoint: Sequence[str] | None = None,
    user: str | None = None,
    workdir: str | None = None,
    env: Sequence[tuple[str, str]] = (),
) -> AppProcess:
    """The process to run in the machine mounted at `root`; the caller's settings override the image's."""
    argv = app_command(config, command, entrypoint=entrypoint)
    if not argv:
        raise UsageError(
            "Missing command to run: the image names none",
            hint="Give one: veneer run NAME -- CMD..., or set the image's Cmd or Entrypoint.",
        )
    variables = dict(config.env if config is not None else ())
    spec = user or (config.user if config is not None else None)
    ids, home = resolve_ids(root, spec) if spec else (None, None)
    if home is not None and "HOME" not in variables:
        variables["HOME"] = home
    variables.update(env)
    return AppProcess(
        command=argv,
        env=tuple(variables.items()),
        workdir=workdir or (config.working_dir if config is not None else None),
        ids=None if ids == (0, 0) else ids,
    )


def resolve_ids(root: Path, spec: str) -> tuple[tuple[int, int], str]:
    """(uid, gid) and home of `USER[:GROUP]` in the machine at `root`, as Podman resolves them: a name must
    exist, a number need not (its group is then 0, its home /)."""
    user, _, group = parse_user(spec, "The user").partition(":")
    try:
        account = lookup_user(root, user)
        uid, gid, home = account.uid, account.gid, account.home
    except MachineError:
        if not user.isdigit():
            raise MachineError(
                f"No user '{user}' in the machine's /etc/passwd", hint="Add the user, or give a number."
            ) from None
        uid, gid, home = int(user), 0, "/"
    if group:
        gid = int(group) if group.isdigit() else _lookup_group(root, group)
    if uid > MAX_ID or gid > MAX_ID:
        raise MachineError(
            f"User '{spec}' has ids {uid}:{gid}, outside the machine's range (0-{MAX_ID})",
            hint="Fix the machine's /etc/passwd or /etc/group.",
        )
    return (uid, gid), home


def _lookup_group(root: Path, name: str) -> int:
    for line in read_account_file(root, "/etc/group").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    raise MachineError(f"No group '{name}' in the machine's /etc/group", hint="Add it, or give a number.")
