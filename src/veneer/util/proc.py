"""The one gate through which veneer runs external commands. The only module importing `subprocess`.

Commands are argv lists (never a shell), run with a minimal environment and stdin from /dev/null unless
the caller says otherwise; a failure raises `CommandFailed` carrying the tail of stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

from veneer.errors import CommandFailed

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment for child commands: PATH and a UTF-8 locale, plus `extra`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
    }
    if extra:
        env.update(extra)
    return env


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
) -> subprocess.CompletedProcess[str]:
    """Run argv to completion; raise `CommandFailed` unless its status is in `ok_returncodes`.

    Args:
        capture: collect stdout and stderr (else stdout is inherited and stderr is kept for errors).
        passthrough: inherit stdin, stdout and stderr (interactive commands such as nspawn runs).
    """
    args = [os.fspath(a) for a in argv]
    logger.debug("+ %s", shlex.join(args))
    stdin: int | None
    if passthrough:
        stdin, stdout, stderr = None, None, None
    else:
        stdin = None if input is not None else subprocess.DEVNULL
        stdout = subprocess.PIPE if capture else None
        stderr = subprocess.PIPE
    try:
        result = subprocess.run(
            args,
            input=input,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=base_env(env),
            cwd=cwd,
            text=True,
            check=False,
        )
    except FileNotFoundError as e:
        raise CommandFailed(args, 127, f"{args[0]}: command not found",
                            hint=f"Install the package that provides '{args[0]}'.") from e
    if check and result.returncode not in ok_returncodes:
        logger.debug("%s exited with %d", args[0], result.returncode)
        raise CommandFailed(args, result.returncode, result.stderr or "")
    return result


def which(name: str) -> str | None:
    """The full path of an executable on PATH, or None."""
    for directory in base_env()["PATH"].split(os.pathsep):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None
