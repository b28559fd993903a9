"""The manifest of a machine stream (checked as hostile input), destinations and the ssh command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from veneer.config.uidrange import acl_ids, shifted_acl
from veneer.errors import UnsafeArchive, UsageError
from veneer.machines.send import Destination, SshOptions, parse_destination, ssh_argv
from veneer.machines.wire import parse_manifest, parse_question

LAYER = "0123456789abcdef"


def manifest(**changes: Any) -> dict[str, Any]:
    machine = {"version": 1, "name": "web1", "image": "deb", "revision": 2, "created": 1.0,
               "machine_id": "a" * 32, "uid_base": 0x70010000, "network": "none"}  # fmt: skip
    data: dict[str, Any] = {
        "version": 1,
        "machine": machine,
        "image_created": 1.0,
        "revision": {"number": 2, "created": 1.0, "command": "update", "layers": [LAYER]},
        "layers": [{"version": 1, "id": LAYER, "created": 1.0, "origin": "x", "size_bytes": 3}],
        "sent": [LAYER],
    }
    for key, value in changes.items():
        if key.startswith("machine."):
            machine[key.removeprefix("machine.")] = value
        else:
            data[key] = value
    return data


def test_manifest_round_trip() -> None:
    parsed = parse_manifest(json.dumps(manifest()).encode())
    assert parsed.machine.name == "web1" and parsed.sent == (LAYER,)
    assert parsed.uid_range == range(0x70010000, 0x70020000)
    assert parse_manifest(json.dumps(parsed.to_json()).encode()) == parsed


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"version": 2}, "unknown version"),
        ({"machine.name": "../x"}, "Invalid machine name"),
        ({"machine.image": "a/b"}, "Invalid image name"),
        ({"machine.uid_base": None}, "privileged"),
        ({"machine.uid_base": 12345}, "not the start of a uid range"),
        ({"machine.uid_base": 0}, "not the start of a uid range"),
        ({"machine.binds": [{"source": "/", "target": "/host", "readonly": False, "options": ""}]}, "binds"),
        ({"machine.machine_id": "../../x"}, "machine id"),
        ({"machine.revision": 1}, "revision"),
        ({"sent": ["../../etc"]}, "not a layer id"),
        ({"sent": ["fedcba9876543210"]}, "does not have"),
        ({"layers": []}, "stack"),
        ({"image_created": float("nan")}, "not a time"),
        ({"machine": "nope"}, "malformed"),
    ],
)
def test_manifest_refuses(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(UnsafeArchive, match=reason):
        parse_manifest(json.dumps(manifest(**changes)).encode())


def test_question() -> None:
    text = json.dumps({"version": 1, "name": "web1", "layers": [{"id": LAYER, "key": None}]}).encode()
    assert parse_question(text).layers == ((LAYER, None),)
    with pytest.raises(UnsafeArchive, match="Invalid machine name"):
        parse_question(text.replace(b"web1", b"-x"))


@pytest.mark.parametrize(
    ("text", "target", "name"),
    [
        ("host2", "host2", None),
        ("root@host2:db2", "root@host2", "db2"),
        ("admin@10.0.0.2", "admin@10.0.0.2", None),
        ("[::1]:web", "::1", "web"),
    ],
)
def test_parse_destination(text: str, target: str, name: str | None) -> None:
    assert parse_destination(text) == Destination(target=target, name=name)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["-oProxyCommand=x", "root@", "a b", "host:../x"])
def test_parse_destination_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_destination(text)


def test_ssh_argv() -> None:
    ssh = SshOptions(port=2222, identity=Path("/k"), options=("A=b",), veneer="sudo /opt/veneer x")
    assert ssh_argv(Destination(target="root@h", name=None), ssh, ["_receive"]) == [
        "ssh", "-o", "BatchMode=yes", "-p", "2222", "-i", "/k", "-o", "A=b", "--", "root@h",
        "sudo /opt/veneer x _receive",
    ]  # fmt: skip


def test_acl_ids_and_shift() -> None:
    entry = (0x02).to_bytes(2, "little") + (4).to_bytes(2, "little") + (0x70010021).to_bytes(4, "little")
    other = (0x20).to_bytes(2, "little") + (0).to_bytes(2, "little") + (0xFFFFFFFF).to_bytes(4, "little")
    value = (2).to_bytes(4, "little") + entry + other
    assert acl_ids(value) == [0x70010021]
    assert acl_ids(value[:-1]) is None
    assert acl_ids(shifted_acl(value, 0x70010000, 0x70030000)) == [0x70030021]
