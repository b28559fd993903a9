"""The one gate through which veneer runs external commands. The only module importing `subprocess`.

Commands are argv lists (never a shell), run with a minimal environment and stdin from /dev/null unless
the caller says otherwise; a failure raises `CommandFailed` carrying the tail of stderr.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from veneer.errors import CommandFailed
from veneer.util.procfs import child_pids

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]
# For callers that annotate results without importing subprocess themselves.
Completed = subprocess.CompletedProcess[str]
Process = subprocess.Popen[bytes]
DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE
# How many of a followed command's last lines are kept for its error message.
_KEPT_LINES = 50


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment for child commands: PATH and a UTF-8 locale, plus `extra`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
    }
    if extra:
        env.update(extra)
    return env


def _not_found(args: Sequence[str]) -> CommandFailed:
    return CommandFailed(
        args, 127, f"{args[0]}: command not found", hint=f"Install the package that provides '{args[0]}'."
    )


def _die_with_parent() -> Callable[[], None]:
    """A function for between fork and exec: have the kernel SIGKILL the child if veneer dies (kill -9
    included), so no helper (cp, tar, debootstrap) keeps writing into a staging dir the next command
    sweeps. libc is looked up here, in the parent: the child only makes the call."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)

    return set_death_signal


def run(
    argv: Sequence[StrPath],
    *,
    check: bool = True,
    capture: bool = False,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: StrPath | None = None,
    ok_returncodes: Sequence[int] = (0,),
    passthrough: bool = False,
    before_exec: Callable[[], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    die_with_parent: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run argv to completion; raise `CommandFailed` unless its status is in `ok_returncodes`.

    Args:
        capture: collect stdout and stderr (else stdout is inherited and stderr is kept for errors).
        passthrough: inherit stdin, stdout and stderr (interactive commands such as nspawn runs).
        before_exec: runs in the child between fork and exec (stdlib and syscall wrappers only).
        on_line: called with each line of stdout and stderr together, as they come (a progress
            parser); the last lines are kept as the result's stderr, for errors.
        die_with_parent: the kernel kills the command if veneer dies (see `_die_with_parent`). False
            for a daemon's starter, whose daemon would not inherit that anyway: without anything to
            run between fork and exec, the command is started by vfork, not by a copy of this process
            (5 ms less for dnsmasq here).
    """
    args = [os.fspath(a) for a in argv]
    set_death_signal = _die_with_parent() if die_with_parent else None

    def prepare_child() -> None:
        if set_death_signal is not None:
            set_death_signal()
        if before_exec is not None:
            before_exec()

    logger.debug("+ %s", shlex.join(args))
    stdin: int | None
    if passthrough:
        stdin, stdout, stderr = None, None, None
    else:
        stdin = subprocess.DEVNULL
        stdout = subprocess.PIPE if capture else None
        stderr = subprocess.PIPE
    if input is not None:
        stdin = subprocess.PIPE
    if on_line is not None:
        assert input is None and not passthrough
        stdout, stderr = subprocess.PIPE, subprocess.STDOUT
    try:
        process = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=base_env(env),
            cwd=cwd,
            text=True,
            preexec_fn=prepare_child if die_with_parent or before_exec is not None else None,
        )
    except FileNotFoundError as e:
        raise _not_found(args) from e
    with process:
        try:
            if on_line is None:
                out, err = process.communicate(input)
            else:
                out, err = "", _follow_lines(process, on_line)
        except BaseException:
            # Interrupted (Ctrl-C, or SIGTERM/SIGHUP turned into an exception by the command line): what
            # the command started goes too, before the caller's cleanup removes the tree it writes into.
            end_process_tree(process.pid)
            raise
    result = subprocess.CompletedProcess(args, process.returncode, out, err)
    if check and result.returncode not in ok_returncodes:
        logger.debug("%s exited with %d", args[0], result.returncode)
        # Some tools (debootstrap) write their errors to stdout: the cause is there when stderr is empty.
        said = result.stderr if result.stderr and result.stderr.strip() else result.stdout if capture else ""
        raise CommandFailed(args, result.returncode, said or "")
    return result


def _follow_lines(process: subprocess.Popen[str], on_line: Callable[[str], None]) -> str:
    """Pass each line of the process's stdout to `on_line` until it ends; return the last lines."""
    assert process.stdout is not None
    tail: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
    for line in process.stdout:
        tail.append(line)
        on_line(line.rstrip("\n"))
    process.wait()
    return "".join(tail)


def end_process_tree(pid: int) -> None:
    """SIGKILL a child of veneer's and every process below it (debootstrap's dpkg, tar's compressor).

    All are stopped first, so none forks a process that escapes the kill; the child itself is left for
    its parent to reap.
    """
    stopped: set[int] = set()
    while found := {pid, *descendants(pid)} - stopped:
        for member in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGSTOP)
        stopped |= found
    for member in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the commands veneer runs fork from their main thread)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        below = child_pids(todo.pop())
        found += below
        todo += below
    return found


def which(name: str) -> str | None:
    """The full path of an executable on PATH, or None."""
    for directory in base_env()["PATH"].split(os.pathsep):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def spawn(
    argv: Sequence[StrPath],
    *,
    env: Mapping[str, str] | None = None,
    before_exec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv with the caller's stdin, stdout and stderr (a foreground container run).

    Args:
        before_exec: runs in the child between fork and exec (stdlib and syscall wrappers only; the
            caller is single-threaded). An OSError it raises fails the start with its message
            (`CommandFailed`, status 126): nothing of argv ran.
    """
    args = [os.fspath(a) for a in argv]
    logger.debug("+ %s", shlex.join(args))
    if before_exec is None:
        try:
            return subprocess.Popen(args, env=base_env(env))
        except FileNotFoundError as e:
            raise _not_found(args) from e
    # subprocess says no more than "Exception occurred in preexec_fn": the child writes what failed here.
    reason_r, reason_w = os.pipe2(os.O_CLOEXEC)
    prepare = before_exec

    def prepare_reporting() -> None:
        try:
            prepare()
        except OSError as e:
            os.write(reason_w, str(e).encode(errors="replace")[:4096])
            raise

    try:
        try:
            return subprocess.Popen(args, env=base_env(env), preexec_fn=prepare_reporting)
        finally:
            os.close(reason_w)
    except FileNotFoundError as e:
        raise _not_found(args) from e
    except subprocess.SubprocessError as e:
        reason = os.read(reason_r, 4096).decode(errors="replace") or str(e)
        raise CommandFailed(args, 126, f"before it could start: {reason}") from e
    finally:
        os.close(reason_r)


def wait_forwarding(process: subprocess.Popen[bytes] | int) -> int:
    """Wait for a foreground child (a process or the pid of one we forked), passing SIGTERM and SIGHUP
    on to it; return its exit status.

    SIGINT and SIGQUIT are ignored meanwhile: the terminal delivers them to the child's process group too,
    and the child decides what they mean (nspawn forwards them into the container). A SIGTERM or SIGHUP
    that was passed on is raised again here once the child has ended, so veneer ends as that signal
    asks, through the caller's own handler (its cleanup, its exit status), not as if the child failed.
    """
    forwarded = (signal.SIGTERM, signal.SIGHUP)
    ignored = (signal.SIGINT, signal.SIGQUIT)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            if isinstance(process, int):
                os.kill(process, signum)
            else:
                process.send_signal(signum)

    previous = {sig: signal.getsignal(sig) for sig in (*forwarded, *ignored)}
    try:
        for sig in forwarded:
            signal.signal(sig, forward)
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)
        if isinstance(process, int):
            returncode = os.waitstatus_to_exitcode(os.waitpid(process, 0)[1])
        else:
            returncode = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        signal.raise_signal(received[0])
    # A child killed by a signal exits like a shell reports it: 128 + the signal number.
    return 128 - returncode if returncode < 0 else returncode


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.02) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def spawn_piped(
    argv: Sequence[StrPath],
    *,
    stdin: int | None,
    stdout: int | None,
    stderr: int | None,
    env: Mapping[str, str] | None = None,
) -> Process:
    """Start argv with these file descriptors as its stdin, stdout and stderr (None: the caller's own),
    for callers that stream data through a command (`veneer cp`)."""
    args = [os.fspath(a) for a in argv]
    logger.debug("+ %s", shlex.join(args))
    try:
        return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr, env=base_env(env))
    except FileNotFoundError as e:
        raise _not_found(args) from e


def replace_process(argv: Sequence[StrPath], *, env: Mapping[str, str]) -> None:
    """Exec argv in place of this process (its pid, so a unit's main process stays the same), with this
    process's environment and `env` over it. Returns only if the exec failed (raises OSError)."""
    args = [os.fspath(a) for a in argv]
    logger.debug("+ exec %s", shlex.join(args))
    os.execvpe(args[0], args, {**os.environ, **env})
