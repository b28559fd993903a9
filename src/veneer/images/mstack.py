"""systemd's own overlay machines: `.mstack` directories (systemd.mstack(7), systemd ≥ 260), both ways.

An mstack is a directory whose entries name their role: `layer@ID/` directories are the lower layers,
sorted by a version sort of ID (first = bottom), and `rw/` is the writable top, `rw/data` the upper dir and
`rw/work` overlayfs's work dir. systemd mounts the stack with the `userxattr` option (`src/shared/mstack.c`),
so its opaque directories carry `user.overlay.opaque`, where veneer's layers, mounted by root without that
option, carry `trusted.overlay.opaque`; whiteouts are 0/0 character devices in both. This module renames
the attributes as trees cross over, and moves owners between ranges:

- veneer's layers hold image ids (0-65535) and a machine's upper dir its own range; an exported mstack
  holds systemd's foreign UID range (0x7FFE0000 + image id) throughout, which nspawn maps into a user
  namespace of its own with `--private-users=managed` (nspawn refuses an mstack with any other user
  namespacing but none), or image ids on request, for `--private-users=no`.
- an imported mstack may hold image ids or systemd's foreign UID range (0x7FFE0000 onwards, what
  systemd's unprivileged tools write); the foreign range is moved back to image ids. Any other owner
  outside 0-65535 is refused: the image would carry host ids.

An imported layer that is a symlink to a directory named by a digest (importctl pull-oci links
`layer@N` to `../.oci-sha256:HEX`, HEX the layer blob's digest, the layer's diff_id when uncompressed)
gets that digest as its content key, so images imported from mstacks sharing a layer share it too.
Whiteouts written as attributes (what unprivileged tools make on Linux 6.7+) become 0/0 devices, which
every kernel veneer supports reads.
Imports are as hostile as any archive: `transfer.copy_tree` refuses device nodes outside dev/.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from veneer.config.settings import UID_RANGE_SIZE
from veneer.errors import ImageError
from veneer.images.transfer import copy_tree
from veneer.machines.idshift import shift_ownership

logger = logging.getLogger(__name__)

FOREIGN_UID_BASE = 0x7FFE0000  # systemd's foreign UID range (docs/UIDS-GIDS.md)
LAYER_PREFIX = "layer@"
TRUSTED_OVERLAY = "trusted.overlay."
USER_OVERLAY = "user.overlay."
# How importctl pull-oci names the layer directories its mstacks link to (`.oci-sha256:HEX`).
_DIGEST_NAME_RE = re.compile(r"(?:\.oci-)?sha256[-:_]([0-9a-f]{64})")
WHITEOUT_XATTR = "trusted.overlay.whiteout"  # Linux 6.7+: a whiteout as an empty file with this attribute
WHITEOUTS_XATTR = "trusted.overlay.whiteouts"  # ... in a directory marked with this one


def version_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key close to systemd's `strverscmp_improved()`: digit runs compare as numbers."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|\D+", text))


def rename_overlay_xattrs(tree: Path, *, source: str, target: str) -> None:
    """Rename the overlayfs attributes under `tree` (itself included) from prefix `source` to `target`."""
    paths = [tree]
    for dirpath, dirnames, filenames in os.walk(tree):
        paths += [Path(dirpath, name) for name in dirnames + filenames]
    for path in paths:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            continue
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith(source):
                value = os.getxattr(path, name, follow_symlinks=False)
                os.setxattr(path, target + name.removeprefix(source), value, follow_symlinks=False)
                os.removexattr(path, name, follow_symlinks=False)


class MstackOwner(StrEnum):
    """Whose ids an exported mstack holds (`export --owner`)."""

    # systemd's foreign UID range: what `systemd-nspawn --mstack=DIR --private-users=managed` boots in a
    # user namespace of its own (nspawn 262 refuses an mstack with any other user namespacing).
    FOREIGN = "foreign"
    # Image ids 0-65535: for `--private-users=no`, container root being host root.
    IMAGE = "image"

    def base(self) -> int:
        return FOREIGN_UID_BASE if self is MstackOwner.FOREIGN else 0


def write_mstack(
    layers: Sequence[Path], upper: Path | None, dest: Path, *, uid_base: int | None, owner: MstackOwner
) -> None:
    """Fill the empty directory `dest` as an mstack owned as `owner` says: copies of `layers` (bottom
    first, image ids) and of `upper`, a machine's upper dir owned in the range at `uid_base` (None: image
    ids), as `rw/data`, with an empty `rw/work`."""
    base = owner.base()
    width = len(str(max(len(layers) - 1, 0)))
    for index, tree in enumerate(layers):
        target = dest / f"{LAYER_PREFIX}{index:0{width}d}"
        _copy_layer(tree, target, source=TRUSTED_OVERLAY, target_prefix=USER_OVERLAY)
        shift_ownership(target, 0, base)
    rw = dest / "rw"
    rw.mkdir(mode=0o755)
    data = rw / "data"
    if upper is None:
        data.mkdir(mode=0o755)
    else:
        _copy_layer(upper, data, source=TRUSTED_OVERLAY, target_prefix=USER_OVERLAY)
    shift_ownership(data, 0 if uid_base is None else uid_base, base)
    (rw / "work").mkdir(mode=0o755)
    for path in (rw, rw / "work"):
        os.chown(path, base, base)


def _copy_layer(tree: Path, target: Path, *, source: str, target_prefix: str) -> None:
    target.mkdir(mode=0o755)
    copy_tree(tree, target, allow_whiteouts=True)
    rename_overlay_xattrs(target, source=source, target=target_prefix)


@dataclass(frozen=True, slots=True, kw_only=True)
class StackLayer:
    """One layer of an mstack being imported: where it is, and its content key if its name gives one."""

    path: Path
    key: str | None
    name: str


def is_mstack(path: Path) -> bool:
    """Whether `path` is a directory laid out as an mstack."""
    if not path.is_dir():
        return False
    if path.name.endswith(".mstack"):
        return True
    return any(p.name.startswith(LAYER_PREFIX) for p in path.iterdir())


def read_mstack(path: Path) -> list[StackLayer]:
    """The layers of the mstack at `path`, bottom first: its `layer@` directories, then `rw/data` if it
    holds anything. DDI layers (`.raw`), binds and `root/` are refused: veneer images are directory trees."""
    what = f"'{path}'"
    layers: list[tuple[str, StackLayer]] = []
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith(LAYER_PREFIX) and not name.endswith((".raw", ".v")):
            if not entry.is_dir():
                raise ImageError(f"{what}: '{name}' is not a directory", hint="It is not an mstack layer.")
            layers.append(
                (name.removeprefix(LAYER_PREFIX), StackLayer(path=entry, key=_key(entry), name=name))
            )
        elif name == "rw":
            continue
        else:
            raise ImageError(
                f"{what} holds '{name}', which veneer does not import",
                hint="veneer imports mstacks of layer@ directories and an rw/ directory (no DDIs, binds or "
                "root/).",
            )
    if not layers:
        raise ImageError(f"{what} holds no layer@ directory", hint="Is it an mstack (systemd.mstack(7))?")
    stack = [layer for _, layer in sorted(layers, key=lambda item: version_key(item[0]))]
    data = path / "rw" / "data"
    if data.is_dir() and not data.is_symlink() and any(data.iterdir()):
        stack.append(StackLayer(path=data, key=None, name="rw/data"))
    return stack


def _key(entry: Path) -> str | None:
    if not entry.is_symlink():
        return None
    match = _DIGEST_NAME_RE.fullmatch(Path(os.readlink(entry)).name)
    return f"sha256:{match.group(1)}" if match else None


def layer_builder(layer: StackLayer) -> Callable[[Path], None]:
    """Fills a new veneer layer tree from an mstack layer: attributes renamed, owners in image ids."""

    def build(tree: Path) -> None:
        logger.info("Copying mstack layer %s", layer.name)
        copy_tree(layer.path.resolve(), tree, allow_whiteouts=True)
        rename_overlay_xattrs(tree, source=USER_OVERLAY, target=TRUSTED_OVERLAY)
        _device_whiteouts(tree)
        if tree.stat().st_uid >= FOREIGN_UID_BASE:
            shift_ownership(tree, FOREIGN_UID_BASE, 0)
        _check_owners(tree, layer.name)

    return build


def _device_whiteouts(tree: Path) -> None:
    for dirpath, _, filenames in os.walk(tree):
        with contextlib.suppress(OSError):
            os.removexattr(dirpath, WHITEOUTS_XATTR, follow_symlinks=False)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or WHITEOUT_XATTR not in os.listxattr(
                path, follow_symlinks=False
            ):
                continue
            os.unlink(path)
            os.mknod(path, stat.S_IFCHR | 0o000, 0)
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def _check_owners(tree: Path, name: str) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for entry in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
            st = os.lstat(entry)
            if st.st_uid >= UID_RANGE_SIZE or st.st_gid >= UID_RANGE_SIZE:
                raise ImageError(
                    f"mstack layer {name}: '{os.path.relpath(entry, tree)}' is owned by "
                    f"{st.st_uid}:{st.st_gid}, outside 0-{UID_RANGE_SIZE - 1} and the foreign range",
                    hint="Chown the layer into image ids (0-65535) or systemd's foreign range first.",
                )
