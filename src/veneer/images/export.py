"""`veneer image export` and `veneer export`: images and machines leave veneer in formats other tools read.

- `tar`: the merged root filesystem of an image revision (or of a machine) as one tarball, compressed by
  the name of DEST (.gz, .xz, .zst; else plain).
- `oci` (a directory), `oci-archive` (that directory as a tar) and `docker-archive` (`docker save`
  format): one image layer per veneer layer, overlayfs whiteouts written as OCI whiteouts (`.wh.NAME`,
  `.wh..wh..opq`), so `podman load` and `skopeo` read them and shared layers stay shared.

The merged view of several layers is a read-only overlay mount in a staging dir; a machine's upper dir
joins it as the topmost lower (refused while the machine is mounted), and ids from the machine's range
are written as the ids the guest saw. DEST is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import stat
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from veneer.config.layout import Layout
from veneer.config.uidrange import to_image_id
from veneer.errors import CommandFailed, ImageError
from veneer.images import oci
from veneer.images.runconfig import RunConfig
from veneer.images.store import load_image
from veneer.overlay.layers import OPAQUE_XATTR, is_whiteout
from veneer.overlay.mount import overlay_options
from veneer.util.fs import random_hex, remove_tree
from veneer.util.proc import run
from veneer.util.progress import QUIET, Progress
from veneer.util.staging import staging_dir

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_KEPT_XATTRS = ("security.capability", "user.")
_DEFAULT_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ExportFormat(StrEnum):
    """What `export --format` writes."""

    TAR = "tar"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what passes through to `target`."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha256.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256.hexdigest()}"


def add_tree(
    tf: tarfile.TarFile,
    root: Path,
    *,
    layer: bool,
    uid_base: int | None = None,
    progress: Progress = QUIET,
    what: str = "",
) -> None:
    """Add everything below `root` (not `root` itself) to `tf`, in sorted order.

    Args:
        layer: `root` is a layer tree: write its whiteouts and opaque directories in OCI form.
        uid_base: ids in [uid_base, uid_base+65536) are written as seen inside that user namespace.
        progress: gets the phase `what` with the bytes of the files in `root` as total, then the bytes
            written so far.
    """
    if what:
        progress.phase(what, total=_content_bytes(root))
    done = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        relative_dir = os.path.relpath(dirpath, root)
        prefix = "" if relative_dir == "." else relative_dir + "/"
        if layer and prefix and _is_opaque(dirpath):
            tf.addfile(_empty_member(prefix + ".wh..wh..opq"))
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if is_whiteout(st):
                # In a merged tree a whiteout (left in a single bottom layer) hides nothing: leave it out.
                if layer:
                    tf.addfile(_empty_member(prefix + ".wh." + name))
                continue
            if stat.S_ISSOCK(st.st_mode):
                logger.debug("Not exporting the socket '%s', ignoring.", path)
                continue
            info = tf.gettarinfo(path, prefix + name)
            info.uid, info.gid = to_image_id(st.st_uid, uid_base), to_image_id(st.st_gid, uid_base)
            info.uname = info.gname = ""
            info.pax_headers = _xattrs(path, st)
            if info.isreg():
                with open(path, "rb") as f:
                    tf.addfile(info, f)
                done += st.st_size
                progress.advance(done)
            else:
                tf.addfile(info)


def _content_bytes(root: Path) -> int:
    """The bytes of the regular files below `root`: what writing it as a tar takes longest over."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _empty_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _xattrs(path: str, st: os.stat_result) -> dict[str, str]:
    if stat.S_ISLNK(st.st_mode):
        return {}
    headers = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    for name in names:
        if name.startswith(_KEPT_XATTRS):
            value = os.getxattr(path, name, follow_symlinks=False)
            headers[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return headers


@contextlib.contextmanager
def merged_view(layout: Layout, lowers: Sequence[Path], what: str) -> Iterator[Path]:
    """The union of `lowers` (bottom first), read-only: the tree itself for one, else an overlay mount."""
    if len(lowers) == 1:
        yield lowers[0]
        return
    with staging_dir(layout.staging, layout.lock, "export") as stage:
        target = stage / "merged"
        target.mkdir()
        options = "ro," + overlay_options(lowers, upper=None, work=None)
        try:
            run(["mount", "-t", "overlay", "overlay", "-o", options, target], capture=True)
        except CommandFailed as e:
            raise ImageError(f"Cannot mount the layers of {what}: {e.message}", hint="See dmesg.") from e
        try:
            yield target
        finally:
            run(["umount", target], check=False, capture=True)


@contextlib.contextmanager
def replacing(dest: Path, *, directory: bool) -> Iterator[Path]:
    """A temporary path next to `dest`, renamed to `dest` if the block succeeds, removed otherwise."""
    if dest.exists() or dest.is_symlink():
        raise ImageError(f"'{dest}' exists already", hint="Choose a new destination, or remove it first.")
    if not dest.parent.is_dir():
        raise ImageError(f"Cannot write '{dest}': no directory '{dest.parent}'", hint="Create it first.")
    tmp = dest.parent / f".{dest.name}.{random_hex(4)}.tmp"
    if directory:
        tmp.mkdir(mode=0o755)
    try:
        yield tmp
        os.rename(tmp, dest)
    except BaseException:
        if directory:
            remove_tree(tmp)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def _open_compressed(raw: IO[bytes], name: str, stack: contextlib.ExitStack) -> IO[bytes]:
    stream: Any = raw
    if name.endswith((".gz", ".tgz")):
        stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0))
    elif name.endswith((".xz", ".txz")):
        import lzma

        stream = stack.enter_context(lzma.LZMAFile(raw, "wb"))
    elif name.endswith((".zst", ".tzst")):
        import zstandard  # Lazily: importing veneer must stay cheap.

        stream = stack.enter_context(zstandard.ZstdCompressor().stream_writer(raw, closefd=False))
    return stream  # type: ignore[no-any-return]


def write_rootfs_tar(
    root: Path, dest: Path, *, uid_base: int | None = None, progress: Progress = QUIET
) -> None:
    """The tree `root` as a root filesystem tarball at `dest` (compressed by its name)."""
    with replacing(dest, directory=False) as tmp, open(tmp, "wb") as raw, contextlib.ExitStack() as stack:
        out = _open_compressed(raw, dest.name, stack)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            add_tree(
                tf, root, layer=False, uid_base=uid_base, progress=progress, what=f"Writing '{dest.name}'"
            )
        stack.close()
        raw.flush()
        os.fsync(raw.fileno())


@dataclass(frozen=True, slots=True, kw_only=True)
class _Blob:
    digest: str
    size: int
    diff_id: str


def _write_layers(layers: Sequence[Path], blobs: Path, *, compress: bool, progress: Progress) -> list[_Blob]:
    count = len(layers)
    return [
        _write_layer(tree, blobs, compress=compress, progress=progress, what=f"Writing layer {i}/{count}")
        for i, tree in enumerate(layers, 1)
    ]


def _write_layer(tree: Path, blobs: Path, *, compress: bool, progress: Progress, what: str) -> _Blob:
    """Write one layer tree as a tar (gzip if `compress`) blob named by its digest in `blobs`."""
    tmp = blobs / f".layer-{random_hex(4)}.tmp"
    with open(tmp, "wb") as raw:
        outer = _HashingWriter(raw)
        with contextlib.ExitStack() as stack:
            stream: Any = outer
            if compress:
                stream = stack.enter_context(
                    gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=6, mtime=0)
                )
            inner = _HashingWriter(stream)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                add_tree(tf, tree, layer=True, progress=progress, what=what)
    blob = _Blob(digest=outer.digest, size=outer.size, diff_id=inner.digest)
    os.rename(tmp, blobs / oci.digest_hex(blob.digest))
    return blob


def _write_json_blob(blobs: Path, document: dict[str, Any]) -> tuple[str, int]:
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    (blobs / oci.digest_hex(digest)).write_bytes(data)
    return digest, len(data)


def _config(diff_ids: Sequence[str], history: Sequence[str], run: RunConfig | None) -> dict[str, Any]:
    platform = oci.host_platform_of()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config: dict[str, Any] = {
        "created": created,
        "architecture": platform.architecture,
        "os": platform.os,
        # The image's own run config, so that other runtimes run it as it ran here; a system image
        # made by veneer gets a shell.
        "config": run.to_oci() if run is not None else {"Env": [_DEFAULT_ENV], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": created, "created_by": h} for h in history],
    }
    if platform.variant:
        config["variant"] = platform.variant
    return config


def write_oci_layout(
    layers: Sequence[Path],
    history: Sequence[str],
    dest: Path,
    *,
    ref_name: str,
    run: RunConfig | None = None,
    progress: Progress = QUIET,
) -> None:
    """Write the layer trees as one image in a new OCI image layout directory `dest`."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    written = _write_layers(layers, blobs, compress=True, progress=progress)
    document = _config([b.diff_id for b in written], history, run)
    config_digest, config_size = _write_json_blob(blobs, document)
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": b.digest, "size": b.size} for b in written],
    }
    manifest_digest, manifest_size = _write_json_blob(blobs, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [
            {
                "mediaType": oci.OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def write_docker_archive(
    layers: Sequence[Path],
    history: Sequence[str],
    dest: Path,
    *,
    repo_tag: str,
    run: RunConfig | None = None,
    progress: Progress = QUIET,
) -> None:
    """Write the layer trees as a `docker save` archive (uncompressed layers) to the file `dest`."""
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(_scratch_dir(dest.parent)))
        written = _write_layers(layers, scratch, compress=False, progress=progress)
        progress.phase(f"Writing '{dest.name}'")
        config_digest, _ = _write_json_blob(scratch, _config([b.diff_id for b in written], history, run))
        config_name = f"{oci.digest_hex(config_digest)}.json"
        layer_names = [f"{oci.digest_hex(b.diff_id)}.tar" for b in written]
        manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]
        with (
            replacing(dest, directory=False) as tmp,
            tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf,
        ):
            tf.add(scratch / oci.digest_hex(config_digest), arcname=config_name)
            for blob, name in zip(written, layer_names, strict=True):
                if name not in tf.getnames():
                    tf.add(scratch / oci.digest_hex(blob.digest), arcname=name)
            data = json.dumps(manifest).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tf.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def _scratch_dir(parent: Path) -> Iterator[Path]:
    path = parent / f".veneer-export-{random_hex(4)}.tmp"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        remove_tree(path)


def write_oci_archive(
    layers: Sequence[Path],
    history: Sequence[str],
    dest: Path,
    *,
    ref_name: str,
    run: RunConfig | None = None,
    progress: Progress = QUIET,
) -> None:
    """An OCI image layout, as an (uncompressed) tar file `dest`."""
    with _scratch_dir(dest.parent) as scratch:
        layout_dir = scratch / "layout"
        write_oci_layout(layers, history, layout_dir, ref_name=ref_name, run=run, progress=progress)
        progress.phase(f"Writing '{dest.name}'")
        with (
            replacing(dest, directory=False) as tmp,
            tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf,
        ):
            for name in sorted(os.listdir(layout_dir)):
                tf.add(layout_dir / name, arcname=name)


def export_image(
    layout: Layout,
    name: str,
    dest: Path,
    *,
    fmt: ExportFormat,
    revision: int | None = None,
    tag: str | None = None,
    progress: Progress = QUIET,
) -> None:
    """Export an image revision (default: the latest) to `dest` in `fmt`, reporting into `progress`."""
    image = load_image(layout, name)
    number = image.latest if revision is None else revision
    layers = image.layers_of(number)
    run = image.config_of(number)
    trees = [layout.layer_tree(layer.id) for layer in layers]
    history = [layer.origin for layer in layers]
    dest = dest.absolute()
    reference = tag or f"localhost/{name}:latest"
    if fmt is ExportFormat.TAR:
        with merged_view(layout, trees, f"image '{name}'") as root:
            write_rootfs_tar(root, dest, progress=progress)
    elif fmt is ExportFormat.OCI:
        with replacing(dest, directory=True) as tmp:
            write_oci_layout(trees, history, tmp, ref_name=reference, run=run, progress=progress)
    elif fmt is ExportFormat.OCI_ARCHIVE:
        write_oci_archive(trees, history, dest, ref_name=reference, run=run, progress=progress)
    else:
        write_docker_archive(trees, history, dest, repo_tag=reference, run=run, progress=progress)
    logger.debug("Exported image '%s' to '%s' (%s).", name, dest, fmt)
