"""`veneer image import`: a root filesystem tarball, an OCI image layout (a directory or an oci-archive),
a `docker save`/`podman save` archive, or a raw disk image becomes a veneer image.

The format is found from the content, not the name: a disk image by its partition table (MBR or GPT) or
file system magic, an image archive by the names of its first members, anything else is a root
filesystem tarball. Image archives are unpacked with the safe extractor into a staging directory first;
every blob is checked against its digest and every layer against its diff_id before anything is
published, and layers keep their diff_id as key, so an import shares layers with pulled images.

A raw disk image is attached read-only through a loop device (its root partition only), mounted
read-only with nodev,nosuid,noexec under the staging directory, and copied with `copy_tree`; the mount
and the loop device go before the command returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import ImageName
from veneer.errors import CommandFailed, ImageError
from veneer.images import oci
from veneer.images.blobs import file_digest
from veneer.images.mstack import is_mstack, layer_builder, read_mstack
from veneer.images.runconfig import RunConfig, parse_run_config
from veneer.images.store import (
    ImageRecord,
    LayerSource,
    create_image,
    create_image_from_layers,
    refuse_existing_image,
)
from veneer.images.transfer import (
    DEFAULT_MAX_LAYER_BYTES,
    copy_tree,
    extract_image_layer,
    extract_tar,
    member_names,
)
from veneer.util.proc import run
from veneer.util.progress import QUIET, Progress
from veneer.util.staging import staging_dir

logger = logging.getLogger(__name__)

# Names that only image archives carry at their top level.
_IMAGE_ARCHIVE_NAMES = frozenset({"oci-layout", "index.json", "manifest.json", "repositories"})
_DOCKER_ID_RE = re.compile(r"[0-9a-f]{64}(?:\.tar|\.json|/.*)?")
_HEAD_MEMBERS = 16

# GPT partition types (https://uapi-group.org/specifications/specs/discoverable_partitions_specification/).
_GPT_ROOT = {
    "amd64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
    "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
    "386": "44479540-F297-41B2-9AF7-D131D5F0458A",
}
_GPT_LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
_MBR_LINUX = "83"


class SourceFormat(StrEnum):
    """What `veneer image import` found at SOURCE."""

    TAR = "tar"
    OCI_LAYOUT = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    DISK = "disk"
    MSTACK = "mstack"


_ARCHIVE_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh", b"\x28\xb5\x2f\xfd")


def _is_disk_image(head: bytes) -> bool:
    # Compressed data or a tar header could hold a partition table signature by chance: check them first.
    if head.startswith(_ARCHIVE_MAGIC) or head[257:262] == b"ustar":
        return False
    mbr = len(head) >= 512 and head[510:512] == b"\x55\xaa"
    gpt = head[512:520] == b"EFI PART"
    ext = head[0x438:0x43A] == b"\x53\xef"  # ext2/3/4 superblock magic at 1024+56
    xfs = head[:4] == b"XFSB"
    btrfs = head[0x10040:0x10048] == b"_BHRfS_M"
    return mbr or gpt or ext or xfs or btrfs


def detect_format(source: Path) -> SourceFormat:
    """The format of `source`, from its content."""
    if source.is_dir():
        if (source / "oci-layout").is_file() and (source / "index.json").is_file():
            return SourceFormat.OCI_LAYOUT
        if is_mstack(source):
            return SourceFormat.MSTACK
        raise ImageError(
            f"'{source}' is a directory but not an OCI image layout (no oci-layout and index.json) "
            "nor an mstack (no layer@ directories)",
            hint=f"For a root filesystem directory: 'veneer image create NAME --from-dir {source}'.",
        )
    try:
        with open(source, "rb") as f:
            head = f.read(0x10048)
    except OSError as e:
        raise ImageError(f"Cannot read '{source}': {e.strerror}", hint="Check the path.") from e
    if _is_disk_image(head):
        return SourceFormat.DISK
    try:
        names = member_names(source, limit=_HEAD_MEMBERS)
    except ImageError as e:
        raise ImageError(
            f"'{source}' is neither a tar archive nor a disk image ({e.message})",
            hint="veneer imports tarballs (plain, gz, xz, zst), OCI layouts and archives, docker-archive "
            "files and raw disk images.",
        ) from e
    tops = {name.strip("/").removeprefix("./") for name in names}
    if tops & _IMAGE_ARCHIVE_NAMES or any(
        t.startswith("blobs/") or t == "blobs" or _DOCKER_ID_RE.fullmatch(t) for t in tops
    ):
        # Which kind is known once unpacked (docker save writes both oci-layout and manifest.json).
        return SourceFormat.OCI_ARCHIVE if "oci-layout" in tops else SourceFormat.DOCKER_ARCHIVE
    return SourceFormat.TAR


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportSpec:
    """What `veneer image import` was asked for."""

    source: Path
    tag: str | None = None  # which image of a multi-image archive or layout
    platform: oci.Platform | None = None
    max_layer_bytes: int | None = None  # how long a layer's tar may be, decompressed (None: the default)


def import_image(
    layout: Layout, name: ImageName, spec: ImportSpec, *, progress: Progress = QUIET
) -> ImageRecord:
    """Import `spec.source` as the image `name`, reporting its phases and bytes into `progress`."""
    refuse_existing_image(layout, name)
    source = spec.source.absolute()
    kind = detect_format(source)
    logger.debug("'%s' is %s", source, kind)
    if kind is SourceFormat.TAR:
        return create_image(
            layout,
            name,
            origin=f"import {source}",
            build=lambda tree: extract_tar(source, tree, progress=progress),
        )
    if kind is SourceFormat.DISK:
        # The mount point lives in a staging dir of its own, never inside the layer being published.
        with staging_dir(layout.staging, layout.lock, f"disk-{name}") as scratch:
            return create_image(
                layout,
                name,
                origin=f"import disk image {source}",
                build=lambda tree: copy_disk(source, tree, mountpoint=scratch, progress=progress),
            )
    if kind is SourceFormat.OCI_LAYOUT:
        return _import_unpacked(
            layout, name, source, spec, origin=f"import OCI layout {source}", progress=progress
        )
    if kind is SourceFormat.MSTACK:
        return _import_mstack(layout, name, source)
    with staging_dir(layout.staging, layout.lock, f"import-{name}") as stage:
        unpacked = stage / "archive"
        unpacked.mkdir()
        extract_tar(source, unpacked, progress=progress)
        fmt = "oci-archive" if (unpacked / "oci-layout").is_file() else "docker-archive"
        return _import_unpacked(
            layout, name, unpacked, spec, origin=f"import {fmt} {source}", progress=progress
        )


def _import_unpacked(
    layout: Layout, name: ImageName, directory: Path, spec: ImportSpec, *, origin: str, progress: Progress
) -> ImageRecord:
    what = f"'{spec.source}'"
    progress.phase(f"Checking the blobs of '{spec.source.name}'")
    if (directory / "oci-layout").is_file() and (directory / "index.json").is_file():
        layers, config = oci_layout_layers(directory, tag=spec.tag, platform=spec.platform, what=what)
    elif (directory / "manifest.json").is_file():
        layers, config = docker_archive_layers(directory, tag=spec.tag, what=what)
    else:
        raise ImageError(
            f"{what} holds neither an OCI layout nor a docker-archive manifest.json",
            hint="Export it again with 'podman save' or 'skopeo copy ... oci-archive:FILE'.",
        )
    count = len(layers)
    sources = [
        LayerSource(
            key=diff_id,
            origin=f"{origin} layer {i + 1}/{count}",
            build=_builder(
                blob,
                diff_id,
                f"{i + 1}/{count}",
                spec.max_layer_bytes or DEFAULT_MAX_LAYER_BYTES,
                progress,
            ),
        )
        for i, (blob, diff_id) in enumerate(layers)
    ]
    return create_image_from_layers(layout, name, origin=origin, layers=sources, config=config)


def _import_mstack(layout: Layout, name: ImageName, source: Path) -> ImageRecord:
    stack = read_mstack(source)
    origin = f"import mstack {source}"
    sources = [
        LayerSource(key=layer.key, origin=f"{origin} {layer.name}", build=layer_builder(layer))
        for layer in stack
    ]
    # importctl pull-oci keeps the image's config beside the stack: NAME.oci-config for NAME.mstack.
    config_path = source.with_suffix(".oci-config")
    config = None
    if config_path.is_file() and not config_path.is_symlink():
        what = f"'{config_path}'"
        document = oci.load_json(config_path.read_bytes()[: oci.MAX_JSON + 1], what)
        config = parse_run_config(document.get("config"), what)
    return create_image_from_layers(layout, name, origin=origin, layers=sources, config=config)


def _builder(
    blob: Path, diff_id: str, position: str, max_bytes: int, progress: Progress
) -> Callable[[Path], None]:
    def build(tree: Path) -> None:
        extract_image_layer(
            blob, tree, diff_id=diff_id, position=position, max_bytes=max_bytes, progress=progress
        )

    return build


def _inside(directory: Path, relative: str, what: str) -> Path:
    """A regular file named by a manifest, below `directory` and reached through no symlink."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if relative.startswith("/") or ".." in parts or not parts:
        raise ImageError(f"{what} names the file '{relative}' outside the archive", hint="It is not safe.")
    path = directory
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise ImageError(f"{what} names '{relative}', which is a symlink", hint="It is not safe.")
    if not path.is_file():
        raise ImageError(f"{what} lacks '{relative}'", hint="The archive is incomplete; create it again.")
    return path


def _blob(directory: Path, descriptor: oci.Descriptor, what: str) -> Path:
    path = _inside(directory, f"blobs/sha256/{oci.digest_hex(descriptor.digest)}", what)
    if path.stat().st_size != descriptor.size or file_digest(path) != descriptor.digest:
        raise ImageError(
            f"{what}: blob {descriptor.digest} does not match its digest or size",
            hint="The image is damaged or was tampered with; nothing was imported.",
        )
    return path


def oci_layout_layers(
    directory: Path, *, tag: str | None, platform: oci.Platform | None, what: str
) -> tuple[list[tuple[Path, str]], RunConfig | None]:
    """(checked layer blob, diff_id) of the image chosen in an OCI layout, bottom first, and its run
    config."""
    index = oci.load_json(_inside(directory, "index.json", what).read_bytes(), f"{what} index.json")
    entries = oci.parse_index(index, what)
    raw = index.get("manifests") or []
    names = [
        str((e.get("annotations") or {}).get("org.opencontainers.image.ref.name", ""))
        for e in raw
        if isinstance(e, dict)
    ]
    if tag is not None:
        chosen = [e for e, n in zip(entries, names, strict=False) if n == tag or n.endswith(f":{tag}")]
        if not chosen:
            raise ImageError(
                f"{what} has no image tagged '{tag}' (it has: {', '.join(n for n in names if n) or 'none'})",
                hint="Pick one of those with --tag.",
            )
    else:
        chosen = list(entries)
    wanted = platform or oci.host_platform_of()
    if len(chosen) > 1:
        if any(e.platform for e in chosen):
            chosen = [oci.select_platform(tuple(chosen), wanted, what)]
        else:
            raise ImageError(
                f"{what} holds {len(chosen)} images",
                hint=f"Pick one with --tag ({', '.join(n for n in names if n) or 'untagged'}).",
            )
    if not chosen:
        raise ImageError(f"{what} holds no image", hint="Export it again.")
    entry = chosen[0]
    document = oci.load_json(_blob(directory, entry, what).read_bytes(), what)
    if oci.media_type_of(document, entry.media_type) in oci.INDEX_TYPES:
        entry = oci.select_platform(oci.parse_index(document, what), wanted, what)
        document = oci.load_json(_blob(directory, entry, what).read_bytes(), what)
    manifest = oci.parse_manifest(document, what)
    config = oci.parse_config(_blob(directory, manifest.config, what).read_bytes(), f"The config of {what}")
    oci.check_layers(manifest, config, what)
    layers = [
        (_blob(directory, layer, what), d) for layer, d in zip(manifest.layers, config.diff_ids, strict=True)
    ]
    return layers, config.run


def docker_archive_layers(
    directory: Path, *, tag: str | None, what: str
) -> tuple[list[tuple[Path, str]], RunConfig | None]:
    """(checked layer file, diff_id) of the image chosen in an unpacked `docker save` archive, and its run
    config."""
    data = json.loads(_inside(directory, "manifest.json", what).read_bytes())
    if not isinstance(data, list) or not data or not all(isinstance(e, dict) for e in data):
        raise ImageError(f"{what} has an invalid manifest.json", hint="Export it again.")
    tags = [t for entry in data for t in entry.get("RepoTags") or []]
    if tag is not None:
        entries = [
            e for e in data if any(t == tag or t.endswith(f":{tag}") for t in e.get("RepoTags") or [])
        ]
        if not entries:
            raise ImageError(
                f"{what} has no image tagged '{tag}' (it has: {', '.join(tags) or 'none'})",
                hint="Pick one of those with --tag.",
            )
    else:
        entries = data
    if len(entries) > 1:
        raise ImageError(
            f"{what} holds {len(entries)} images", hint=f"Pick one with --tag ({', '.join(tags)})."
        )
    entry = entries[0]
    config_path = _inside(directory, str(entry.get("Config", "")), what)
    config = oci.parse_config(config_path.read_bytes(), f"The config of {what}")
    expected = config_path.name.removesuffix(".json")
    if re.fullmatch(r"[0-9a-f]{64}", expected) and file_digest(config_path) != f"sha256:{expected}":
        raise ImageError(
            f"{what}: the config does not match its digest",
            hint="The image is damaged or was tampered with; nothing was imported.",
        )
    layers = [_inside(directory, str(p), what) for p in entry.get("Layers") or []]
    if len(layers) != len(config.diff_ids) or not layers:
        raise ImageError(
            f"{what} names {len(layers)} layers but its config {len(config.diff_ids)}",
            hint="Export it again.",
        )
    # Each layer is checked against its diff_id while it is applied (docker-archive layers are plain tar).
    return list(zip(layers, config.diff_ids, strict=True)), config.run


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    start: int  # bytes
    size: int  # bytes
    type: str
    node: str


def parse_partitions(sfdisk_json: str) -> list[Partition]:
    """The partitions in `sfdisk --json` output."""
    table = json.loads(sfdisk_json)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return [
        Partition(
            start=int(p["start"]) * sector, size=int(p["size"]) * sector, type=str(p["type"]), node=p["node"]
        )
        for p in table.get("partitions", [])
    ]


def choose_root(partitions: list[Partition], *, architecture: str) -> Partition | None:
    """The root partition: the discoverable root type of this architecture, else the largest Linux one."""
    for p in partitions:
        if p.type.upper() == _GPT_ROOT.get(architecture):
            return p
    linux = [
        p
        for p in partitions
        if p.type.upper() in (_GPT_LINUX_DATA, *_GPT_ROOT.values()) or p.type == _MBR_LINUX
    ]
    return max(linux, key=lambda p: p.size) if linux else None


@contextlib.contextmanager
def _loop_device(image: Path, *, offset: int, size: int | None) -> Iterator[str]:
    argv = ["losetup", "--find", "--show", "--read-only", "--offset", str(offset)]
    if size is not None:
        argv += ["--sizelimit", str(size)]
    try:
        device = run([*argv, image], capture=True).stdout.strip()
    except CommandFailed as e:
        raise ImageError(
            f"Cannot attach '{image}' to a loop device: {e.message}",
            hint="Check that the loop module is loaded (modprobe loop) and that you are root.",
        ) from e
    try:
        yield device
    finally:
        run(["losetup", "--detach", device], check=False, capture=True)


def copy_disk(image: Path, tree: Path, *, mountpoint: Path, progress: Progress = QUIET) -> None:
    """Copy the root file system of a raw disk image (partitioned or not) into `tree`, mounting it
    read-only on the empty directory `mountpoint` meanwhile."""
    result = run(["sfdisk", "--json", image], check=False, capture=True)
    offset, size = 0, None
    if result.returncode == 0 and result.stdout.strip():
        partitions = parse_partitions(result.stdout)
        root = choose_root(partitions, architecture=oci.host_platform_of().architecture)
        if root is None:
            raise ImageError(
                f"'{image}' has no Linux root partition ({len(partitions)} partitions)",
                hint="veneer looks for a GPT root or Linux data partition, or an MBR type 83 partition.",
            )
        offset, size = root.start, root.size
        logger.debug("Root partition of '%s': %s", image, root)
    with _loop_device(image, offset=offset, size=size) as device:
        try:
            run(["mount", "-o", "ro,nodev,nosuid,noexec", device, mountpoint], capture=True)
        except CommandFailed as e:
            raise ImageError(
                f"Cannot mount the root file system of '{image}': {e.message}",
                hint="Check that it holds a file system this kernel knows (ext4, xfs, btrfs).",
            ) from e
        try:
            progress.phase(f"Copying the root file system of '{image.name}'")
            copy_tree(mountpoint, tree)
        finally:
            run(["umount", mountpoint], check=False, capture=True)
