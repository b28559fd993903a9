"""Entering a running machine from the host: the launcher behind `exec` and `shell`.

What nsenter does, plus the confinement nspawn gives the machine's own processes, in an order that never
lets the machine reach the host through the entering process (runc's CVE-2024-21626 class):

- veneer (on the host) opens everything it needs first: the leader's namespaces and root directory, its
  cgroup.procs files, its seccomp filters and capability bounding set. Nothing after fork looks up a
  path of the host, and nothing before `chroot` looks up a path of the machine.
- the intermediate process makes itself non-dumpable, joins the machine's cgroups, enters every
  namespace but the user namespace, and forks: its child is born in the machine's PID namespace. It
  stays in the host's PID namespace (invisible to the machine) and passes the child's exit status on.
- the child enters the user namespace, takes the machine's root as its root, drops the capabilities the
  init's bounding set lacks, becomes the user, changes to the working directory (resolved inside the
  machine, as that user), closes every fd but 0-2, sets no_new_privs, installs the init's seccomp
  filters and one against TIOCSTI, and executes the command. Until it executes, it is non-dumpable with
  a memory map made on the host, so the machine's root cannot ptrace it or open its /proc files
  (`ptrace_may_access()` wants CAP_SYS_PTRACE in the host's user namespace for that).

Code between fork and exec uses the stdlib and syscall wrappers only, one function per step, called in
order. Its errors go to veneer over a pipe and are raised there as `EnterFailed`. Must not import from
veneer outside `runtime`, or log.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import signal
import termios
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from veneer.runtime import seccomp
from veneer.util.proc import end_process_tree

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

# Entered in this order by the intermediate process; the user namespace last, by the command itself.
NAMESPACES = (
    ("cgroup", 0x02000000),
    ("ipc", 0x08000000),
    ("uts", 0x04000000),
    ("net", 0x40000000),
    ("pid", 0x20000000),
    ("time", 0x00000080),
    ("mnt", 0x00020000),
)
CLONE_NEWUSER = 0x10000000

FAILED_STATUS = 127
FD_LIMIT = 0x7FFFFFFF  # closerange() goes up to here with one close_range(2)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnterSpec:
    """What to run in the machine whose init (leader) is host pid `leader`, and as whom."""

    leader: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary
    workdir: str
    cgroups: tuple[Path, ...] = ()  # the leader's cgroup directories, in every hierarchy
    ptrace_lock: Path | None = None  # a lock file shared by every veneer that reads a filter by ptrace
    quiet: bool = False
    terminal: int | None = None  # a pseudo-terminal peer of the machine's: the command's stdio and ctty


class EnterFailed(OSError):
    """A step of entering failed; `step` names it (`chdir`, `exec`, ...)."""

    def __init__(self, err: int, message: str, *, step: str) -> None:
        super().__init__(err, message)
        self.step = step


@dataclass(frozen=True, slots=True, kw_only=True)
class _Handles:
    """What the parent opened on the host for the children; closed by every process once used."""

    namespaces: tuple[tuple[int, int], ...]  # (fd, CLONE_NEW*) to enter before forking the command
    user_namespace: int | None
    root: int
    cgroup_procs: tuple[int, ...]
    drop_capabilities: tuple[int, ...]
    filters: tuple[seccomp.SockFprog, ...]

    def fds(self) -> list[int]:
        fds = [fd for fd, _ in self.namespaces] + [self.root, *self.cgroup_procs]
        return fds + ([self.user_namespace] if self.user_namespace is not None else [])

    def close(self) -> None:
        for fd in self.fds():
            with contextlib.suppress(OSError):
                os.close(fd)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, call: str, obj: object) -> None:
    if result != 0:
        err = ctypes.get_errno() or errno.EIO
        raise OSError(err, f"{call} '{obj}': {os.strerror(err)}")


def _bounding_set(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise OSError(errno.EINVAL, f"no CapBnd in /proc/{pid}/status")


def _open_namespace(pid: int, name: str) -> int | None:
    """An fd of the namespace `name` of `pid`, or None where it is ours too (or the kernel has none)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    theirs, ours = os.fstat(fd), os.stat(f"/proc/self/ns/{name}")
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        os.close(fd)
        return None
    return fd


def _filters_of(pid: int, *, lock: Path | None) -> list[seccomp.Filter]:
    """The init's seccomp filters; one veneer at a time, as a process has one tracer at most."""
    if lock is None:
        return seccomp.filters_of(pid)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return seccomp.filters_of(pid)
    finally:
        os.close(fd)


def _open_handles(spec: EnterSpec) -> _Handles:
    """Open on the host what the children need; read the init's confinement to give them."""
    opened: list[int] = []
    # Held from first to last, so the pid names one process throughout: alive at the end, never reused.
    leader = os.pidfd_open(spec.leader)
    opened.append(leader)
    try:
        namespaces = []
        for name, flag in NAMESPACES:
            if (fd := _open_namespace(spec.leader, name)) is not None:
                opened.append(fd)
                namespaces.append((fd, flag))
        user = _open_namespace(spec.leader, "user")
        if user is not None:
            opened.append(user)
        root = os.open(f"/proc/{spec.leader}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.append(root)
        procs = []
        for cgroup in spec.cgroups:
            # Skipped if it cannot be joined (gone, or not writable), as `join_argv(required=False)`.
            with contextlib.suppress(OSError):
                procs.append(os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
                opened.append(procs[-1])
        last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        bounding = _bounding_set(spec.leader)
        drop = tuple(cap for cap in range(last_cap + 1) if not bounding >> cap & 1)
        filters = [*_filters_of(spec.leader, lock=spec.ptrace_lock), seccomp.tty_injection_filter()]
        signal.pidfd_send_signal(leader, 0)
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    os.close(leader)
    return _Handles(
        namespaces=tuple(namespaces),
        user_namespace=user,
        root=root,
        cgroup_procs=tuple(procs),
        drop_capabilities=drop,
        filters=tuple(seccomp.prepare(filters)),
    )


# The intermediate process, in the order it runs them.


def _make_unattachable() -> None:
    # Before any setns: the command forked later inherits it, and stays so until it executes.
    _check(_libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)", 0)


def _join_cgroups(procs: Sequence[int]) -> None:
    # Before the cgroup namespace: so the machine's limits and its end cover the command too.
    for fd in procs:
        with contextlib.suppress(OSError):
            os.write(fd, b"0")


def _enter_namespaces(namespaces: Sequence[tuple[int, int]]) -> None:
    # The mount namespace last: it changes our root and working directory to the machine's.
    for fd, flag in namespaces:
        _check(_libc().setns(fd, flag), "setns", hex(flag))


def _silence() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


# What the intermediate passes on to the command; the terminal sends the others to both itself.
_PASSED_ON = (signal.SIGTERM, signal.SIGHUP)


def _wait_passing_signals(child: int) -> int:
    """Wait for the command, passing SIGTERM and SIGHUP on; its exit status as a shell reports it."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in _PASSED_ON:
        signal.signal(sig, forward)
    # The terminal sends these to the whole process group, the command included.
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    # Blocked since before the fork (see `_run_intermediate`): what came meanwhile is passed on now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


# The command, in the order it runs them.


def _enter_user_namespace(fd: int | None) -> None:
    # Entered last: until now our credentials were the host's, which the machine's root cannot ptrace.
    if fd is not None:
        _check(_libc().setns(fd, CLONE_NEWUSER), "setns", "user")


def _change_root(root: int) -> None:
    # The init's root, opened on the host but entered only now that we are in its mount namespace.
    os.fchdir(root)
    os.chroot(".")


def _drop_bounding_set(capabilities: Sequence[int]) -> None:
    # Before the ids change: dropping needs CAP_SETPCAP, which a non-root user loses with setuid.
    for cap in capabilities:
        _check(_libc().prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "prctl(PR_CAPBSET_DROP)", cap)


def _become_user(uid: int, gid: int, groups: Sequence[int]) -> None:
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _change_directory(workdir: str) -> None:
    # Inside the machine's root, as the user: its symlinks and '..' resolve as the machine sees them.
    os.chdir(workdir)


def _take_terminal(peer: int | None) -> None:
    # Before the fds are closed: a session of its own whose controlling terminal is the machine's peer.
    if peer is None:
        return
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(peer, fd)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _close_fds(*, keep: int | None = None) -> None:
    if keep is None:
        os.closerange(3, FD_LIMIT)
    else:
        os.closerange(3, keep)
        os.closerange(keep + 1, FD_LIMIT)


def _set_no_new_privs() -> None:
    _check(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)", 1)


def _restore_signals() -> None:
    # Python ignores these; an ignored signal stays ignored across exec.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    # Blocked by the intermediate before it forked us; a blocked signal would stay blocked across exec.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)


def _report(channel: int, step: str, e: BaseException) -> None:
    err = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
    detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    with contextlib.suppress(OSError):
        os.write(channel, f"{step}\0{err}\0{detail}".encode(errors="replace"))


def _run_command(spec: EnterSpec, handles: _Handles, channel: int) -> None:
    step = "setns"
    try:
        _enter_user_namespace(handles.user_namespace)
        step = "chroot"
        _change_root(handles.root)
        step = "capabilities"
        _drop_bounding_set(handles.drop_capabilities)
        step = "user"
        _become_user(spec.uid, spec.gid, spec.groups)
        step = "chdir"
        _change_directory(spec.workdir)
        step = "terminal"
        _take_terminal(spec.terminal)
        step = "fds"
        _close_fds(keep=channel)
        _restore_signals()
        step = "no_new_privs"
        _set_no_new_privs()
        step = "seccomp"
        seccomp.install(handles.filters)  # last: the filters may refuse what the steps above need
        step = "exec"
        os.execvpe(spec.argv[0], spec.argv, dict(spec.env))
    except BaseException as e:
        _report(channel, step, e)
    finally:
        os._exit(FAILED_STATUS)


def _run_intermediate(spec: EnterSpec, handles: _Handles, channel: int) -> None:
    step = "prctl"
    try:
        _make_unattachable()
        step = "cgroup"
        _join_cgroups(handles.cgroup_procs)
        step = "setns"
        _enter_namespaces(handles.namespaces)
        if spec.quiet:
            _silence()
        step = "fork"
        # Until the intermediate passes them on: a SIGTERM from veneer now would end it (its inherited
        # handler) and leave the command running in the machine.
        signal.pthread_sigmask(signal.SIG_BLOCK, _PASSED_ON)
        child = os.fork()
        if child == 0:
            _run_command(spec, handles, channel)
        _close_fds()  # the channel and the handles: only the command holds them now
        os._exit(_wait_passing_signals(child))
    except BaseException as e:
        _report(channel, step, e)
    finally:
        os._exit(FAILED_STATUS)


def start_entered(spec: EnterSpec) -> int:
    """Start `spec.argv` in the machine; return the host pid to wait for (its status is the command's).

    Raises OSError if the machine cannot be prepared for, `EnterFailed` if a step of entering failed.
    """
    handles = _open_handles(spec)
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _run_intermediate(spec, handles, write_end)
        os.close(write_end)
    finally:
        handles.close()
    try:
        with os.fdopen(read_end, "rb") as channel:
            report = channel.read()  # empty once the command has executed: the pipe is close-on-exec
    except BaseException:
        # Interrupted (SIGTERM to veneer) while the command starts: it must not run on without us.
        end_process_tree(pid)
        os.waitpid(pid, 0)
        raise
    if report:
        os.waitpid(pid, 0)
        step, err, detail = report.decode(errors="replace").split("\0", 2)
        raise EnterFailed(int(err), detail, step=step)
    return pid
