# Copyright: veneer developers
# GNU Lesser General Public License v2.1+ (see https://www.gnu.org/licenses/lgpl-2.1.txt)
"""How the controller runs the veneer command: here, or on another host over SSH.

Shared by the connection and inventory plugins; runs on the controller only.
"""

from __future__ import annotations

import shlex

SSH_FAILED = 255  # ssh's own exit status when it could not reach the host


def veneer_argv(veneer_command: str, args: list[str], *, host: str = "", ssh_args: str = "") -> list[str]:
    """argv that runs `veneer_command args...` on `host` (empty: the controller) through ssh."""
    local = [*shlex.split(veneer_command or "veneer"), *args]
    if not host:
        return local
    # ssh joins its arguments into one string for the remote shell: quote each word for it.
    return ["ssh", *shlex.split(ssh_args or ""), "-o", "BatchMode=yes", "--", host, shlex.join(local)]


def veneer_error(returncode: int, stderr: bytes) -> str | None:
    """veneer's own message when it, not the command it ran, failed (`veneer: ...` and a hint)."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    if returncode == 1 and 1 <= len(lines) <= 2 and lines[0].startswith("veneer: "):
        return lines[0].removeprefix("veneer: ")
    return None
