"""Overlay mounts of layer chains: option builders, mount/unmount, mountinfo, and whiteout helpers.

Owns the overlay mount of a machine: lowers (bottom→top, as in the layer model), optionally idmapped so
that ids 0..65535 of the base image show as uid_base..uid_base+65535, plus an upper and a work dir.
The pure builders (`overlay_fsconfig()`, `overlay_options()`, `parse_mountinfo()`) are unit-tested;
the syscalls live in `idmap.py`. Must not run commands, know about machines or images, or log above
debug; failures are raised as `MountError` with a hint.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from veneer.errors import MountError
from veneer.overlay import idmap
from veneer.util.mountinfo import MountInfo, load_mountinfo, parse_super_options

logger = logging.getLogger(__name__)

# The kernel's overlayfs documentation ("Changes to underlying filesystems") allows offline changes
# to lower trees only if the "index", "metacopy", "xino" and "redirect_dir" features were never used
# on the upper. veneer moves a machine's upper onto a new base revision while it is unmounted, so all
# four are off explicitly: their defaults come from the kernel config and module parameters
# (/sys/module/overlay/parameters). redirect_dir=off means "never create redirects".
OVERLAY_FEATURES_OFF = ("index", "metacopy", "redirect_dir", "xino")

# fsconfig(2) copies a string value with strndup_user(value, 256): longer values fail with EINVAL.
FSCONFIG_VALUE_MAX = 255

# "lowerdir+" (one fsconfig call per layer, no option string to overflow) exists since Linux 6.8.
LOWERDIR_ADD_SINCE = (6, 8)
# A "lowerdir+" given as a file descriptor exists since Linux 6.13, one of a detached mount (an idmapped
# clone that is mounted nowhere) since 6.15.
LAYER_MOUNT_FDS_SINCE = (6, 15)


def _check_absolute(path: Path, what: str) -> None:
    if not path.is_absolute():
        raise MountError(f"The overlay {what} '{path}' is not an absolute path", hint="Pass absolute paths.")


def _check_upper_work(upper: Path | None, work: Path | None) -> None:
    if (upper is None) != (work is None):
        raise MountError(
            "An overlay needs both an upper and a work directory, or neither",
            hint="Pass upper and work together (work must be an empty directory on the upper's filesystem).",
        )


def escape_option_path(path: Path) -> str:
    """Escape `\\`, `,` and `:` with a backslash, as overlayfs unescapes option paths (and nspawn does)."""
    return re.sub(r"([\\,:])", r"\\\1", os.fspath(path))


def overlay_options(lowers: Sequence[Path], *, upper: Path | None, work: Path | None) -> str:
    """The mount(2) option string for an overlay of `lowers` (given bottom→top).

    Paths are escaped with `escape_option_path()`. The string must stay below the page size, so this
    suits only a few layers; `overlay_fsconfig()` has no such limit.
    """
    if not lowers:
        raise MountError("An overlay needs at least one lower layer")
    _check_upper_work(upper, work)
    # overlayfs stacks lowerdir= from right to left: the topmost layer comes first.
    options = ["lowerdir=" + ":".join(escape_option_path(p) for p in reversed(lowers))]
    if upper is not None and work is not None:
        options += [f"upperdir={escape_option_path(upper)}", f"workdir={escape_option_path(work)}"]
    options += [f"{feature}=off" for feature in OVERLAY_FEATURES_OFF]
    return ",".join(options)


def overlay_fsconfig(
    lowers: Sequence[Path | int], *, upper: Path | None, work: Path | None
) -> tuple[tuple[str, str | int], ...]:
    """The fsconfig(2) parameters, in order, for an overlay of `lowers` (given bottom→top): strings, and
    file descriptors where a lower is one (a detached mount of the layer, Linux 6.15+).

    Each lower is one "lowerdir+" (Linux 6.8+), which takes the path verbatim, so ':' and ',' need no
    escaping and any number of layers fits. "upperdir" and "workdir" are still unescaped by the kernel
    (`ovl_mount_dir()`), so a backslash in them is doubled.
    """
    if not lowers:
        raise MountError("An overlay needs at least one lower layer")
    _check_upper_work(upper, work)
    # Each "lowerdir+" appends below the layers given before it: the topmost layer comes first.
    params: list[tuple[str, str | int]] = [
        ("lowerdir+", p if isinstance(p, int) else os.fspath(p)) for p in reversed(lowers)
    ]
    if upper is not None and work is not None:
        params += [
            ("upperdir", os.fspath(upper).replace("\\", "\\\\")),
            ("workdir", os.fspath(work).replace("\\", "\\\\")),
        ]
    params += [(feature, "off") for feature in OVERLAY_FEATURES_OFF]
    for key, value in params:
        if isinstance(value, str) and len(os.fsencode(value)) > FSCONFIG_VALUE_MAX:
            raise MountError(
                f"The overlay {key} path '{value}' is longer than {FSCONFIG_VALUE_MAX} bytes",
                hint="fsconfig(2) limits each value to 255 bytes; use a shorter state directory.",
            )
    return tuple(params)


def parse_kernel_release(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as "6.18.44-fc"; (0, 0) if unparsable."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def supports_lowerdir_add(release: str) -> bool:
    """Whether the overlayfs of kernel `release` takes one "lowerdir+" fsconfig parameter per layer."""
    return parse_kernel_release(release) >= LOWERDIR_ADD_SINCE


def supports_layer_mount_fds(release: str) -> bool:
    """Whether the overlayfs of kernel `release` takes a layer as the fd of a detached mount."""
    return parse_kernel_release(release) >= LAYER_MOUNT_FDS_SINCE


def overlay_using(path: Path, mounts: Sequence[MountInfo] | None = None) -> str | None:
    """The mount point of an overlay whose upperdir or workdir is `path`, or None."""
    where = _canonical(path)
    for m in load_mountinfo() if mounts is None else mounts:
        if m.fstype != "overlay":
            continue
        for key, value in parse_super_options(m.super_options):
            # overlayfs shows upperdir and workdir as they were given, i.e. still backslash-escaped.
            value = re.sub(r"\\(.)", r"\1", value)
            if key in ("upperdir", "workdir") and value and _canonical(Path(value)) == where:
                return m.mount_point
    return None


def _canonical(path: Path) -> str:
    return os.path.realpath(path)


def is_mounted(target: Path) -> bool:
    """Whether something is mounted on `target` (compared after resolving symlinks)."""
    where = _canonical(target)
    return any(m.mount_point == where for m in load_mountinfo())


def _hint_for(e: OSError) -> str:
    if e.errno == errno.EBUSY:
        return "The upper or work directory is in use by another overlay mount; is the machine running?"
    if e.errno in (errno.ENOSYS, errno.EPERM):
        return "Run as root on Linux 5.12 or newer (the new mount API and idmapped mounts)."
    if e.errno == errno.ENOENT:
        return "Check that every layer, the upper and the work directory exist."
    return "See the kernel log (dmesg) for the overlayfs message."


def _mount_fsconfig(params: Sequence[tuple[str, str | int]], target: Path) -> None:
    fs = idmap.fsopen("overlay")
    try:
        try:
            for key, value in params:
                if isinstance(value, int):
                    idmap.fsconfig_set_fd(fs, key, value)
                else:
                    idmap.fsconfig_set_string(fs, key, value)
            idmap.fsconfig_create(fs, name=target)
        except OSError as e:
            # overlayfs explains most rejections only in the context's message queue.
            if messages := idmap.fs_messages(fs):
                raise OSError(e.errno, f"{e.strerror} ({'; '.join(messages)})") from None
            raise
        # nodev: a device node in an image must never open a host device from inside a machine (nspawn
        # mounts the machine's own /dev over this one).
        tree = idmap.fsmount(fs, attr_flags=idmap.MOUNT_ATTR_NODEV, name=target)
        try:
            idmap.move_mount(tree, target)
        finally:
            os.close(tree)
    finally:
        os.close(fs)


MS_NODEV = 0x4


def _mount_legacy(options: str, target: Path) -> None:
    # mount(2) copies at most one page of options; the kernel would silently truncate a longer string.
    if len(os.fsencode(options)) >= os.sysconf("SC_PAGE_SIZE"):
        raise OSError(errno.E2BIG, f"mount '{target}': overlay options longer than a page")
    idmap.mount("overlay", target, "overlay", flags=MS_NODEV, data=options)


def _mount_plain(lowers: Sequence[Path], target: Path, *, upper: Path, work: Path) -> None:
    if supports_lowerdir_add(os.uname().release):
        _mount_fsconfig(overlay_fsconfig(lowers, upper=upper, work=work), target)
    else:
        _mount_legacy(overlay_options(lowers, upper=upper, work=work), target)


def _detach_all(mounts: Sequence[Path]) -> None:
    for path in reversed(mounts):
        try:
            idmap.umount2(path, idmap.MNT_DETACH)
        except OSError as e:
            logger.debug("Failed to detach '%s': %s, ignoring.", path, e.strerror)


def _remove_dirs(dirs: Sequence[Path]) -> None:
    for path in reversed(dirs):
        try:
            path.rmdir()
        except OSError as e:
            logger.debug("Failed to remove '%s': %s, ignoring.", path, e.strerror)


def mount_overlay(
    lowers: Sequence[Path],
    target: Path,
    *,
    upper: Path,
    work: Path,
    uid_base: int | None,
    scratch: Path,
) -> None:
    """Mount an overlay of `lowers` (bottom→top) with `upper` and `work` on the directory `target`.

    With `uid_base`, each lower is first cloned read-only and idmapped (0..65535 shown as
    uid_base..uid_base+65535): on Linux 6.15+ overlayfs takes the clones as they are, detached, mounted
    nowhere; before, each is mounted on `scratch/<n>` for the overlay to be built from those paths, then
    detached and the directories removed: overlayfs keeps private clones of its layers' mounts
    (`clone_private_mount()`), so the overlay stays usable either way. The upper is not idmapped: files
    a user-namespaced guest creates land there with their host ids (uid_base and up).
    On failure everything done so far is undone.
    """
    for path in (*lowers, upper, work, target):
        _check_absolute(path, "path")
    if not lowers:
        raise MountError(f"Failed to mount overlay on '{target}': no lower layers")
    if is_mounted(target):
        raise MountError(
            f"Failed to mount overlay on '{target}': something is mounted there already",
            hint=f"Unmount it first (umount '{target}').",
        )
    # With index=off the kernel only warns when an upper or work dir is in use by another overlay, and
    # two overlays sharing one upper corrupt it ("undefined behavior"), so refuse here.
    for path in (upper, work):
        if (other := overlay_using(path)) is not None:
            raise MountError(
                f"Failed to mount overlay on '{target}': '{path}' is in use by the overlay on '{other}'",
                hint=f"Unmount '{other}' first; is the machine already running?",
            )
    if uid_base is None:
        try:
            _mount_plain(lowers, target, upper=upper, work=work)
        except OSError as e:
            raise MountError(
                f"Failed to mount overlay on '{target}': {e.strerror}", hint=_hint_for(e)
            ) from e
        logger.debug("Mounted overlay of %d layers on %s", len(lowers), target)
        return
    _check_absolute(scratch, "scratch directory")
    steps = _IdmapSteps()
    try:
        if supports_layer_mount_fds(os.uname().release):
            _mount_idmapped_detached(lowers, target, upper=upper, work=work, uid_base=uid_base, steps=steps)
        else:
            _mount_idmapped_scratch(
                lowers, target, upper=upper, work=work, uid_base=uid_base, scratch=scratch, steps=steps
            )
    except OSError as e:
        hint = _hint_for(e)
        if e.errno == errno.EINVAL and steps.now.startswith("idmap"):
            hint = "The layer's filesystem cannot be idmapped (ext4, xfs, btrfs and tmpfs can); see dmesg."
        raise MountError(
            f"Failed to mount overlay on '{target}': {steps.now}: {e.strerror}", hint=hint
        ) from e
    logger.debug("Mounted overlay of %d idmapped layers (base %d) on %s", len(lowers), uid_base, target)


class _IdmapSteps:
    """Which step of an idmapped mount runs, for its error message."""

    def __init__(self) -> None:
        self.now = "create the user namespace"


def _idmapped_layers(lowers: Sequence[Path], uid_base: int, steps: _IdmapSteps) -> list[int]:
    """A detached, read-only, idmapped clone of each lower, as fds (closed again on failure)."""
    trees: list[int] = []
    try:
        userns = idmap.open_userns(uid_base=uid_base, count=idmap.IDMAP_COUNT)
        try:
            for lower in lowers:
                steps.now = f"idmap layer '{lower}'"
                trees.append(idmap.open_idmapped_tree(lower, userns_fd=userns))
        finally:
            os.close(userns)
    except BaseException:
        _close_all(trees)
        raise
    return trees


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def _mount_idmapped_detached(
    lowers: Sequence[Path], target: Path, *, upper: Path, work: Path, uid_base: int, steps: _IdmapSteps
) -> None:
    """The overlay built from the idmapped clones themselves: nothing mounted, made or removed on the way
    (each of those was a few ms: a scratch mount's removal waits for an RCU grace period)."""
    trees = _idmapped_layers(lowers, uid_base, steps)
    try:
        steps.now = "mount the overlay"
        _mount_fsconfig(overlay_fsconfig(trees, upper=upper, work=work), target)
    finally:
        _close_all(trees)


def _mount_idmapped_scratch(
    lowers: Sequence[Path],
    target: Path,
    *,
    upper: Path,
    work: Path,
    uid_base: int,
    scratch: Path,
    steps: _IdmapSteps,
) -> None:
    """The overlay built from the idmapped clones mounted on `scratch/<n>` (kernels before 6.15)."""
    created: list[Path] = []
    mounted: list[Path] = []
    try:
        steps.now = "create the scratch directory"
        if not scratch.is_dir():
            scratch.mkdir(mode=0o700, parents=True)
            created.append(scratch)
        trees = _idmapped_layers(lowers, uid_base, steps)
        try:
            for n, (lower, tree) in enumerate(zip(lowers, trees, strict=True)):
                steps.now = f"idmap layer '{lower}'"
                point = scratch / str(n)
                if is_mounted(point):
                    raise OSError(errno.EBUSY, f"'{point}' is a mount point already (left over?)")
                if not point.is_dir():
                    point.mkdir(mode=0o700)
                    created.append(point)
                idmap.move_mount(tree, point)
                mounted.append(point)
        finally:
            _close_all(trees)
        steps.now = "mount the overlay"
        _mount_plain([scratch / str(n) for n in range(len(lowers))], target, upper=upper, work=work)
    finally:
        # On success too: the overlay holds private clones of the idmapped layers.
        _detach_all(mounted)
        _remove_dirs(created)


def _holders(target: Path) -> list[str]:
    """What keeps `target` busy: mounts below it and processes with a cwd, root or open file inside."""
    where = _canonical(target)
    inside = (where, where.rstrip("/") + "/")
    found = [f"mount '{m.mount_point}'" for m in load_mountinfo() if m.mount_point.startswith(inside[1])]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        links = [proc / "cwd", proc / "root", proc / "exe"]
        with contextlib.suppress(OSError):
            links += list((proc / "fd").iterdir())
        for link in links:
            try:
                dest = os.readlink(link)
            except OSError:
                continue
            if dest == where or dest.startswith(inside[1]):
                try:
                    comm = (proc / "comm").read_text().strip()
                except OSError:
                    comm = "?"
                found.append(f"pid {proc.name} ({comm})")
                break
    return found


def unmount(target: Path) -> None:
    """Unmount whatever is mounted on `target`; nothing to do if nothing is.

    A plain umount, never a lazy one: a busy mount raises `MountError` naming what holds it. Note that
    a running nspawn guest holds its own copy of the mount in its mount namespace, so unmounting here
    succeeds while it runs; callers must check that the machine is stopped first.
    """
    # Mounts may be stacked on one directory; each umount removes the top one.
    while is_mounted(target):
        try:
            idmap.umount2(target)
        except OSError as e:
            if e.errno == errno.EINVAL and not is_mounted(target):
                return
            if e.errno == errno.EBUSY:
                holders = _holders(target)
                raise MountError(
                    f"Failed to unmount '{target}': {os.strerror(errno.EBUSY)}",
                    hint=(f"It is used by {', '.join(holders[:5])}. " if holders else "")
                    + f"Stop those, or detach it lazily with 'umount -l {target}'.",
                ) from e
            raise MountError(f"Failed to unmount '{target}': {os.strerror(e.errno or errno.EIO)}") from e
    logger.debug("Unmounted %s", target)
