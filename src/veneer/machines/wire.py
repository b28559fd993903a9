"""The stream `veneer copy` sends to `veneer _receive` on another host, and the question it asks first.

A stream is one line of JSON, the manifest (the machine's record, its image revision and the records of
that revision's layers, the ids of the layers whose trees follow), then a tar stream: `layers/<id>/...`
for each layer sent, `upper/...` for the machine's upper dir (owners in the sender's uid range, named in
the manifest), and the end member. The receiver trusts none of it: `parse_manifest` checks every field,
`images.transfer.extract_sections` every member.

Pure: no file system, no commands.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from veneer.config.settings import UID_RANGE_SIZE, ImageName, parse_image_name, parse_machine_name
from veneer.errors import Error, UnsafeArchive
from veneer.images.store import LayerRecord, Revision
from veneer.machines.state import MachineRecord

WIRE_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20
UPPER = "upper"
# The xattrs a machine's upper dir and image layers carry to another host. Other trusted.overlay.*
# attributes (origin, impure) hold file handles and inode facts of this host's file systems only.
KEPT_XATTRS = (
    "security.capability",
    "user.",
    "trusted.overlay.opaque",
    "system.posix_acl_access",
    "system.posix_acl_default",
)
COMMITTED = b"committed"  # what a host fetching a machine that moves answers once it is published
STREAM_HINT = "The sending host or machine sent what veneer does not accept; nothing was stored."

_LAYER_ID = re.compile(r"[0-9a-f]{8,64}")
_MACHINE_ID = re.compile(r"[0-9a-f]{32}")
_MAX_TEXT = 4096
_UID_LIMIT = 1 << 32


def layer_prefix(layer_id: str) -> str:
    return f"layers/{layer_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """What a stream holds: the machine, its image revision and layers, and which layers follow."""

    machine: MachineRecord  # uid_base: the sender's range, which the upper dir's owners are in
    image_created: float
    revision: Revision
    layers: tuple[LayerRecord, ...]  # of the revision, bottom first
    sent: tuple[str, ...]  # ids of the layers whose trees the stream holds

    @property
    def image(self) -> ImageName:
        return ImageName(self.machine.image)

    @property
    def uid_range(self) -> range:
        assert self.machine.uid_base is not None
        return range(self.machine.uid_base, self.machine.uid_base + UID_RANGE_SIZE)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": WIRE_VERSION,
            "machine": self.machine.to_json(),
            "image_created": self.image_created,
            "revision": self.revision.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
            "sent": list(self.sent),
        }


def _refuse(reason: str) -> UnsafeArchive:
    return UnsafeArchive(f"Refusing the machine stream: {reason}", hint=STREAM_HINT)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_TEXT or any(ord(c) < 0x20 for c in value):
        raise _refuse(f"its {what} is not a short line of text")
    return value


def _time(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise _refuse(f"its {what} is not a time")
    return value


def _layer_id(value: object) -> str:
    if not isinstance(value, str) or not _LAYER_ID.fullmatch(value):
        raise _refuse(f"{str(value)[:80]!r} is not a layer id")
    return value


def parse_manifest(line: bytes) -> Manifest:
    """The manifest a stream starts with, checked as hostile input; raises `UnsafeArchive`."""
    try:
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("version") != WIRE_VERSION:
            raise _refuse("unknown version (the other host runs another veneer)")
        machine = MachineRecord.from_json(data["machine"])
        manifest = Manifest(
            machine=machine,
            image_created=float(data["image_created"]),
            revision=Revision.from_json(data["revision"]),
            layers=tuple(LayerRecord.from_json(x) for x in data["layers"]),
            sent=tuple(_layer_id(x) for x in data["sent"]),
        )
    except UnsafeArchive:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _refuse(f"its manifest is malformed ({type(e).__name__}: {e})") from e
    try:
        parse_machine_name(machine.name)
        parse_image_name(machine.image)
    except Error as e:
        raise _refuse(e.message) from e
    _check_machine(machine)
    _check_layers(manifest)
    return manifest


def _check_machine(machine: MachineRecord) -> None:
    if not _MACHINE_ID.fullmatch(machine.machine_id):
        raise _refuse("its machine id is not 32 hex digits")
    base = machine.uid_base
    if base is None:
        raise _refuse("the machine is privileged (no uid range); only user-namespaced machines are copied")
    if base % UID_RANGE_SIZE or not UID_RANGE_SIZE <= base <= _UID_LIMIT - UID_RANGE_SIZE:
        raise _refuse(f"{base} is not the start of a uid range")
    if machine.binds:
        raise _refuse("the machine binds host directories, which name the other host's files")
    if machine.owner is not None:
        raise _refuse("the machine is a throwaway one")
    _time(machine.created, "creation time")


def _check_layers(manifest: Manifest) -> None:
    revision = manifest.revision
    if revision.number < 0 or revision.number >= 1 << 31:
        raise _refuse(f"{revision.number} is not a revision number")
    if manifest.machine.revision != revision.number:
        raise _refuse("the machine's revision is not the one sent")
    _text(revision.command, "revision's command")
    _time(revision.created, "revision's time")
    _time(manifest.image_created, "image's time")
    ids = [_layer_id(layer.id) for layer in manifest.layers]
    if not ids or ids != list(revision.layers) or len(set(ids)) != len(ids):
        raise _refuse("its layers are not the revision's stack of distinct layers")
    for layer in manifest.layers:
        _text(layer.origin, "layer's origin")
        _time(layer.created, "layer's time")
        if layer.key is not None:
            _text(layer.key, "layer's key")
    if not set(manifest.sent) <= set(ids) or len(set(manifest.sent)) != len(manifest.sent):
        raise _refuse("it sends layers the revision does not have")


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerQuestion:
    """Which of these layers (id, content key) the receiver has, and whether the name is free."""

    name: str
    layers: tuple[tuple[str, str | None], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": WIRE_VERSION,
            "name": self.name,
            "layers": [{"id": i, "key": k} for i, k in self.layers],
        }


def parse_question(text: bytes) -> LayerQuestion:
    """The sender's question, checked as hostile input; raises `UnsafeArchive`."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != WIRE_VERSION:
            raise _refuse("unknown version (the other host runs another veneer)")
        layers = tuple(
            (_layer_id(x["id"]), None if x.get("key") is None else _text(x["key"], "layer's key"))
            for x in data["layers"]
        )
        name = parse_machine_name(str(data["name"]))
    except UnsafeArchive:
        raise
    except Error as e:
        raise _refuse(e.message) from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _refuse(f"its question is malformed ({type(e).__name__}: {e})") from e
    return LayerQuestion(name=name, layers=layers)
