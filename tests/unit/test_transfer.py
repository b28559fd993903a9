"""Unit tests for veneer.images.transfer: hostile and good tarballs, copy_tree refusals. No root needed."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from veneer.errors import ImageError, UnsafeArchive
from veneer.images.transfer import UNSAFE_HINT, copy_tree, extract_tar
from veneer.util.proc import run

MTIME = 1_600_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One member of a test archive."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    mtime: int = MTIME
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


def regular(name: str, data: bytes = b"", mode: int = 0o644, mtime: int = MTIME) -> Entry:
    return Entry(name=name, data=data, mode=mode, mtime=mtime)


def directory(name: str, mode: int = 0o755, mtime: int = MTIME) -> Entry:
    return Entry(name=name, type=tarfile.DIRTYPE, mode=mode, mtime=mtime)


def symlink(name: str, target: str) -> Entry:
    return Entry(name=name, type=tarfile.SYMTYPE, linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name=name, type=tarfile.LNKTYPE, linkname=target)


def device(name: str, major: int, minor: int, *, block: bool = False) -> Entry:
    kind = tarfile.BLKTYPE if block else tarfile.CHRTYPE
    return Entry(name=name, type=kind, devmajor=major, devminor=minor, mode=0o666)


def tar_bytes(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.linkname = e.linkname
            info.mode = e.mode
            info.mtime = e.mtime
            info.devmajor = e.devmajor
            info.devminor = e.devminor
            info.pax_headers = e.pax
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gz":
        return gzip.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "bz2":
        return bz2.compress(data)
    if kind == "zst":
        return bytes(zstandard.ZstdCompressor().compress(data))
    if kind == "zst-frames":
        half = len(data) // 2
        cctx = zstandard.ZstdCompressor()
        return bytes(cctx.compress(data[:half])) + bytes(cctx.compress(data[half:]))
    assert kind == "plain"
    return data


@dataclass(frozen=True, slots=True)
class Setup:
    dest: Path
    outside: Path
    archive: Path


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original\n")
    return Setup(dest=dest, outside=outside, archive=tmp_path / "archive.bin")


def write_archive(s: Setup, entries: list[Entry], kind: str = "plain") -> Path:
    s.archive.write_bytes(compress(tar_bytes(entries), kind))
    return s.archive


def snapshot(root: Path, *, skip: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry below `root` except `skip`: mode, mtime and content (or link target)."""
    result: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = ""
            result[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, content)
    return result


def hostile_cases(outside: Path) -> list[tuple[str, list[Entry], str]]:
    """(id, members, expected message fragment); `outside` is the sentinel directory next to dest."""
    return [
        ("dotdot", [regular("../evil", b"x")], "'..' component"),
        ("dotdot-dir", [directory("../evildir")], "'..' component"),
        ("absolute", [regular(str(outside / "abs"), b"x")], "absolute name"),
        ("absolute-etc", [regular("/etc/veneer-test-evil", b"x")], "absolute name"),
        ("inner-dotdot", [directory("a"), regular("a/../../evil", b"x")], "'..' component"),
        ("dot-slash-dotdot", [regular("./../evil", b"x")], "'..' component"),
        (
            "symlink-parent-outside",
            [symlink("etc", str(outside)), regular("etc/passwd", b"root::0:0::/:/bin/sh\n")],
            "'etc', which is a symlink",
        ),
        (
            "symlink-parent-dir-outside",
            [symlink("etc", str(outside)), directory("etc/sub")],
            "'etc', which is a symlink",
        ),
        (
            "symlink-dotdot",
            [symlink("x", ".."), regular("x/evil", b"x")],
            "'x', which is a symlink",
        ),
        (
            "symlink-chain",
            [symlink("a", "b"), symlink("b", str(outside)), regular("a/evil", b"x")],
            "'a', which is a symlink",
        ),
        (
            "symlink-relative-escape-deep",
            [directory("d"), symlink("d/up", "../.."), regular("d/up/evil", b"x")],
            "'d/up', which is a symlink",
        ),
        ("symlink-dot", [symlink("a", "."), regular("a/x", b"x")], "'a', which is a symlink"),
        ("hardlink-dotdot", [hardlink("h", "../outside/victim")], "'..' component"),
        ("hardlink-absolute", [hardlink("h", "/etc/passwd")], "absolute hard link target"),
        ("hardlink-absolute-outside", [hardlink("h", str(outside / "victim"))], "absolute hard link target"),
        ("hardlink-missing", [hardlink("h", "nothing")], "not a regular file extracted before it"),
        (
            "hardlink-to-symlink",
            [symlink("l", str(outside / "victim")), hardlink("h", "l")],
            "not a regular file extracted before it",
        ),
        (
            "hardlink-to-replaced-file",
            [regular("f", b"x"), symlink("f", str(outside / "victim")), hardlink("h", "f")],
            "not a regular file extracted before it",
        ),
        ("hardlink-to-dir", [directory("d"), hardlink("h", "d")], "not a regular file extracted before it"),
        ("device-outside-dev", [directory("etc"), device("etc/mem", 1, 1)], "device node outside dev/"),
        ("block-device-top", [device("sda", 8, 0, block=True)], "device node outside dev/"),
        ("device-named-dev", [device("dev", 1, 3)], "device node outside dev/"),
        ("device-devil", [directory("devil"), device("devil/null", 1, 3)], "device node outside dev/"),
        ("whiteout", [directory("etc"), device("etc/gone", 0, 0)], "overlay whiteout"),
        ("whiteout-in-dev", [directory("dev"), device("dev/gone", 0, 0)], "overlay whiteout"),
        ("unknown-type", [Entry(name="weird", type=b"Z")], "unsupported type"),
        ("root-as-file", [regular("./", b"x")], "destination directory itself"),
        ("file-below-file", [regular("f", b"x"), regular("f/g", b"y")], "'f', which is not a directory"),
        (
            "replace-full-dir",
            [directory("d"), regular("d/x", b"x"), regular("d", b"y")],
            "directory that is not empty",
        ),
        ("infinite-mtime", [Entry(name="f", pax={"mtime": "inf"})], "invalid modification time"),
        ("huge-mtime", [Entry(name="f", pax={"mtime": "1e30"})], "invalid modification time"),
        ("huge-uid", [Entry(name="f", pax={"uid": "99999999999"})], "invalid owner"),
        (
            "nul-in-pax-path",
            [Entry(name="plain", pax={"path": "a\0b"})],
            "NUL byte",
        ),
    ]


HOSTILE_IDS = [case[0] for case in hostile_cases(Path("/x"))]


@pytest.mark.parametrize("case_id", HOSTILE_IDS)
def test_hostile_archive_is_refused(setup: Setup, tmp_path: Path, case_id: str) -> None:
    cases = {c[0]: c for c in hostile_cases(setup.outside)}
    _, entries, fragment = cases[case_id]
    write_archive(setup, entries)
    before = snapshot(tmp_path, skip=setup.dest)
    passwd = Path("/etc/passwd").read_bytes()

    with pytest.raises(UnsafeArchive) as raised:
        extract_tar(setup.archive, setup.dest)

    assert fragment in raised.value.message
    assert raised.value.hint == UNSAFE_HINT
    assert snapshot(tmp_path, skip=setup.dest) == before
    assert os.listdir(setup.outside) == ["victim"]
    assert (setup.outside / "victim").read_text() == "original\n"
    assert Path("/etc/passwd").read_bytes() == passwd
    assert not Path("/etc/veneer-test-evil").exists()
    assert os.listdir(setup.dest) == [], "a refused archive must leave dest empty"


@pytest.mark.parametrize("kind", ["plain", "gz", "xz", "bz2", "zst"])
def test_hostile_archive_is_refused_in_every_compression(setup: Setup, tmp_path: Path, kind: str) -> None:
    write_archive(setup, [symlink("etc", str(setup.outside)), regular("etc/passwd", b"x")], kind)
    before = snapshot(tmp_path, skip=setup.dest)
    with pytest.raises(UnsafeArchive, match="which is a symlink"):
        extract_tar(setup.archive, setup.dest)
    assert snapshot(tmp_path, skip=setup.dest) == before


def test_member_replacing_outward_symlink_replaces_it(setup: Setup, tmp_path: Path) -> None:
    victim = setup.outside / "victim"
    write_archive(setup, [symlink("f", str(victim)), regular("f", b"pwned\n", mode=0o600)])
    before = snapshot(tmp_path, skip=setup.dest)

    extract_tar(setup.archive, setup.dest)

    assert snapshot(tmp_path, skip=setup.dest) == before
    assert victim.read_text() == "original\n"
    assert not (setup.dest / "f").is_symlink()
    assert (setup.dest / "f").read_bytes() == b"pwned\n"


def test_hardlink_replacing_outward_symlink_replaces_it(setup: Setup, tmp_path: Path) -> None:
    victim = setup.outside / "victim"
    write_archive(setup, [regular("t", b"mine\n"), symlink("s", str(victim)), hardlink("s", "t")])
    before = snapshot(tmp_path, skip=setup.dest)

    extract_tar(setup.archive, setup.dest)

    assert snapshot(tmp_path, skip=setup.dest) == before
    assert (setup.dest / "s").lstat().st_ino == (setup.dest / "t").lstat().st_ino
    assert (setup.dest / "s").read_bytes() == b"mine\n"


def test_directory_replacing_outward_symlink_replaces_it(setup: Setup, tmp_path: Path) -> None:
    write_archive(
        setup, [symlink("etc", str(setup.outside)), directory("etc"), regular("etc/passwd", b"p\n")]
    )
    before = snapshot(tmp_path, skip=setup.dest)

    extract_tar(setup.archive, setup.dest)

    assert snapshot(tmp_path, skip=setup.dest) == before
    assert not (setup.dest / "etc").is_symlink()
    assert (setup.dest / "etc/passwd").read_bytes() == b"p\n"


def test_whiteout_allowed_for_layers(setup: Setup) -> None:
    write_archive(setup, [directory("etc"), device("etc/gone", 0, 0)])

    extract_tar(setup.archive, setup.dest, allow_whiteouts=True)

    st = (setup.dest / "etc/gone").lstat()
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(0, 0)


def good_entries(big: bytes) -> list[Entry]:
    return [
        directory("./", mode=0o755, mtime=MTIME + 1),
        directory("etc", mtime=MTIME + 2),
        regular("etc/hostname", b"veneer\n", mode=0o644, mtime=MTIME + 3),
        regular("etc/shadow", b"root:*:\n", mode=0o640),
        regular("etc/empty"),
        symlink("etc/abs", "/usr/share/nowhere"),
        directory("usr"),
        directory("usr/bin"),
        regular("usr/bin/tool", big, mode=0o755),
        hardlink("usr/bin/tool2", "usr/bin/tool"),
        hardlink("./usr/bin/tool3", "./usr/bin/tool2"),
        regular("usr/bin/suid", b"#!/bin/sh\n", mode=0o4755),
        symlink("bin", "usr/bin"),
        directory("tmp", mode=0o1777),
        directory("ro", mode=0o555, mtime=MTIME + 4),
        directory("ro/sub", mode=0o500),
        regular("ro/sub/file", b"inside a read-only directory\n", mode=0o444),
        Entry(name="run/fifo", type=tarfile.FIFOTYPE, mode=0o600),
        regular("implicit/parents/file", b"x"),
        regular("etc/twice", b"first\n"),
        regular("etc/twice", b"second\n"),
        Entry(name="etc/" + "l" * 200, data=b"long name\n"),
    ]


@pytest.mark.parametrize("kind", ["plain", "gz", "xz", "bz2", "zst", "zst-frames"])
def test_good_archive(setup: Setup, kind: str) -> None:
    big = bytes(range(256)) * 12_000  # ~3 MiB: several copy chunks
    write_archive(setup, good_entries(big), kind)

    extract_tar(setup.archive, setup.dest)

    d = setup.dest
    assert (d / "etc/hostname").read_bytes() == b"veneer\n"
    assert stat.S_IMODE((d / "etc/hostname").stat().st_mode) == 0o644
    assert (d / "etc/hostname").stat().st_mtime_ns == (MTIME + 3) * 1_000_000_000
    assert stat.S_IMODE((d / "etc/shadow").stat().st_mode) == 0o640
    assert (d / "etc/empty").read_bytes() == b""
    assert os.readlink(d / "etc/abs") == "/usr/share/nowhere"
    assert (d / "etc/abs").lstat().st_mtime_ns == MTIME * 1_000_000_000
    assert (d / "usr/bin/tool").read_bytes() == big
    assert stat.S_IMODE((d / "usr/bin/tool").stat().st_mode) == 0o755
    tool = (d / "usr/bin/tool").stat()
    assert tool.st_nlink == 3
    assert (d / "usr/bin/tool2").stat().st_ino == tool.st_ino
    assert (d / "usr/bin/tool3").stat().st_ino == tool.st_ino
    assert stat.S_IMODE((d / "usr/bin/suid").stat().st_mode) == 0o4755
    assert os.readlink(d / "bin") == "usr/bin"
    assert stat.S_IMODE((d / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((d / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((d / "ro/sub").stat().st_mode) == 0o500
    assert (d / "ro/sub/file").read_bytes() == b"inside a read-only directory\n"
    assert stat.S_ISFIFO((d / "run/fifo").lstat().st_mode)
    assert (d / "implicit/parents/file").read_bytes() == b"x"
    assert (d / "etc/twice").read_bytes() == b"second\n"
    assert (d / ("etc/" + "l" * 200)).read_bytes() == b"long name\n"
    # Directory metadata is applied after the contents were written, root entry included.
    assert (d / "etc").stat().st_mtime_ns == (MTIME + 2) * 1_000_000_000
    assert (d / "ro").stat().st_mtime_ns == (MTIME + 4) * 1_000_000_000
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert d.stat().st_mtime_ns == (MTIME + 1) * 1_000_000_000


def test_pax_mtime_is_exact_to_the_nanosecond(setup: Setup) -> None:
    write_archive(setup, [Entry(name="f", pax={"mtime": "1600000000.123456789"})])
    extract_tar(setup.archive, setup.dest)
    assert (setup.dest / "f").stat().st_mtime_ns == 1_600_000_000_123_456_789


def test_sparse_member_keeps_its_holes(setup: Setup, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    with open(source / "sparse", "wb") as f:
        f.seek(8 << 20)
        f.write(b"middle")
        f.seek(32 << 20)
        f.write(b"end")
    # Python's tarfile cannot write sparse members; GNU tar can (pax sparse format 1.0).
    run(["tar", "--sparse", "--format=posix", "-C", source, "-cf", setup.archive, "sparse"])

    extract_tar(setup.archive, setup.dest)

    extracted = setup.dest / "sparse"
    assert extracted.read_bytes() == (source / "sparse").read_bytes()
    assert extracted.stat().st_blocks * 512 < 4 << 20


def test_compression_is_detected_by_content_not_name(setup: Setup, tmp_path: Path) -> None:
    archive = tmp_path / "rootfs.tar.gz"
    archive.write_bytes(compress(tar_bytes([regular("hello", b"hi\n")]), "xz"))
    extract_tar(archive, setup.dest)
    assert (setup.dest / "hello").read_bytes() == b"hi\n"


def test_duplicate_directory_takes_last_mode(setup: Setup) -> None:
    write_archive(setup, [directory("d", mode=0o700), regular("d/f", b"x"), directory("d", mode=0o750)])
    extract_tar(setup.archive, setup.dest)
    assert stat.S_IMODE((setup.dest / "d").stat().st_mode) == 0o750
    assert (setup.dest / "d/f").read_bytes() == b"x"


def test_replacing_empty_directory_with_file(setup: Setup) -> None:
    write_archive(setup, [directory("d", mode=0o500), regular("d", b"now a file\n")])
    extract_tar(setup.archive, setup.dest)
    assert (setup.dest / "d").read_bytes() == b"now a file\n"


def test_dest_must_be_empty(setup: Setup) -> None:
    (setup.dest / "already").write_text("")
    write_archive(setup, [regular("f", b"x")])
    with pytest.raises(ImageError, match="not empty"):
        extract_tar(setup.archive, setup.dest)
    assert os.listdir(setup.dest) == ["already"]


def test_dest_must_exist(setup: Setup, tmp_path: Path) -> None:
    write_archive(setup, [regular("f", b"x")])
    with pytest.raises(ImageError, match="Cannot extract into"):
        extract_tar(setup.archive, tmp_path / "missing")


def test_missing_archive(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="Cannot open"):
        extract_tar(tmp_path / "nope.tar", setup.dest)


def test_garbage_is_not_a_tarball(setup: Setup) -> None:
    setup.archive.write_bytes(b"this is not a tarball at all\n" * 100)
    with pytest.raises(ImageError, match="not a valid tar archive"):
        extract_tar(setup.archive, setup.dest)


def test_empty_file_is_not_a_tarball(setup: Setup) -> None:
    setup.archive.write_bytes(b"")
    with pytest.raises(ImageError, match="not a valid tar archive"):
        extract_tar(setup.archive, setup.dest)


def test_garbled_header_after_first_member_is_an_error(setup: Setup) -> None:
    data = bytearray(tar_bytes([regular("a", b"x" * 10), regular("b", b"y" * 10)]))
    # Member "a" is one header block and one data block; the second header starts at 1024.
    assert data[1024:1025] == b"b"
    data[1024:1028] = b"\xff\xff\xff\xff"
    setup.archive.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="garbled header"):
        extract_tar(setup.archive, setup.dest)
    assert os.listdir(setup.dest) == []


def test_truncated_member_data_is_an_error(setup: Setup) -> None:
    data = tar_bytes([regular("a", b"x" * 100_000)])
    setup.archive.write_bytes(data[:20_000])
    with pytest.raises(ImageError, match="not a valid tar archive"):
        extract_tar(setup.archive, setup.dest)
    assert os.listdir(setup.dest) == []


@pytest.mark.parametrize("kind", ["gz", "xz", "bz2", "zst"])
def test_truncated_compressed_stream_is_an_error(setup: Setup, kind: str) -> None:
    data = compress(tar_bytes([regular("a", os.urandom(200_000))]), kind)
    setup.archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError):
        extract_tar(setup.archive, setup.dest)
    assert os.listdir(setup.dest) == []


@pytest.mark.parametrize("kind", ["gz", "xz", "zst"])
def test_corrupt_compressed_stream_is_an_error(setup: Setup, kind: str) -> None:
    data = bytearray(compress(tar_bytes([regular("a", b"hello" * 10_000)]), kind))
    for i in range(20, len(data) - 20):
        data[i] ^= 0x55
    setup.archive.write_bytes(bytes(data))
    with pytest.raises(ImageError):
        extract_tar(setup.archive, setup.dest)


def test_oversized_pax_header_is_refused(setup: Setup) -> None:
    write_archive(setup, [Entry(name="f", pax={"comment": "x" * (2 << 20)})], "gz")
    with pytest.raises(ImageError, match="extended header of"):
        extract_tar(setup.archive, setup.dest)


def test_xattrs_do_not_stop_unprivileged_extraction(setup: Setup) -> None:
    pax = {"SCHILY.xattr.user.test": "v"}
    write_archive(setup, [Entry(name="f", data=b"x", pax=pax)])
    extract_tar(setup.archive, setup.dest)
    assert (setup.dest / "f").read_bytes() == b"x"
    if os.geteuid() != 0:  # as root they are restored: tests/integration/test_transfer_root.py
        assert os.listxattr(setup.dest / "f") == []


def test_zstandard_is_imported_lazily() -> None:
    code = "import sys, veneer.images.transfer; assert 'zstandard' not in sys.modules"
    run([sys.executable, "-c", code], env={"PYTHONPATH": os.pathsep.join(sys.path)})


def test_copy_tree_copies_everything(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "etc").mkdir(parents=True)
    (source / "etc/hostname").write_text("veneer\n")
    os.chmod(source / "etc/hostname", 0o640)
    os.link(source / "etc/hostname", source / "etc/hostname2")
    (source / "bin").symlink_to("usr/bin")
    os.mkfifo(source / "fifo")
    os.utime(source / "etc/hostname", ns=(MTIME * 1_000_000_000, MTIME * 1_000_000_000))
    dest = tmp_path / "dest"
    dest.mkdir()

    copy_tree(source, dest)

    assert (dest / "etc/hostname").read_text() == "veneer\n"
    assert stat.S_IMODE((dest / "etc/hostname").stat().st_mode) == 0o640
    assert (dest / "etc/hostname").stat().st_mtime_ns == MTIME * 1_000_000_000
    assert (dest / "etc/hostname").stat().st_ino == (dest / "etc/hostname2").stat().st_ino
    assert os.readlink(dest / "bin") == "usr/bin"
    assert stat.S_ISFIFO((dest / "fifo").lstat().st_mode)
    assert not (dest / "source").exists()


def test_copy_tree_refuses_a_file(tmp_path: Path) -> None:
    source = tmp_path / "rootfs.tar"
    source.write_bytes(b"")
    (tmp_path / "dest").mkdir()
    with pytest.raises(ImageError, match="not a directory") as raised:
        copy_tree(source, tmp_path / "dest")
    assert raised.value.hint


def test_copy_tree_refuses_a_missing_source(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    with pytest.raises(ImageError, match="not a directory"):
        copy_tree(tmp_path / "missing", tmp_path / "dest")


@pytest.mark.parametrize("inside", ["dest", "a/b/dest", "."])
def test_copy_tree_refuses_dest_inside_source(tmp_path: Path, inside: str) -> None:
    source = tmp_path / "source"
    dest = source / inside
    dest.mkdir(parents=True, exist_ok=True)
    if inside == ".":
        with pytest.raises(ImageError):
            copy_tree(source, dest)
        return
    with pytest.raises(ImageError, match="inside the source") as raised:
        copy_tree(source, dest)
    assert raised.value.hint


def test_copy_tree_refuses_dest_inside_source_via_symlink(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "dest").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(source / "dest")
    with pytest.raises(ImageError, match="inside the source"):
        copy_tree(source, tmp_path / "alias")


def test_copy_tree_refuses_nonempty_dest(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x").write_text("")
    with pytest.raises(ImageError, match="not an empty directory"):
        copy_tree(source, dest)
