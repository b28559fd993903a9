"""Root-only tests for veneer.images.transfer: owners, setuid bits, device nodes, xattrs, copy_tree."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
from pathlib import Path

import pytest

from veneer.errors import UnsafeArchive
from veneer.images.transfer import copy_tree, extract_tar

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, security.* xattrs)"),
]

# struct vfs_cap_data, revision 2: effective flag set, CAP_NET_RAW (13) permitted.
CAP_NET_RAW = struct.pack("<IIIII", 0x02000000 | 0x1, 1 << 13, 0, 0, 0)
MTIME = 1_650_000_000


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    linkname: str = "",
    dev: tuple[int, int] = (0, 0),
    xattrs: dict[str, bytes] | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.mtime = MTIME
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    info.size = len(data)
    # tarfile writes pax values as UTF-8; latin-1 maps every byte of these ASCII-range test values 1:1.
    info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("latin-1") for k, v in (xattrs or {}).items()}
    return info, data


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


def test_extract_keeps_owners_modes_devices_and_xattrs(tmp_path: Path, dest: Path) -> None:
    archive = write_tar(tmp_path / "rootfs.tar.gz", [
        member("./", tarfile.DIRTYPE, mode=0o755),
        member("home", tarfile.DIRTYPE, mode=0o755),
        member("home/user", tarfile.DIRTYPE, mode=0o700, uid=1234, gid=2345,
               xattrs={"user.dir": b"d"}),
        member("home/user/notes", data=b"mine\n", mode=0o640, uid=1234, gid=2345),
        member("home/user/link", tarfile.SYMTYPE, linkname="notes", uid=1234, gid=2345),
        member("usr/bin/su", data=b"\x7fELF", mode=0o4755),
        member("usr/bin/own", data=b"\x7fELF", mode=0o6750, uid=1234, gid=2345),
        member("usr/bin/ping", data=b"\x7fELF", mode=0o755,
               xattrs={"security.capability": CAP_NET_RAW, "user.test": b"hello"}),
        member("usr/bin/other", data=b"x", xattrs={"trusted.evil": b"1", "trusted.overlay.opaque": b"y"}),
        member("dev", tarfile.DIRTYPE, mode=0o755),
        member("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        member("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0)),
        member("dev/pts", tarfile.DIRTYPE, mode=0o755),
        member("dev/pts/ptmx", tarfile.CHRTYPE, mode=0o000, dev=(5, 2)),
    ])  # fmt: skip

    extract_tar(archive, dest)

    user = (dest / "home/user").stat()
    assert (user.st_uid, user.st_gid, stat.S_IMODE(user.st_mode)) == (1234, 2345, 0o700)
    assert os.getxattr(dest / "home/user", "user.dir") == b"d"
    notes = (dest / "home/user/notes").stat()
    assert (notes.st_uid, notes.st_gid, stat.S_IMODE(notes.st_mode)) == (1234, 2345, 0o640)
    link = (dest / "home/user/link").lstat()
    assert (link.st_uid, link.st_gid) == (1234, 2345)
    su = (dest / "usr/bin/su").stat()
    assert (su.st_uid, su.st_mode) == (0, stat.S_IFREG | 0o4755)
    own = (dest / "usr/bin/own").stat()
    assert (own.st_uid, own.st_gid, stat.S_IMODE(own.st_mode)) == (1234, 2345, 0o6750)
    ping = dest / "usr/bin/ping"
    assert os.getxattr(ping, "security.capability") == CAP_NET_RAW
    assert os.getxattr(ping, "user.test") == b"hello"
    assert ping.stat().st_mtime_ns == MTIME * 1_000_000_000
    assert os.listxattr(dest / "usr/bin/other") == [], "only user.* and security.capability are restored"
    null = (dest / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = (dest / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0)
    assert (loop.st_gid, stat.S_IMODE(loop.st_mode)) == (6, 0o660)
    ptmx = (dest / "dev/pts/ptmx").lstat()
    assert stat.S_ISCHR(ptmx.st_mode) and stat.S_IMODE(ptmx.st_mode) == 0


def test_extract_layer_keeps_whiteouts_and_overlay_xattrs(tmp_path: Path, dest: Path) -> None:
    archive = write_tar(tmp_path / "layer.tar.gz", [
        member("etc", tarfile.DIRTYPE, mode=0o755, xattrs={"trusted.overlay.opaque": b"y"}),
        member("etc/removed", tarfile.CHRTYPE, mode=0o000, dev=(0, 0)),
    ])  # fmt: skip

    with pytest.raises(UnsafeArchive, match="overlay whiteout"):
        extract_tar(archive, dest)
    assert os.listdir(dest) == []

    extract_tar(archive, dest, allow_whiteouts=True)

    whiteout = (dest / "etc/removed").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(dest / "etc", "trusted.overlay.opaque") == b"y"


def test_extract_refuses_device_outside_dev_before_mknod(tmp_path: Path, dest: Path) -> None:
    archive = write_tar(tmp_path / "evil.tar.gz", [
        member("etc", tarfile.DIRTYPE),
        member("etc/disk", tarfile.BLKTYPE, mode=0o666, dev=(8, 0)),
    ])  # fmt: skip
    with pytest.raises(UnsafeArchive, match="device node outside dev/"):
        extract_tar(archive, dest)
    assert os.listdir(dest) == []


def test_copy_tree_keeps_owners_modes_links_devices_and_xattrs(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "usr/bin").mkdir(parents=True)
    (source / "dev").mkdir()
    (source / "tmp").mkdir(mode=0o1777)
    os.chmod(source / "tmp", 0o1777)
    tool = source / "usr/bin/tool"
    tool.write_bytes(b"\x7fELF")
    os.chown(tool, 1234, 2345)
    os.chmod(tool, 0o4750)  # after chown, which clears setuid
    os.setxattr(tool, "user.test", b"hello")
    ping = source / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF")
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.link(tool, source / "usr/bin/tool-again")
    os.mknod(source / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(source / "dev/null", 0o666)
    (source / "bin").symlink_to("usr/bin")
    os.lchown(source / "bin", 1234, 2345)
    with open(source / "sparse", "wb") as f:
        f.truncate(64 << 20)
    # What a machine's overlay upper dir holds (clone_machine copies one): a whiteout, an opaque dir.
    os.mknod(source / "removed", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (source / "opaque").mkdir()
    os.setxattr(source / "opaque", "trusted.overlay.opaque", b"y")
    dest = tmp_path / "dest"
    dest.mkdir()

    # An image import refuses the overlay's own entries; a clone of an upper dir allows them.
    with pytest.raises(
        UnsafeArchive, match="'opaque' carries overlayfs attributes|'removed' is a device node"
    ):
        copy_tree(source, dest)
    assert not list(dest.iterdir())
    copy_tree(source, dest, allow_whiteouts=True)

    copied = (dest / "usr/bin/tool").stat()
    assert (copied.st_uid, copied.st_gid, stat.S_IMODE(copied.st_mode)) == (1234, 2345, 0o4750)
    assert copied.st_nlink == 2
    assert (dest / "usr/bin/tool-again").stat().st_ino == copied.st_ino
    assert os.getxattr(dest / "usr/bin/tool", "user.test") == b"hello"
    assert os.getxattr(dest / "usr/bin/ping", "security.capability") == CAP_NET_RAW
    null = (dest / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert os.readlink(dest / "bin") == "usr/bin"
    assert (dest / "bin").lstat().st_uid == 1234
    whiteout = (dest / "removed").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(dest / "opaque", "trusted.overlay.opaque") == b"y"
    sparse = (dest / "sparse").stat()
    assert sparse.st_size == 64 << 20 and sparse.st_blocks * 512 < 1 << 20


def test_copy_tree_refuses_device_nodes_outside_dev(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "home").mkdir(parents=True)
    # A block device node in an image would open a host disk from inside a machine.
    os.mknod(source / "home/blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match="'home/blk' is a device node outside dev/"):
        copy_tree(source, dest)
    assert not list(dest.iterdir())
