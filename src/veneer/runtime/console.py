"""The console keeper: a small tmux server of veneer's own holds each booted machine's console.

Why tmux: something has to hold the pseudo-terminal of nspawn's console after `veneer start` returns, keep
its output, and let `veneer console` attach and detach. A tmux server costs about 1 MB of private memory
(4 MB resident, most of it shared); a Python supervisor would cost about 4 MB private (10 MB resident).
Each machine has a server of its own (its socket is in the runtime dir), so killing one touches no other
machine, and a systemd unit that starts one machine owns just that machine's processes.

In it: one session named after the machine, whose pane runs the boot script (nspawn); `pipe-pane` copies
the console into a log file (bounded by `head -c`), and a `pane-died` hook runs `veneer _reap` when the
script ends, however nspawn ended, so the overlay is unmounted and the cgroups removed without any veneer
process waiting. The server exits with its session.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from veneer.util import proc
from veneer.util.fs import atomic_write

LOG_LIMIT_BYTES = 4 << 20
DETACH_KEY = "C-]"

# Global settings, loaded when the server starts. remain-on-exit keeps a dead pane (and its exit status)
# until the pane-died hook has reaped it.
CONFIG = """\
set -g default-terminal "xterm-256color"
set -g history-limit 10000
set -g remain-on-exit on
set -g status off
set -g prefix None
set -g prefix2 None
set -g exit-empty on
set -g destroy-unattached off
bind-key -n {detach} detach-client
set-hook -g pane-died "run-shell -b '{reap} #{{session_name}} #{{pane_dead_status}} #{{pane_dead_signal}}'"
"""


def _pane(name: str) -> str:
    """The target of the machine's pane: its session by exact name, current window."""
    return f"={name}:"


def tmux_argv(socket: Path, *args: str) -> list[str]:
    return ["tmux", "-S", os.fspath(socket), *args]


def reap_command(root: Path, run: Path) -> str:
    """The shell command the hook runs: this veneer, on this store, with the module path it runs from."""
    package_parent = Path(__file__).resolve().parents[2]
    env = [f"VENEER_RUN={run}", f"PYTHONPATH={package_parent}"]
    return shlex.join(["env", *env, sys.executable, "-m", "veneer", "--root", os.fspath(root), "_reap"])


def start_argv(
    socket: Path,
    config: Path,
    name: str,
    command: Sequence[str],
    *,
    log: Path,
    width: int = 160,
    height: int = 48,
) -> list[str]:
    """One tmux invocation that starts the machine's session with its console logged from the first byte.

    The session starts with a placeholder that waits, its output is piped to the log, and only then the
    placeholder is replaced by the real command, so not a byte of early boot output is missed.
    """
    # head stops at the limit; stdbuf makes it write each chunk as it comes (else stdio buffers 4 KiB).
    pipe = shlex.join(["exec", "stdbuf", "-o0", "head", "-c", str(LOG_LIMIT_BYTES)])
    pipe += f" >> {shlex.quote(os.fspath(log))}"
    return tmux_argv(
        socket, "-f", os.fspath(config),
        "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), "exec sleep infinity", ";",
        "pipe-pane", "-t", _pane(name), pipe, ";",
        "respawn-pane", "-k", "-t", _pane(name), shlex.join(command),
    )  # fmt: skip


def write_config(path: Path, *, reap: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = CONFIG.format(detach=DETACH_KEY, reap=reap.replace("'", "'\\''"))
    # Atomically, and only when it changes: tmux servers of machines starting meanwhile are reading it.
    if not path.exists() or path.read_text() != text:
        atomic_write(path, text)


def start_session(socket: Path, config: Path, name: str, command: Sequence[str], *, log: Path) -> None:
    proc.run(start_argv(socket, config, name, command, log=log))


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
