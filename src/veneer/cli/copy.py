"""`veneer cp`: files and directories between the host and a machine, or a tar stream with `-`."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from veneer.cli.args import layout_of
from veneer.config.values import MachineName, parse_machine_name
from veneer.errors import UsageError

# MACHINE:PATH; a host path with a ':' in it is written with a '/' before it (./a:b), as with docker cp.
_MACHINE_SIDE = re.compile(r"(?P<name>[^/:]+):(?P<path>.*)", re.DOTALL)
_USAGE = "Use: veneer cp [OPTIONS] SRC MACHINE:PATH, or MACHINE:PATH DST (- for a tar stream)."


def _id(text: str) -> int:
    if not text.isdigit():
        raise UsageError(f"Invalid id '{text}'", hint="Use a number, such as 0 or 1000.")
    return int(text)


def _mode(text: str) -> int:
    from veneer.machines.copy import parse_mode

    return parse_mode(text)


def register(verbs: Any) -> None:
    cp = verbs.add_parser(
        "cp",
        help="copy files between the host and a machine (running or stopped)",
        usage="veneer cp [--uid U] [--gid G] [--mode M] [-L] SRC|- MACHINE:PATH\n"
        "       veneer cp [--uid U] [--gid G] [--mode M] [-L] MACHINE:PATH DST|-",
        description="Copy a file or directory into a machine (owned by its root unless --uid/--gid, ids "
        "of the machine) or out of it (owned by you unless --uid/--gid, ids of the host). '-' reads or "
        "writes a tar stream. Paths in the machine are resolved inside it.",
    )
    cp.add_argument("--uid", type=_id, help="owner of what is written")
    cp.add_argument("--gid", type=_id, help="group of what is written")
    cp.add_argument("--mode", type=_mode, metavar="MODE", help="octal mode of the files written (dirs +x)")
    cp.add_argument("-L", "--follow-link", action="store_true", help="copy what a symlink SRC points to")
    cp.add_argument("source", metavar="SRC")
    cp.add_argument("dest", metavar="DST")
    cp.set_defaults(handler=cmd_cp)


def _machine_side(text: str) -> tuple[MachineName, str] | None:
    match = _MACHINE_SIDE.fullmatch(text)
    if match is None:
        return None
    return parse_machine_name(match["name"]), match["path"]


def cmd_cp(args: argparse.Namespace) -> int:
    from pathlib import Path

    from veneer.machines.copy import Ownership, copy_from, copy_into

    layout = layout_of(args)
    owner = Ownership(uid=args.uid, gid=args.gid, mode=args.mode)
    source, dest = _machine_side(args.source), _machine_side(args.dest)
    if (source is None) == (dest is None):
        raise UsageError("Exactly one of SRC and DST must be MACHINE:PATH", hint=_USAGE)
    if dest is not None:
        name, path = dest
        host = None if args.source == "-" else Path(args.source)
        if host is None and sys.stdin.isatty():
            raise UsageError("'-' reads a tar stream from stdin, not a terminal", hint=_USAGE)
        copy_into(layout, name, host, path, owner=owner, stream=sys.stdin.fileno())
        return 0
    assert source is not None
    name, path = source
    sys.stdout.flush()
    target = None if args.dest == "-" else Path(args.dest)
    copy_from(layout, name, path, target, owner=owner, follow=args.follow_link, stream=sys.stdout.fileno())
    return 0
