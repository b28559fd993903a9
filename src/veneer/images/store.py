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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from veneer.config.layout import Layout
from veneer.config.settings import ImageName
from veneer.errors import ImageError, ImageInUse, ImageNotFound, StateCorrupt
from veneer.images.runconfig import RunConfig, parse_run_config
from veneer.util.fs import dir_size, locked, make_private_dir, random_hex, remove_tree, save_json
from veneer.util.staging import staging_dir, sweep_staging, trash

logger = logging.getLogger(__name__)

# Fills an empty layer tree (in overlay upper-dir format); the second directory is scratch space on the
# same filesystem (an overlay work dir, a mount point), removed afterwards.
LayerBuilder = Callable[[Path, Path], None]

RECORD_VERSION = 2
LAYER_RECORD_VERSION = 1


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
            "version": LAYER_RECORD_VERSION,
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
class Revision:
    """One state of an image: a stack of layers, bottom first, and how it was made."""

    number: int
    created: float
    command: str
    layers: tuple[str, ...]
    # How the image says it runs (an OCI image's config); a revision built on another inherits it.
    config: RunConfig | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "number": self.number,
            "created": self.created,
            "command": self.command,
            "layers": list(self.layers),
        }
        if self.config is not None:
            data["config"] = self.config.to_oci()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Revision:
        return cls(
            number=int(data["number"]),
            created=float(data["created"]),
            command=str(data["command"]),
            layers=tuple(str(layer) for layer in data["layers"]),
            config=parse_run_config(data.get("config"), f"Revision {data['number']}"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRecord:
    """An image: its revisions, the layers they stack, and the revision new machines and rebases use.

    Revisions form a tree: an update stacks one layer on the current revision, a rollback only moves
    `current`, so an update after a rollback branches off. Layers are shared, never copied.
    """

    name: ImageName
    created: float
    layers: tuple[LayerRecord, ...]  # every layer a revision uses, in no particular order
    revisions: tuple[Revision, ...]
    current: int

    @property
    def latest(self) -> int:
        """The revision new machines get and rebases go to (the name predates rollback)."""
        return self.current

    @property
    def size_bytes(self) -> int:
        return sum(layer.size_bytes for layer in self.layers)

    @property
    def next_number(self) -> int:
        return max(r.number for r in self.revisions) + 1

    def revision(self, number: int) -> Revision:
        for revision in self.revisions:
            if revision.number == number:
                return revision
        known = ", ".join(str(r.number) for r in self.revisions)
        raise ImageError(
            f"Image '{self.name}' has no revision {number}",
            hint=f"Its revisions are {known}; see 'veneer image show {self.name}'.",
        )

    def config_of(self, number: int) -> RunConfig | None:
        """How a revision says it runs (None: as a system, or as the caller says)."""
        return self.revision(number).config

    def layers_of(self, number: int) -> tuple[LayerRecord, ...]:
        """The layers of a revision, bottom first."""
        by_id = {layer.id: layer for layer in self.layers}
        return tuple(by_id[layer_id] for layer_id in self.revision(number).layers)

    def with_revision(self, revision: Revision, new_layers: Sequence[LayerRecord] = ()) -> ImageRecord:
        """This image with one more revision, made current."""
        known = {layer.id for layer in self.layers}
        layers = self.layers + tuple(layer for layer in new_layers if layer.id not in known)
        return replace(self, layers=layers, revisions=(*self.revisions, revision), current=revision.number)

    def without_revisions(self, numbers: set[int]) -> ImageRecord:
        """This image without the given revisions and without the layers only they used."""
        revisions = tuple(r for r in self.revisions if r.number not in numbers)
        used = {layer_id for r in revisions for layer_id in r.layers}
        return replace(self, revisions=revisions, layers=tuple(x for x in self.layers if x.id in used))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "name": self.name,
            "created": self.created,
            "current": self.current,
            "layers": [layer.to_json() for layer in self.layers],
            "revisions": [revision.to_json() for revision in self.revisions],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        layers = tuple(LayerRecord.from_json(layer) for layer in data["layers"])
        if data["version"] == 1:  # revision N was the stack of the first N+1 layers
            revisions = tuple(
                Revision(
                    number=n,
                    created=x.created,
                    command=x.origin,
                    layers=tuple(y.id for y in layers[: n + 1]),
                )
                for n, x in enumerate(layers)
            )
            return cls(name=ImageName(data["name"]), created=float(data["created"]), layers=layers,
                       revisions=revisions, current=len(layers) - 1)  # fmt: skip
        return cls(
            name=ImageName(data["name"]),
            created=float(data["created"]),
            layers=layers,
            revisions=tuple(Revision.from_json(r) for r in data["revisions"]),
            current=int(data["current"]),
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
        if data.get("version") not in (1, RECORD_VERSION):
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
    refuse_existing_image(layout, name)
    with staging_dir(layout.staging, layout.lock, f"image-{name}") as stage:
        layer_dir, layer = _build_layer(stage, origin=origin, build=lambda tree, _scratch: build(tree))
        record = _publish_image(layout, stage, name, layer_dir, layer, base=())
    logger.debug("Created image '%s' (%s).", name, origin)
    return record


def _publish_image(
    layout: Layout,
    stage: Path,
    name: ImageName,
    layer_dir: Path,
    layer: LayerRecord,
    *,
    base: Sequence[str],
    config: RunConfig | None = None,
) -> ImageRecord:
    """Publish a staged layer and a new image whose revision 0 stacks it on the layers `base`, which must
    still exist (checked under the store lock)."""
    with locked(layout.lock, what="The veneer store", wait=True):
        refuse_existing_image(layout, name)
        stored = {x.id: x for image in list_images(layout) for x in image.layers}
        missing = [layer_id for layer_id in base if layer_id not in stored]
        if missing:
            raise ImageError(
                f"Layers {', '.join(missing)} are gone", hint="The base was pruned meanwhile; retry."
            )
        layers = (*(stored[layer_id] for layer_id in base), layer)
        revision = Revision(
            number=0,
            created=layer.created,
            command=layer.origin,
            layers=tuple(x.id for x in layers),
            config=config,
        )
        record = ImageRecord(
            name=name, created=layer.created, layers=layers, revisions=(revision,), current=0
        )
        image_dir = stage / "image"
        image_dir.mkdir()
        save_json(image_dir / "image.json", record.to_json())
        layer_dir.rename(layout.layer_dir(layer.id))
        image_dir.rename(layout.image_dir(name))
    return record


def _build_layer(stage: Path, *, origin: str, build: LayerBuilder) -> tuple[Path, LayerRecord]:
    """Build a layer in `stage/layer` (its tree) with `stage/scratch` for the builder's own use."""
    layer_dir = stage / "layer"
    tree = layer_dir / "tree"
    tree.mkdir(parents=True)
    tree.chmod(0o755)
    scratch = stage / "scratch"
    scratch.mkdir(mode=0o700)
    build(tree, scratch)
    layer = LayerRecord(id=random_hex(8), created=time.time(), origin=origin, size_bytes=dir_size(tree))
    save_json(layer_dir / "layer.json", layer.to_json())
    return layer_dir, layer


def add_revision(
    layout: Layout,
    name: str,
    *,
    parent: int | None = None,
    command: str,
    build: LayerBuilder,
    flatten: bool = False,
) -> ImageRecord:
    """Stack a new layer, made by `build(tree, scratch)`, on a revision (the current one by default) and
    publish it atomically as the image's next revision, which becomes current. With `flatten`, the new
    layer holds the whole tree and makes the revision alone (squash)."""
    prepare_store(layout)
    image = load_image(layout, name)
    base = image.revision(image.current if parent is None else parent)
    with staging_dir(layout.staging, layout.lock, f"revision-{name}") as stage:
        layer_dir, layer = _build_layer(stage, origin=command, build=build)
        with locked(layout.lock, what="The veneer store", wait=True):
            image = load_image(layout, name)  # another command may have added a revision meanwhile
            image.revision(base.number)  # or pruned the parent
            layers = (layer.id,) if flatten else (*base.layers, layer.id)
            revision = Revision(
                number=image.next_number,
                created=layer.created,
                command=command,
                layers=layers,
                config=base.config,
            )
            record = image.with_revision(revision, [layer])
            layer_dir.rename(layout.layer_dir(layer.id))
            save_json(layout.image_record(name), record.to_json())
    logger.debug("Image '%s' has a new revision %d.", name, revision.number)
    return record


def add_image_from_revision(
    layout: Layout, name: ImageName, *, source: str, parent: int, command: str, build: LayerBuilder
) -> ImageRecord:
    """Publish a new image whose revision 0 is a revision of `source` plus one new layer (the source's layers
    are shared, not copied)."""
    prepare_store(layout)
    refuse_existing_image(layout, name)
    base = load_image(layout, source).revision(parent)
    with staging_dir(layout.staging, layout.lock, f"image-{name}") as stage:
        layer_dir, layer = _build_layer(stage, origin=command, build=build)
        record = _publish_image(layout, stage, name, layer_dir, layer, base=base.layers, config=base.config)
    logger.debug("Created image '%s' (%s).", name, command)
    return record


def refuse_existing_image(layout: Layout, name: str) -> None:
    """Fail if the name is taken: early, before long work (publishing checks again, under the lock)."""
    if layout.image_record(name).exists():
        raise ImageError(
            f"Image '{name}' exists already",
            hint=f"Pick another name, or remove it first with 'veneer image rm {name}'.",
        )


def set_current(layout: Layout, name: str, number: int) -> ImageRecord:
    """Make a revision the one new machines and rebases use (rollback); no layer changes."""
    with locked(layout.lock, what="The veneer store", wait=True):
        image = load_image(layout, name)
        image.revision(number)
        record = replace(image, current=number)
        save_json(layout.image_record(name), record.to_json())
    return record


def prune_revisions(layout: Layout, name: str, *, in_use: Callable[[], set[tuple[str, int]]]) -> list[int]:
    """Drop the image's revisions that are not current and that no machine uses; return their numbers.
    `in_use()` is called under the store lock, so no machine can move onto a revision being dropped."""
    prepare_store(layout)
    with locked(layout.lock, what="The veneer store", wait=True):
        image = load_image(layout, name)
        used = {number for image_name, number in in_use() if image_name == name} | {image.current}
        dropped = {r.number for r in image.revisions} - used
        if dropped:
            save_json(layout.image_record(name), image.without_revisions(dropped).to_json())
            still = {x.id for other in list_images(layout) for x in other.layers}
            gone = [trash(layout.layer_dir(x.id), layout.staging) for x in image.layers if x.id not in still]
        else:
            gone = []
    for path in gone:
        remove_tree(path)
    return sorted(dropped)


def remove_image(layout: Layout, name: str, *, users: Callable[[str], Sequence[str]]) -> None:
    """Remove an image and the layers no other image uses; refused while machines use it."""
    prepare_store(layout)
    load_image(layout, name)
    with locked(layout.lock, what="The veneer store", wait=True):
        machines = users(name)
        if machines:
            raise ImageInUse(
                f"Image '{name}' is used by {len(machines)} machine(s): {', '.join(machines)}",
                hint=f"Remove those machines first ('veneer rm NAME'), or with the image: "
                f"'veneer image rm --force {name}'.",
            )
        gone = trash(layout.image_dir(name), layout.staging)
        _sweep_orphan_layers(layout)
    remove_tree(gone)
    logger.debug("Removed image '%s'.", name)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerSource:
    """How to make one layer of a stack: its content key, where it comes from, and its builder."""

    key: str | None  # content key, e.g. an OCI diff_id; a stored layer with the same key is reused
    origin: str  # e.g. "pull docker.io/library/debian@sha256:... layer 2/5"
    build: Callable[[Path], None]  # fills an empty tree dir in overlay upper-dir format


def create_image_from_layers(
    layout: Layout,
    name: ImageName,
    *,
    origin: str,
    layers: Sequence[LayerSource],
    config: RunConfig | None = None,
) -> ImageRecord:
    """Publish a new image whose revision 0 is the given stack (bottom first), atomically; layers with a
    known key are shared.

    Layers are built outside the store lock (that is the slow part); publishing takes the lock once and
    re-checks which keys are stored by then, so two pulls sharing a layer never publish it twice.
    """
    prepare_store(layout)
    if not layers:
        raise ImageError(f"Image '{name}' would have no layers", hint="The source holds no layer.")
    refuse_existing_image(layout, name)

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
            refuse_existing_image(layout, name)
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
            created = time.time()
            revision = Revision(
                number=0, created=created, command=origin, layers=tuple(x.id for x in stack), config=config
            )
            image = ImageRecord(
                name=name, created=created, layers=tuple(stack), revisions=(revision,), current=0
            )
            save_json(image_dir / "image.json", image.to_json())
            image_dir.rename(layout.image_dir(name))
    logger.debug("Created image '%s' (%s).", name, origin)
    return image
