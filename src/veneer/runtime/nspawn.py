"""The systemd-nspawn backend: pure argv builders, tested as lists, and the launch around nspawn (its
cgroups, its private state dir) as argv for a boot script or as a function for between fork and exec.

veneer mounts the machine's overlay itself (with idmapped lower layers), so nspawn gets a directory whose
ownership already matches the user namespace: `--private-users-ownership=off` keeps nspawn from chowning
or copying anything.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from veneer.config.settings import UID_RANGE_SIZE, NetworkMode
from veneer.overlay import idmap
from veneer.runtime.base import RunSpec
from veneer.runtime.cgroups import join_argv
from veneer.util.mountinfo import load_mountinfo
from veneer.util.proc import which

NSPAWN_STATE_DIR = Path("/run/systemd/nspawn")
CLONE_NEWNS = 0x00020000
MS_REC, MS_SLAVE = 0x4000, 0x80000
MS_NOSUID, MS_NODEV = 0x2, 0x4
STATE_DIR_MODE = "mode=0755"
# veneer locks its machines itself; nspawn's own lock files would land next to the machine's root.
NSPAWN_ENV = {"SYSTEMD_NSPAWN_LOCK": "0"}


def needs_private_state_dir() -> bool:
    """Whether nspawn's state dir is on a disk rather than a tmpfs (hosts whose /run is a plain directory,
    as in some containers and CI machines). nspawn then refuses to clean up its per-machine directory
    there and ends every run with "Attempted to remove disk file system"."""
    here = os.path.realpath(NSPAWN_STATE_DIR.parent if not NSPAWN_STATE_DIR.exists() else NSPAWN_STATE_DIR)
    covering = [
        m
        for m in load_mountinfo()
        if here == m.mount_point or here.startswith(m.mount_point.rstrip("/") + "/")
    ]
    fstype = max(covering, key=lambda m: len(m.mount_point)).fstype if covering else ""
    return fstype not in ("tmpfs", "ramfs")


def state_dir_argv(argv: Sequence[str]) -> list[str]:
    """`argv` (nspawn) with a tmpfs at nspawn's state dir; pure. The one place veneer mounts it: the
    caller runs this in a mount namespace of nspawn's own, so the tmpfs never shows on the host, and has
    created the directory beforehand."""
    options = f"{STATE_DIR_MODE},nosuid,nodev"
    mount = f"mount -t tmpfs -o {options} tmpfs {shlex.quote(os.fspath(NSPAWN_STATE_DIR))}"
    return ["sh", "-c", f'{mount} && exec "$@"', "sh", *argv]


def private_state_argv(argv: Sequence[str]) -> list[str]:
    """`argv` (nspawn) in a mount namespace of its own with a tmpfs at nspawn's state dir; pure.

    The namespace is a slave of the host's, so the machine's overlay (mounted before) is visible.
    """
    return ["unshare", "--mount", "--propagation", "slave", *state_dir_argv(argv)]


def launch_argv(nspawn: Sequence[str], *, cgroup_dirs: Sequence[Path], private_state: bool) -> list[str]:
    """How start launches nspawn from its boot script: in the machine's cgroups (so nspawn and all below it
    are counted), with a private state dir where `needs_private_state_dir()`; pure. Each wrapper execs the
    next, so the process that runs is nspawn itself. `launch_in_child` does the same without processes."""
    return join_argv(cgroup_dirs, private_state_argv(nspawn) if private_state else nspawn)


def launch_in_child(*, cgroup_dirs: Sequence[Path], private_state: bool) -> Callable[[], None]:
    """What `launch_argv`'s wrappers do, as a function for nspawn's own process between fork and exec,
    for a caller that forks nspawn itself (`run`): no `sh`, `unshare` or `mount` processes (6 ms here).
    The same steps in the same order: into the cgroups, then a mount namespace of its own (a slave of the
    host's), then the tmpfs at the state dir."""
    procs = [os.fspath(d / "cgroup.procs") for d in cgroup_dirs]

    def before_exec() -> None:
        pid = str(os.getpid()).encode()
        for path in procs:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        if private_state:
            enter_private_mount_namespace()
            idmap.mount("tmpfs", NSPAWN_STATE_DIR, "tmpfs", flags=MS_NOSUID | MS_NODEV, data=STATE_DIR_MODE)

    return before_exec


def enter_private_mount_namespace() -> None:
    """Between fork and exec: a mount namespace of this process's own, a slave of the host's, so what it
    mounts stays out of the host's view while the host's mounts still reach it."""
    idmap.unshare(CLONE_NEWNS)
    idmap.mount("none", Path("/"), "", flags=MS_REC | MS_SLAVE)


HOST_BUSYBOX = "/bin/busybox"
WAITER = "/run/veneer/busybox"  # named busybox: it picks its applet from argv[0]
GATE = "/run/veneer/address-gate"
# Up to 5 s for the host to say host0 has its IPv4 address (a line on the gate, a FIFO the host holds open,
# so the open does not block), then the command (exec: it keeps PID 1). `read` is the shell's own: no
# process but the shell runs before the command.
WAIT_FOR_ADDRESS = f'read -t 5 line < {GATE}; exec "$@"'


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
        # A /etc/systemd/nspawn/NAME.nspawn is another container's business: the machine is what veneer says.
        "--settings=no",
        # The guest sees a resolver (the host's, or veneer's for nat) and the host's time zone through
        # read-only binds onto the image's empty placeholders, so nothing is copied into its upper dir.
        "--resolv-conf=off" if spec.resolv_conf else "--resolv-conf=bind-host",
        "--timezone=bind" if spec.bind_timezone else "--timezone=off",
        "--link-journal=no",
    ]  # fmt: skip
    # --keep-unit always: the machine stays in the cgroup its supervisor made (the systemd unit, or
    # veneer's own), where its limits are. Without systemd's supervisor nothing is registered.
    argv += ["--register=yes" if spec.register else "--register=no", "--keep-unit"]
    if spec.uid_base is not None:
        argv += [
            f"--private-users={spec.uid_base}:{UID_RANGE_SIZE}",
            "--private-users-ownership=off",
        ]  # fmt: skip
    else:
        argv += ["--private-users=no"]
    mode = spec.network.mode
    if mode is NetworkMode.NONE:
        argv += ["--private-network"]
    elif mode is NetworkMode.NAT:
        # nspawn makes the namespace and the veth (vb-NAME in the bridge, host0 inside); veneer sets the
        # address from the host. (A namespace made beforehand cannot be joined from nspawn's user
        # namespace: setns() fails with EPERM.)
        argv += [f"--network-bridge={spec.nat_bridge}"]
    elif mode is NetworkMode.BRIDGE:
        argv += [f"--network-bridge={spec.network.bridge}"]
    if spec.resolv_conf:
        argv += [f"--bind-ro={spec.resolv_conf}:/etc/resolv.conf"]
    for source, target in spec.binds_ro:
        argv += [f"--bind-ro={source}:{target}"]
    if spec.interactive:
        argv += ["--console=interactive"]
    elif spec.boot:
        # A booted init with no terminal kept (both supervisors keep one now): its output goes to nspawn's
        # stdout, and a console shell gets a terminal that never ends its input (with a pipe it reads EOF
        # from /dev/null, exits, and busybox init respawns it without end).
        argv += ["--console=read-only"]
    else:
        argv += ["--console=pipe"]
    if spec.boot:
        argv += ["--boot"]
        if spec.kill_signal:
            argv += [f"--kill-signal={spec.kill_signal}"]
        argv += [f"--notify-ready={'yes' if spec.notify_ready else 'no'}"]
    elif spec.as_pid2:
        argv += ["--as-pid2"]
        if spec.kill_signal:
            argv += [f"--kill-signal={spec.kill_signal}"]
    if spec.user:
        argv += [f"--user={spec.user}"]
    if spec.workdir:
        argv += [f"--chdir={spec.workdir}"]
    argv += [f"--setenv={name}={value}" for name, value in spec.env]
    argv += [bind.argument() for bind in spec.binds]
    if not spec.boot:
        command = list(spec.command)
        if spec.ids is not None:
            # nspawn's --user needs the guest's getent, which application images rarely have: the ids
            # are resolved by veneer and set by the host's static busybox (no supplementary groups).
            uid, gid = spec.ids
            command = [WAITER, "nsenter", "-S", str(uid), "-G", str(gid), "--", *command]
        if mode is NetworkMode.NAT:
            # The command must not start before its address is set: wait with the host's static busybox.
            if spec.address_gate is not None:
                argv += [f"--bind-ro={spec.address_gate}:{GATE}"]
            command = [WAITER, "sh", "-c", WAIT_FOR_ADDRESS, "veneer-wait", *command]
        if spec.ids is not None or mode is NetworkMode.NAT:
            argv += [f"--bind-ro={HOST_BUSYBOX}:{WAITER}"]
        argv += ["--", *command]
    return argv
