"""The pure parts of `veneer cp`: machine paths, modes, owners given to tar members, the CLI's sides."""

from __future__ import annotations

import tarfile

import pytest

from veneer.cli.copy import _machine_side
from veneer.errors import UsageError
from veneer.machines.copy import Ownership, _reason, machine_path, parse_mode


@pytest.mark.parametrize(
    ("text", "path"),
    [("/etc/passwd", "/etc/passwd"), ("etc", "/etc"), ("/srv/", "/srv/"), ("/", "/"), ("//a/../b", "/b"),
     ("../../..", "/")],
)  # fmt: skip
def test_machine_path(text: str, path: str) -> None:
    assert machine_path(text) == path


@pytest.mark.parametrize(("text", "mode"), [("644", 0o644), ("0755", 0o755), ("4755", 0o4755)])
def test_parse_mode(text: str, mode: int) -> None:
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["rwx", "8", "17777", "-1", ""])
def test_parse_mode_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_mode(text)


def test_ownership_apply() -> None:
    owner = Ownership(uid=5, gid=6, mode=0o640)
    member = owner.apply(tarfile.TarInfo("f"))
    assert (member.uid, member.gid, member.uname, member.mode) == (5, 6, "", 0o640)
    directory = tarfile.TarInfo("d")
    directory.type = tarfile.DIRTYPE
    assert owner.apply(directory).mode == 0o750
    link = tarfile.TarInfo("l")
    link.type, link.mode = tarfile.SYMTYPE, 0o777
    assert owner.apply(link).mode == 0o777
    untouched = Ownership().apply(tarfile.TarInfo("g"))
    assert (untouched.uid, untouched.mode) == (0, 0o644)


@pytest.mark.parametrize(
    ("text", "side"),
    [("web:/etc", ("web", "/etc")), ("web:", ("web", "")), ("./a:b", None), ("/tmp/x", None), ("-", None)],
)
def test_machine_side(text: str, side: tuple[str, str] | None) -> None:
    assert _machine_side(text) == side


NEEDS = "The machine needs sh and tar (busybox has both)."


@pytest.mark.parametrize(
    ("stderr", "status", "reason", "hint"),
    [
        ("veneer: Machine 'm' is not running\n  Start it with 'veneer start m'.\n", 1,
         "Machine 'm' is not running", "Start it with 'veneer start m'."),
        ("/x: not in the machine\n", 101, "/x: not in the machine", "Check the path in the machine."),
        ("sh: tar: not found\n", 127, "sh: tar: not found", NEEDS),
        ("", 1, "exit status 1", NEEDS),
    ],
)  # fmt: skip
def test_reason(stderr: str, status: int, reason: str, hint: str) -> None:
    assert _reason(stderr, status) == (reason, hint)
