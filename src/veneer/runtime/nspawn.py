"""The systemd-nspawn backend: pure argv builders, tested as lists.

veneer mounts the machine's overlay itself (with idmapped lower layers), so nspawn gets a directory whose
ownership already matches the user namespace: `--private-users-ownership=off` keeps nspawn from chowning
or copying anything.
"""

from __future__ import annotations

from pathlib import Path

from veneer.runtime.base import RunSpec
from veneer.util.proc import which

USERNS_SIZE = 65536


def is_systemd_host() -> bool:
    """Whether systemd runs as PID 1 here (sd_booted()'s test)."""
    return Path("/run/systemd/system").is_dir()


def nspawn_argv(spec: RunSpec) -> list[str]:
    """The systemd-nspawn command line that runs `spec.command` in the machine."""
    argv = [
        which("systemd-nspawn") or "systemd-nspawn",
        "--quiet",
        f"--directory={spec.root}",
        f"--machine={spec.name}",
        f"--uuid={spec.machine_id}",
        # The guest sees the host's resolver and time zone through read-only binds onto the image's empty
        # placeholders, so nothing is copied into the machine's upper dir.
        "--resolv-conf=bind-host",
        "--timezone=bind",
        "--link-journal=no",
    ]  # fmt: skip
    if spec.systemd_host:
        argv += ["--register=yes"]
    else:
        # Without systemd as PID 1 there is no machined to register with and no unit to move into.
        argv += ["--register=no", "--keep-unit"]
    if spec.uid_base is not None:
        argv += [
            f"--private-users={spec.uid_base}:{USERNS_SIZE}",
            "--private-users-ownership=off",
        ]  # fmt: skip
    else:
        argv += ["--private-users=no"]
    if spec.network.private_netns():
        argv += ["--private-network"]
    argv += ["--console=interactive" if spec.interactive else "--console=pipe"]
    if spec.user:
        argv += [f"--user={spec.user}"]
    if spec.workdir:
        argv += [f"--chdir={spec.workdir}"]
    argv += [f"--setenv={name}={value}" for name, value in spec.env]
    argv += [bind.argument() for bind in spec.binds]
    argv += ["--", *spec.command]
    return argv
