"""Hostile image layers and archives: each is refused with a message naming the problem, nothing is
published, nothing is left in the store, and the host's files are untouched. Layers are written by hand
(tarfile), wrapped in OCI layouts, imported, and one is also pulled from a registry."""

from __future__ import annotations

import gzip
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from tests.integration.layouts import Member, entry, layer_tar, sha, stack, write_layout
from tests.integration.registries import run_registry

pytestmark = [pytest.mark.root]


def host_state() -> dict[str, tuple[int, int, bytes]]:
    """What a hostile layer would aim at: these files' inode, mtime and content."""
    state = {}
    for name in ("/etc/passwd", "/etc/shadow", "/etc/hostname"):
        st = os.lstat(name)
        state[name] = (st.st_ino, st.st_mtime_ns, Path(name).read_bytes())
    state["/etc xattrs"] = (0, 0, repr(sorted(os.listxattr("/etc"))).encode())
    return state


def assert_nothing_published(store: Store) -> None:
    assert json.loads(store.veneer("image", "list", "--json").stdout) == []
    assert not any((store.root / "layers").glob("*"))
    assert not any((store.root / ".staging").glob("*"))


ESCAPE_TARGET = "/tmp/veneer-hostile-target"

HOSTILE: dict[str, tuple[list[Member], str]] = {
    "dotdot": ([entry("../../../../../../tmp/veneer-hostile-target/x", data=b"owned")], "'..' component"),
    "absolute": ([entry(f"{ESCAPE_TARGET}/x", data=b"owned")], "absolute name"),
    "symlinked etc then etc/passwd": (
        [
            entry("etc", tarfile.SYMTYPE, linkname="/etc"),
            entry("etc/passwd", data=b"root::0:0::/:/bin/sh\n"),
        ],
        "which is a symlink",
    ),
    "relative symlink then write": (
        [
            entry("a", tarfile.SYMTYPE, linkname="../../../../../../etc"),
            entry("a/hostname", data=b"pwned\n"),
        ],
        "which is a symlink",
    ),
    "opaque whiteout through a symlink": (
        [entry("etc", tarfile.SYMTYPE, linkname="/etc"), entry("etc/.wh..wh..opq")],
        "which is a symlink",
    ),
    "whiteout through a symlink": (
        [entry("etc", tarfile.SYMTYPE, linkname="/etc"), entry("etc/.wh.passwd")],
        "which is a symlink",
    ),
    "hardlink to an absolute path": ([entry("shadow", tarfile.LNKTYPE, linkname="/etc/shadow")], "absolute"),
    "hardlink out with ..": (
        [entry("shadow", tarfile.LNKTYPE, linkname="../../etc/shadow")],
        "'..' component",
    ),
    "hardlink through a symlink": (
        [
            entry("etc", tarfile.SYMTYPE, linkname="/etc"),
            entry("shadow", tarfile.LNKTYPE, linkname="etc/shadow"),
        ],
        "not a regular file extracted before it",
    ),
    "block device": ([entry("sda", tarfile.BLKTYPE, dev=(8, 0))], "device node outside dev/"),
    "char device": ([entry("etc/mem", tarfile.CHRTYPE, dev=(1, 1))], "device node outside dev/"),
    "overlay whiteout device": ([entry("etc/x", tarfile.CHRTYPE, dev=(0, 0))], "overlay whiteout"),
    "oversized pax header": (
        [entry("big", data=b"x", pax={"comment": "y" * (2 << 20)})],
        "extended header",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer_is_refused_and_host_untouched(store: Store, tmp_path: Path, case: str) -> None:
    members, message = HOSTILE[case]
    before = host_state()
    layout = write_layout(
        tmp_path / "layout", [layer_tar([entry("bin/", tarfile.DIRTYPE)]), layer_tar(members)]
    )
    result = store.veneer("image", "import", "evil", str(layout), ok=(1,))
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_published(store)
    assert host_state() == before
    assert not os.path.lexists(ESCAPE_TARGET)


def test_setuid_file_keeps_its_owner(store: Store, tmp_path: Path) -> None:
    layout = write_layout(
        tmp_path / "layout",
        [layer_tar([entry("bin/", tarfile.DIRTYPE), entry("bin/su", data=b"#!", mode=0o4755, uid=1000)])],
    )
    store.veneer("image", "import", "suid", str(layout))
    st = (stack(store.root, "suid")[0] / "bin" / "su").lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1000, 0o4755)  # setuid, but never as root


def test_symlink_in_one_layer_cannot_redirect_the_next(store: Store, tmp_path: Path) -> None:
    before = host_state()
    busybox = Path("/bin/busybox").read_bytes()
    base = [entry("usr/", tarfile.DIRTYPE), entry("bin/busybox", data=busybox, mode=0o755)]
    base += [entry(f"bin/{a}", tarfile.SYMTYPE, linkname="busybox") for a in ("sh", "cat")]
    layout = write_layout(
        tmp_path / "layout",
        [
            layer_tar(base),
            layer_tar([entry("etc", tarfile.SYMTYPE, linkname="/etc")]),
            layer_tar([entry("etc/passwd", data=b"layer three\n")]),
        ],
    )
    store.veneer("image", "import", "stack", str(layout))
    assert host_state() == before
    top = stack(store.root, "stack")[2]
    assert (top / "etc").is_dir() and not (top / "etc").is_symlink()
    store.veneer("create", "m", "--from", "stack", "--network", "none")
    assert store.veneer("run", "m", "--", "cat", "/etc/passwd").stdout == "layer three\n"
    assert host_state() == before


@pytest.mark.parametrize("damage", ["diff_id", "digest", "truncated"])
def test_damaged_layer_is_refused(store: Store, tmp_path: Path, damage: str) -> None:
    tar = layer_tar([entry("etc/", tarfile.DIRTYPE), entry("etc/f", data=os.urandom(200_000))])
    if damage == "diff_id":
        layout = write_layout(tmp_path / "l", [tar], diff_ids=[sha(b"something else")])
        expected = "does not match its diff_id"
    elif damage == "digest":
        layout = write_layout(tmp_path / "l", [tar], tamper=lambda b: b[:-9] + bytes([b[-9] ^ 1]) + b[-8:])
        expected = "does not match its digest"
    else:
        layout = write_layout(tmp_path / "l", [tar], tamper=lambda b: b[: len(b) // 2])
        expected = "does not match its digest"
    result = store.veneer("image", "import", "bad", str(layout), ok=(1,))
    assert expected in result.stderr, result.stderr
    assert_nothing_published(store)


def test_truncated_layer_with_matching_digest_is_refused(store: Store, tmp_path: Path) -> None:
    tar = layer_tar([entry("etc/", tarfile.DIRTYPE), entry("etc/f", data=os.urandom(200_000))])
    blob = gzip.compress(tar, mtime=0)
    layout = write_layout(tmp_path / "l", [tar])
    # Rewrite the layout so the manifest describes the truncated blob exactly: only the gzip stream is bad.
    short = blob[: len(blob) // 2]
    (layout / "blobs" / "sha256" / sha(blob).removeprefix("sha256:")).unlink()
    (layout / "blobs" / "sha256" / sha(short).removeprefix("sha256:")).write_bytes(short)
    for path in (layout / "blobs" / "sha256").iterdir():
        text = path.read_bytes()
        if sha(blob).encode() in text:
            patched = text.replace(sha(blob).encode(), sha(short).encode()).replace(
                f'"size": {len(blob)}'.encode(), f'"size": {len(short)}'.encode()
            )
            path.unlink()
            (path.parent / sha(patched).removeprefix("sha256:")).write_bytes(patched)
            index = (layout / "index.json").read_text()
            old = sha(text)
            (layout / "index.json").write_text(
                index.replace(old, sha(patched)).replace(f'"size": {len(text)}', f'"size": {len(patched)}')
            )
    result = store.veneer("image", "import", "bad", str(layout), ok=(1,))
    assert "Cannot read" in result.stderr or "not a valid tar archive" in result.stderr, result.stderr
    assert_nothing_published(store)


def test_hostile_layer_pulled_from_a_registry_is_refused(store: Store, tmp_path: Path) -> None:
    before = host_state()
    members = [
        entry("etc", tarfile.SYMTYPE, linkname="/etc"),
        entry("etc/passwd", data=b"root::0:0::/:/bin/sh\n"),
    ]
    layout = write_layout(tmp_path / "layout", [layer_tar(members)])
    with run_registry(tmp_path / "registry", auth="none") as registry:
        ref = registry.push(f"oci:{layout}:latest", "evil/image:1")
        result = store.veneer("image", "pull", "evil", ref, env={"DOCKER_CONFIG": str(tmp_path)}, ok=(1,))
    assert "which is a symlink" in result.stderr
    assert json.loads(store.veneer("image", "list", "--json").stdout) == []
    assert not any((store.root / "layers").glob("*"))
    assert host_state() == before


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_rootfs_tarball_is_refused_and_host_untouched(
    store: Store, tmp_path: Path, case: str
) -> None:
    members, message = HOSTILE[case]
    before = host_state()
    archive = tmp_path / "rootfs.tar.gz"
    archive.write_bytes(gzip.compress(layer_tar([entry("bin/", tarfile.DIRTYPE), *members])))
    result = store.veneer("image", "import", "evil", str(archive), ok=(1,))
    assert message in result.stderr, result.stderr
    assert_nothing_published(store)
    assert host_state() == before
    assert not os.path.lexists(ESCAPE_TARGET)
