"""The receiving end of `veneer copy`/`move` (`veneer _receive`, run over SSH): which layers this host has,
and a machine stream read into staging and published in one step under the store lock.

The stream may come from a hostile host or carry a hostile machine's files: the manifest is checked by
`machines.wire`, every member by `images.transfer.extract_sections` (no `..`, no symlink followed, no
device node but whiteouts, upper-dir owners only from the sender's range). Nothing leaves staging until
the whole stream has arrived; a stream cut short leaves a staging dir that this command removes, or that
the next command sweeps if this one was killed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import ImageError, UnsafeArchive
from veneer.images.store import ImageRecord, LayerRecord, Revision, list_images, load_image, prepare_store
from veneer.images.transfer import DEFAULT_MAX_LAYER_BYTES, Section, extract_sections
from veneer.machines.lifecycle import make_machine_dirs, publish_staged_machine, refuse_existing_machine
from veneer.machines.state import MachineRecord
from veneer.machines.wire import (
    KEPT_XATTRS,
    MAX_MANIFEST_BYTES,
    STREAM_HINT,
    UPPER,
    LayerQuestion,
    Manifest,
    layer_prefix,
    parse_manifest,
)
from veneer.util.fs import dir_size, locked, save_json
from veneer.util.staging import staging_dir

logger = logging.getLogger(__name__)


def _stored_layers(layout: Layout) -> tuple[dict[str, LayerRecord], dict[str, LayerRecord]]:
    """The layers the images of this store use, by id and by content key."""
    by_id: dict[str, LayerRecord] = {}
    by_key: dict[str, LayerRecord] = {}
    for image in list_images(layout):
        for layer in image.layers:
            by_id[layer.id] = layer
            if layer.key is not None:
                by_key.setdefault(layer.key, layer)
    return by_id, by_key


def _local_layer(
    layer: LayerRecord, stack: tuple[LayerRecord, ...], stored: tuple[dict[str, LayerRecord], ...]
) -> LayerRecord | None:
    """This store's copy of a layer of the sender: the same id, or the same content key (unless the key
    repeats in the stack: overlayfs takes no lower dir twice)."""
    by_id, by_key = stored
    if layer.id in by_id:
        return by_id[layer.id]
    if layer.key is not None and Counter(x.key for x in stack)[layer.key] == 1:
        return by_key.get(layer.key)
    return None


def layers_present(layout: Layout, question: LayerQuestion) -> list[str]:
    """The ids (the sender's) of the layers this store has; refuses a name that is taken already."""
    prepare_store(layout)
    refuse_existing_machine(layout, MachineName(question.name))
    stored = _stored_layers(layout)
    stack = tuple(LayerRecord(id=i, created=0, origin="", size_bytes=0, key=k) for i, k in question.layers)
    return [x.id for x in stack if _local_layer(x, stack, stored) is not None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """A machine published from a stream, and how many layers came with it."""

    record: MachineRecord
    layers_received: int


def _read_manifest(stream: IO[bytes]) -> Manifest:
    line = stream.readline(MAX_MANIFEST_BYTES + 1)
    if not line.endswith(b"\n"):
        raise UnsafeArchive(
            "Refusing the machine stream: it does not start with a manifest line", hint=STREAM_HINT
        )
    return parse_manifest(line)


def receive_machine(layout: Layout, stream: IO[bytes]) -> Received:
    """Read a machine stream (see `machines.wire`) and publish the machine, and the layers and image
    revision it needs, atomically."""
    prepare_store(layout)
    manifest = _read_manifest(stream)
    name = manifest.machine.name
    refuse_existing_machine(layout, name)
    with staging_dir(layout.staging, layout.lock, f"receive-{name}") as stage:
        machine_dir = stage / "machine"
        machine_dir.mkdir(mode=0o700)
        make_machine_dirs(machine_dir, manifest.machine.uid_base)
        sections = {
            UPPER: Section(
                dest=machine_dir / "upper", whiteouts=True, ids=manifest.uid_range, xattrs=KEPT_XATTRS
            )
        }
        for layer_id in manifest.sent:
            tree = stage / "layers" / layer_id / "tree"
            tree.mkdir(parents=True, mode=0o755)
            sections[layer_prefix(layer_id)] = Section(dest=tree, whiteouts=True, xattrs=KEPT_XATTRS)
        # Each layer as large as an imported one may be, and the upper dir too.
        limit = DEFAULT_MAX_LAYER_BYTES * (len(manifest.sent) + 1)
        extract_sections(stream, sections, what=f"the stream of machine '{name}'", max_bytes=limit)
        with locked(layout.lock, what="The veneer store", wait=True):
            refuse_existing_machine(layout, name)
            revision = _adopt_revision(layout, manifest, stage / "layers")
            record = replace(manifest.machine, revision=revision, address=None)
            record = publish_staged_machine(layout, machine_dir, record)
    logger.debug("Received machine '%s' (%d layers sent).", name, len(manifest.sent))
    return Received(record=record, layers_received=len(manifest.sent))


def _adopt_revision(layout: Layout, manifest: Manifest, staged: Path) -> int:
    """Publish the layers sent and the image revision the machine needs (an existing revision with the same
    stack, else a new one); return its number. The caller holds the store lock."""
    stored = _stored_layers(layout)
    stack: list[LayerRecord] = []
    for layer in manifest.layers:
        local = _local_layer(layer, manifest.layers, stored)
        if local is None and layer.id in manifest.sent:
            tree = staged / layer.id / "tree"
            local = replace(layer, created=time.time(), size_bytes=dir_size(tree))
            save_json(staged / layer.id / "layer.json", local.to_json())
            (staged / layer.id).rename(layout.layer_dir(layer.id))
        if local is None:
            raise ImageError(
                f"Layer {layer.id} of image '{manifest.image}' was neither sent nor is it stored here",
                hint="It was removed while the machine was sent; run the copy again.",
            )
        stack.append(local)
    ids = tuple(x.id for x in stack)
    if len(set(ids)) != len(ids):
        raise UnsafeArchive("Refusing the machine stream: its stack repeats a layer", hint=STREAM_HINT)
    if not layout.image_record(manifest.image).exists():
        revision = replace(manifest.revision, layers=ids)
        image = ImageRecord(
            name=manifest.image, created=manifest.image_created, layers=tuple(stack),
            revisions=(revision,), current=revision.number,
        )  # fmt: skip
        image_dir = staged / "image"
        image_dir.mkdir()
        save_json(image_dir / "image.json", image.to_json())
        image_dir.rename(layout.image_dir(manifest.image))
        return revision.number
    image = load_image(layout, manifest.image)
    for existing in image.revisions:
        if existing.layers == ids:
            return existing.number
    revision = Revision(
        number=image.next_number, created=manifest.revision.created, command=manifest.revision.command,
        layers=ids,
    )  # fmt: skip
    known = {x.id for x in image.layers}
    image = replace(
        image,
        layers=image.layers + tuple(x for x in stack if x.id not in known),
        revisions=(*image.revisions, revision),
    )
    save_json(layout.image_record(manifest.image), image.to_json())
    return revision.number
