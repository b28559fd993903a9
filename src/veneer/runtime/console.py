"""The console keeper: a small tmux server of veneer's own holds each booted machine's console.

Why tmux: something has to hold the pseudo-terminal of nspawn's console after `veneer start` returns, keep
its output, and let `veneer console` attach and detach. A tmux server costs about 0.8 MB of private
memory (3.6 MB resident, most of it shared) with the settings below; a Python supervisor would cost about
4 MB private (10 MB resident).
Each machine has a server of its own (its socket is in the runtime dir), so killing one touches no other
machine, and a systemd unit that starts one machine owns just that machine's processes.

In it: one session named after the machine, whose pane runs the boot script (nspawn); `pipe-pane` copies
the console into a log file (the latest 4 to 8 MiB, see `log_pipe`), and a `pane-died` hook runs
`veneer _reap` when the script ends, however nspawn ended, so the overlay is unmounted and the cgroups
removed without any veneer process waiting. The server exits with its session.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from veneer.util import proc

LOG_LIMIT_BYTES = 4 << 20
DETACH_KEY = "C-]"


def settings_commands(*, reap: str | None) -> list[list[str]]:
    """The keeper's settings, as tmux commands run first in the invocation that makes its session (pure).

    No settings file: a shared one was rewritten by every start, and a keeper starting meanwhile came up
    with tmux's defaults and no pane-died hook. They come before the session, so its pane is made with
    them: no scrollback (history-limit 0: the log has the output, and with no prefix key nobody can
    scroll; 2000 lines of 160 columns took 1.7 MB of the server's heap), the hook there before the pane
    can die. remain-on-exit keeps a dead pane (and its exit status) until the pane-died hook has reaped
    it. Without `reap` (a terminal holder, see `holder_argv`) neither.
    """
    common = [
        ["set-option", "-g", "default-terminal", "xterm-256color"],
        ["set-option", "-g", "history-limit", "0"],
        ["set-option", "-g", "status", "off"],
        ["set-option", "-g", "prefix", "None"],
        ["set-option", "-g", "prefix2", "None"],
        ["set-option", "-s", "exit-empty", "on"],
        ["set-option", "-g", "destroy-unattached", "off"],
        ["bind-key", "-n", DETACH_KEY, "detach-client"],
        # The server's malloc settings (`SERVER_ENV`) are its own, not its panes' and hooks'.
        ["set-environment", "-g", "-u", "GLIBC_TUNABLES"],
    ]
    if reap is None:
        return common
    quoted = reap.replace("'", "'\\''")
    hook = f"run-shell -b '{quoted} #{{session_name}} #{{pane_dead_status}} #{{pane_dead_signal}}'"
    return [*common, ["set-option", "-g", "remain-on-exit", "on"], ["set-hook", "-g", "pane-died", hook]]


def _chain(commands: Sequence[Sequence[str]]) -> list[str]:
    """tmux commands as the words of one invocation, separated by `;` (pure)."""
    return [word for index, command in enumerate(commands) for word in ([";"] if index else []) + [*command]]


def _pane(name: str) -> str:
    """The target of the machine's pane: its session by exact name, current window."""
    return f"={name}:"


def tmux_argv(socket: Path, *args: str) -> list[str]:
    return ["tmux", "-S", os.fspath(socket), *args]


def internal_command(root: Path, run: Path, verb: str) -> str:
    """A shell command that runs `verb` of this veneer, on this store, with the module path it runs from."""
    package_parent = Path(__file__).resolve().parents[2]
    env = [f"VENEER_RUN={run}", f"PYTHONPATH={package_parent}"]
    return shlex.join(["env", *env, sys.executable, "-m", "veneer", "--root", os.fspath(root), verb])


def reap_command(root: Path, run: Path) -> str:
    """The shell command the hook runs (`veneer _reap`)."""
    return internal_command(root, run, "_reap")


def log_pipe(log: Path, *, limit: int = LOG_LIMIT_BYTES) -> str:
    """The shell command that copies the console into `log`, keeping the latest output (pure): at
    `limit` bytes the log moves to `log.1` and a new one starts, so at most 2 x `limit` is kept. `log`
    starts empty (the callers truncate it), so nothing runs before head but the shell itself.

    head reads no more than it writes (coreutils reads min(BUFSIZ, left)), so no byte is lost at a
    rotation; stdbuf makes it write each chunk as it comes (else stdio buffers 4 KiB). No `%`: tmux
    expands the command as a format, strftime included (`stat -c %s` became `stat -c <epoch seconds>`).
    """
    quoted = shlex.quote(os.fspath(log))
    previous = shlex.quote(os.fspath(log) + ".1")
    return (
        f"log={quoted}; limit={limit}; "
        'while stdbuf -o0 head -c "$limit" >> "$log"; do '
        '[ "$(wc -c < "$log")" -ge "$limit" ] || exit 0; '
        f'mv -f "$log" {previous}; done'
    )


# The tmux server's malloc: no per-size caches of freed blocks and buffers of 64 KiB or more mapped on
# their own, so what is freed goes back together or to the kernel (0.13 MB less private memory, measured
# in bench/README.md). glibc reads it at the server's start; other C libraries ignore it.
SERVER_ENV = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=65536"}


def start_argv(
    socket: Path,
    name: str,
    command: Sequence[str],
    *,
    log: Path,
    reap: str,
    width: int = 160,
    height: int = 48,
) -> list[str]:
    """One tmux invocation that starts the machine's session, its settings set and its console logged
    from the first byte, and prints the pid of `command` in its pane.

    `-f /dev/null`: no settings file at all, neither a shared one nor the host's /etc/tmux.conf. The
    settings come first, so the pane is made with them and its hook is there before it can die; the
    output is piped to the log in the same invocation, before the server reads a byte from the pane (it
    runs the whole chain before it polls), so not a byte of early boot output is missed. `command` is
    argv of more than one word, which tmux runs without a shell (the host user's, bash as often as not).
    """
    return tmux_argv(socket, "-f", os.devnull, *_chain([
        *settings_commands(reap=reap),
        ["new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), *command],
        ["pipe-pane", "-t", _pane(name), log_pipe(log)],
        ["display-message", "-p", "-t", _pane(name), "#{pane_pid}"],
    ]))  # fmt: skip


def holder_argv(
    socket: Path, name: str, *, log: Path, link: Path, width: int = 160, height: int = 48
) -> list[str]:
    """One tmux invocation that starts a session whose pane only holds a terminal open, for nspawn run
    elsewhere (a systemd unit's, `runtime.systemd_unit`) to take as its stdin and stdout: what nspawn
    writes is logged and shown to `attach`, what is typed there is nspawn's input. `link` points at the
    pane's terminal (/dev/pts/N) once the invocation returns; the server exits when the pane does.
    """
    # Raw: a ^C typed before nspawn sets the terminal raw itself must reach nspawn, not kill the holder.
    # Words, not one string: tmux runs them without the user's shell.
    holder = ["sh", "-c", "stty raw -echo && exec sleep infinity"]
    return tmux_argv(socket, "-f", os.devnull, *_chain([
        *settings_commands(reap=None),
        ["new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), *holder],
        ["pipe-pane", "-t", _pane(name), log_pipe(log)],
        ["run-shell", "-t", _pane(name), f"ln -sfn #{{pane_tty}} {shlex.quote(os.fspath(link))}"],
    ]))  # fmt: skip


def start_session(socket: Path, name: str, command: Sequence[str], *, log: Path, reap: str) -> int:
    """Start the machine's session; return the pid of the process in its pane (`command`), which the
    same invocation prints: no tmux client is run again to find it."""
    result = proc.run(start_argv(socket, name, command, log=log, reap=reap), capture=True, env=SERVER_ENV)
    return int(result.stdout.split()[-1])


def hold_terminal(socket: Path, name: str, *, log: Path, link: Path) -> None:
    """Start a terminal holder's session (`holder_argv`); return once its terminal is linked."""
    proc.run(holder_argv(socket, name, log=log, link=link), env=SERVER_ENV)


def pane_pid(socket: Path, name: str) -> int | None:
    """The pid of the process in the machine's pane (nspawn), or None if there is no live pane."""
    result = proc.run(
        tmux_argv(socket, "display-message", "-p", "-t", _pane(name), "#{pane_pid} #{pane_dead}"),
        capture=True,
        check=False,
    )
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) != 2 or fields[1] == "1":
        return None
    return int(fields[0])


def pane_status(socket: Path, name: str) -> int | None:
    """The exit status of the machine's pane once its process has died (128+N for signal N), else None."""
    result = proc.run(
        tmux_argv(socket, "display-message", "-p", "-t", _pane(name),
                  "#{pane_dead} #{pane_dead_status} #{pane_dead_signal}"),
        capture=True,
        check=False,
    )  # fmt: skip
    fields = result.stdout.split()
    if result.returncode != 0 or not fields or fields[0] != "1":
        return None
    if len(fields) > 2 and fields[2].isdigit() and fields[2] != "0":
        return 128 + int(fields[2])
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def kill_session(socket: Path, name: str) -> None:
    proc.run(tmux_argv(socket, "kill-session", "-t", f"={name}"), check=False, capture=True)


def attach_argv(socket: Path, name: str) -> list[str]:
    return tmux_argv(socket, "attach-session", "-t", f"={name}")


def _last_lines(data: bytes, lines: int | None) -> bytes:
    if lines is None:
        return data
    return b"".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else b""


def _open_log(log: Path) -> BinaryIO | None:
    try:
        return open(log, "rb")  # kept open across the reads of follow_log
    except FileNotFoundError:
        return None


def read_log(log: Path, *, lines: int | None = None) -> bytes:
    """The console log with what rotated into `log.1` before it; the last `lines` lines."""
    stream = _open_log(log)
    if stream is None:
        return b""
    with stream:
        return _last_lines(_previous_of(log) + stream.read(), lines)


def _previous_of(log: Path) -> bytes:
    """log.1: what came before the log, once it has rotated (a new boot removes it)."""
    try:
        return Path(f"{log}.1").read_bytes()
    except FileNotFoundError:
        return b""


def follow_log(log: Path, *, lines: int | None, running: Callable[[], bool]) -> Iterator[bytes]:
    """The console log, then what is added to it, across rotations, until `running()` is False."""
    stream = _open_log(log)
    try:
        yield b"" if stream is None else _last_lines(_previous_of(log) + stream.read(), lines)
        while True:
            alive = running()
            if stream is None:
                stream = _open_log(log)
            while stream is not None:
                while chunk := stream.read():
                    yield chunk
                # Rotated: the rest of the old file is read; go on with the new one from its start.
                try:
                    rotated = os.stat(log).st_ino != os.fstat(stream.fileno()).st_ino
                except FileNotFoundError:
                    rotated = False
                if not rotated:
                    break
                stream.close()
                stream = _open_log(log)
            if not alive:
                return
            time.sleep(0.2)
    finally:
        if stream is not None:
            stream.close()
