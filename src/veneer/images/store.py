"""Images and layers in the store: records, publishing, listing and removal.

An image is an ordered stack of immutable layers; revision N is the stack of its first N+1 layers. A layer
is built in a staging directory and published by rename, together with the image record, under the store
lock. This module does no mounting and runs no container.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veneer.config.layout import Layout
from veneer.config.settings import ImageName
from veneer.errors import ImageError, ImageInUse, ImageNotFound, StateCorrupt
from veneer.util.fs import dir_size, locked, make_private_dir, random_hex, remove_tree, save_json
from veneer.util.staging import staging_dir, sweep_staging, trash

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerRecord:
    """One immutable layer: its id, when and how it was made, and its size (fixed once published)."""

    id: str
    created: float
    origin: str
    size_bytes: int
    # A content key (an OCI diff_id "sha256:..."): layers with the same key hold the same files and are
    # shared between images. None for layers built locally.
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": RECORD_VERSION,
            "id": self.id,
            "created": self.created,
            "origin": self.origin,
            "size_bytes": self.size_bytes,
        }
        if self.key is not None:
            data["key"] = self.key
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerRecord:
        key = data.get("key")
        return cls(
            id=str(data["id"]),
            created=float(data["created"]),
            origin=str(data["origin"]),
            size_bytes=int(data["size_bytes"]),
            key=None if key is None else str(key),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRecord:
    """An image: its name and its layers, bottom (revision 0) first."""

    name: ImageName
    created: float
    layers: tuple[LayerRecord, ...]

    @property
    def latest(self) -> int:
        return len(self.layers) - 1

    @property
    def size_bytes(self) -> int:
        return sum(layer.size_bytes for layer in self.layers)

    def layers_of(self, revision: int) -> tuple[LayerRecord, ...]:
        """The layers of a revision, bottom first."""
        if not 0 <= revision <= self.latest:
            raise ImageError(
                f"Image '{self.name}' has no revision {revision}",
                hint=f"Revisions are 0 to {self.latest}; see 'veneer image show {self.name}'.",
            )
        return self.layers[: revision + 1]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "name": self.name,
            "created": self.created,
            "layers": [layer.to_json() for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        return cls(
            name=ImageName(data["name"]),
            created=float(data["created"]),
            layers=tuple(LayerRecord.from_json(layer) for layer in data["layers"]),
        )


def load_image(layout: Layout, name: str) -> ImageRecord:
    """Read an image record, or raise `ImageNotFound`."""
    path = layout.image_record(name)
    if not path.exists():
        raise ImageNotFound(
            f"No image named '{name}'",
            hint="See 'veneer image list', or make one with 'veneer image create NAME --busybox'.",
        )
    try:
        data = json.loads(path.read_text())
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        return ImageRecord.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StateCorrupt(f"Image record '{path}' is unreadable: {e}") from e


def list_images(layout: Layout) -> list[ImageRecord]:
    """Every published image, sorted by name."""
    if not layout.images.is_dir():
        return []
    names = sorted(p.name for p in layout.images.iterdir() if (p / "image.json").exists())
    return [load_image(layout, name) for name in names]


def lower_dirs(layout: Layout, image: ImageRecord, revision: int) -> list[Path]:
    """The layer trees of an image revision, bottom first, as overlay lower dirs."""
    return [layout.layer_tree(layer.id) for layer in image.layers_of(revision)]


def prepare_store(layout: Layout) -> None:
    """Create the store's directories and remove what interrupted commands left behind."""
    make_private_dir(layout.root)
    for path in (layout.images, layout.layers, layout.machines):
        make_private_dir(path)
    with locked(layout.lock, what="The veneer store", wait=True):
        for name in sweep_staging(layout.staging):
            logger.info("Removed '%s', left by an interrupted command.", name)
        _sweep_orphan_layers(layout)


def _sweep_orphan_layers(layout: Layout) -> None:
    """Remove layers no image references (a crash between publishing the layer and the image)."""
    used = {layer.id for image in list_images(layout) for layer in image.layers}
    for path in layout.layers.iterdir():
        if path.name not in used:
            logger.info("Removing layer %s that no image uses.", path.name)
            remove_tree(trash(path, layout.staging))


def create_image(
    layout: Layout,
    name: ImageName,
    *,
    origin: str,
    build: Callable[[Path], None],
) -> ImageRecord:
    """Build revision 0 of a new image with `build(tree)` and publish it atomically."""
    prepare_store(layout)
    if layout.image_record(name).exists():
        raise ImageError(
            f"Image '{name}' exists already",
            hint=f"Pick another name, or remove it first with 'veneer image rm {name}'.",
        )
    with staging_dir(layout.staging, layout.lock, f"image-{name}") as stage:
        layer_id = random_hex(8)
        layer_dir = stage / "layer"
        tree = layer_dir / "tree"
        tree.mkdir(parents=True)
        tree.chmod(0o755)
        build(tree)
        layer = LayerRecord(id=layer_id, created=time.time(), origin=origin, size_bytes=dir_size(tree))
        save_json(layer_dir / "layer.json", layer.to_json())
        record = ImageRecord(name=name, created=layer.created, layers=(layer,))
        image_dir = stage / "image"
        image_dir.mkdir()
        save_json(image_dir / "image.json", record.to_json())
        with locked(layout.lock, what="The veneer store", wait=True):
            if layout.image_record(name).exists():
                raise ImageError(f"Image '{name}' exists already", hint="Another command created it.")
            layer_dir.rename(layout.layer_dir(layer_id))
            image_dir.rename(layout.image_dir(name))
    logger.info("Created image '%s' (%s).", name, origin)
    return record


def remove_image(layout: Layout, name: str, *, users: Callable[[str], list[str]]) -> None:
    """Remove an image and the layers no other image uses; refused while machines use it."""
    prepare_store(layout)
    load_image(layout, name)
    with locked(layout.lock, what="The veneer store", wait=True):
        machines = users(name)
        if machines:
            raise ImageInUse(
                f"Image '{name}' is used by {len(machines)} machine(s): {', '.join(machines)}",
                hint="Remove those machines first ('veneer rm NAME').",
            )
        gone = trash(layout.image_dir(name), layout.staging)
        _sweep_orphan_layers(layout)
    remove_tree(gone)
    logger.info("Removed image '%s'.", name)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerSource:
    """How to make one layer of a stack: its content key, where it comes from, and its builder."""

    key: str | None  # content key, e.g. an OCI diff_id; a stored layer with the same key is reused
    origin: str  # e.g. "pull docker.io/library/debian@sha256:... layer 2/5"
    build: Callable[[Path], None]  # fills an empty tree dir in overlay upper-dir format


def create_image_from_layers(
    layout: Layout, name: ImageName, *, origin: str, layers: Sequence[LayerSource]
) -> ImageRecord:
    """Publish a new image whose revision 0 is the given stack (bottom first), atomically; layers with a
    known key are shared.

    Layers are built outside the store lock (that is the slow part); publishing takes the lock once and
    re-checks which keys are stored by then, so two pulls sharing a layer never publish it twice.
    """
    prepare_store(layout)
    if not layers:
        raise ImageError(f"Image '{name}' would have no layers", hint="The source holds no layer.")
    if layout.image_record(name).exists():
        raise ImageError(
            f"Image '{name}' exists already",
            hint=f"Pick another name, or remove it first with 'veneer image rm {name}'.",
        )

    def stored_keys() -> dict[str, list[LayerRecord]]:
        copies: dict[str, dict[str, LayerRecord]] = {}
        for image in list_images(layout):
            for layer in image.layers:
                if layer.key is not None:
                    copies.setdefault(layer.key, {})[layer.id] = layer
        return {key: list(by_id.values()) for key, by_id in copies.items()}

    def reused(known: dict[str, list[LayerRecord]]) -> dict[int, LayerRecord]:
        # The n-th occurrence of a key in the stack takes the n-th stored layer with that key, or is built:
        # overlayfs refuses the same lower directory twice in one mount, and empty layers often repeat.
        result: dict[int, LayerRecord] = {}
        taken: dict[str, int] = {}
        for index, source in enumerate(layers):
            if source.key is None:
                continue
            n = taken.get(source.key, 0)
            if n < len(known.get(source.key, ())):
                result[index] = known[source.key][n]
            taken[source.key] = n + 1
        return result

    shared = reused(stored_keys())
    with staging_dir(layout.staging, layout.lock, f"image-{name}") as stage:
        built: dict[int, tuple[LayerRecord, Path]] = {}
        for index, source in enumerate(layers):
            if index in shared:
                logger.debug("Layer %s is stored already as %s", source.key, shared[index].id)
                continue
            layer_id = random_hex(8)
            layer_dir = stage / f"layer-{index}"
            tree = layer_dir / "tree"
            tree.mkdir(parents=True)
            tree.chmod(0o755)
            source.build(tree)
            record = LayerRecord(
                id=layer_id,
                created=time.time(),
                origin=source.origin,
                size_bytes=dir_size(tree),
                key=source.key,
            )
            save_json(layer_dir / "layer.json", record.to_json())
            built[index] = (record, layer_dir)
        image_dir = stage / "image"
        image_dir.mkdir()
        with locked(layout.lock, what="The veneer store", wait=True):
            if layout.image_record(name).exists():
                raise ImageError(f"Image '{name}' exists already", hint="Another command created it.")
            # Re-checked under the lock: another command may have published or removed a shared layer.
            shared_now = reused(stored_keys())
            stack: list[LayerRecord] = []
            for index in range(len(layers)):
                if index in shared_now:
                    stack.append(shared_now[index])
                elif index in built:
                    record, layer_dir = built[index]
                    layer_dir.rename(layout.layer_dir(record.id))
                    stack.append(record)
                else:
                    raise ImageError(
                        f"A layer shared with another image was removed while '{name}' was made",
                        hint="Run the command again.",
                    )
            image = ImageRecord(name=name, created=time.time(), layers=tuple(stack))
            save_json(image_dir / "image.json", image.to_json())
            image_dir.rename(layout.image_dir(name))
    logger.info("Created image '%s' (%s).", name, origin)
    return image
