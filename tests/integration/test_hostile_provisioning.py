"""A hostile image provisioned by `image create --from-tar ... --user ... --run ...`: its own programs
(a `useradd`, the `--run` command) run in a throwaway user-namespaced machine, never as host root.

The image's programs try what host root in a plain chroot-like container can do: make a device node of
the host's disk, mount it and leave a marker in the test's directory on the host. They also record the
uid map they run under, which the test reads from the published layer.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.integration.helpers import Store, mounts_under

pytestmark = [pytest.mark.root]

HOST_RANGE_FIRST = 0x70000000
APPLETS = ("sh", "cat", "id", "mknod", "mount", "mkdir", "touch", "chown", "echo", "true")


def _add(tf: tarfile.TarFile, name: str, *, data: bytes = b"", mode: int = 0o644, kind: bytes = b"0",
         link: str = "") -> None:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
    tf.addfile(info, io.BytesIO(data) if data else None)


def hostile_tarball(path: Path) -> None:
    """A busybox root filesystem whose `useradd` records the uid map it runs under."""
    with tarfile.open(path, "w:gz") as tf:
        for directory in ("bin", "etc", "usr", "usr/sbin", "root", "home", "tmp"):
            _add(tf, directory, kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "bin/busybox", data=Path("/bin/busybox").read_bytes(), mode=0o755)
        for applet in APPLETS:
            _add(tf, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        _add(tf, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
        _add(tf, "etc/group", data=b"root:x:0:\n")
        useradd = b"#!/bin/sh\ncat /proc/self/uid_map > /useradd-uidmap\n"
        _add(tf, "usr/sbin/useradd", data=useradd, mode=0o755)


def host_disk_of(path: Path) -> tuple[int, int, str]:
    """(major, minor) of the block device holding `path`, and `path` relative to that file system."""
    device = os.stat(path).st_dev
    top = path
    while top.parent != top and os.stat(top.parent).st_dev == device:
        top = top.parent
    return os.major(device), os.minor(device), os.path.relpath(path, top)


def test_provisioning_runs_the_image_programs_in_a_user_namespace(store: Store, tmp_path: Path) -> None:
    archive = tmp_path / "hostile.tar.gz"
    hostile_tarball(archive)
    target = tmp_path / "host-side"
    target.mkdir(mode=0o700)
    major, minor, relative = host_disk_of(target)
    attack = (
        "cat /proc/self/uid_map > /run-uidmap; id -u > /run-id; "
        "touch /made-by-root; mkdir -p /home/u; touch /home/u/f; chown 1000:1000 /home/u/f; "
        f"if mknod /hostdisk b {major} {minor} && mkdir -p /hostfs && mount /hostdisk /hostfs; then "
        f"touch /hostfs/{relative}/HOSTMARK; echo escaped > /escaped; fi; true"
    )
    store.veneer("image", "create", "evil", "--from-tar", str(archive), "--user", "bob", "--run", attack)

    assert not (target / "HOSTMARK").exists(), "the image's --run command wrote on the host's disk"
    tree = store.layer_tree("evil")
    assert not (tree / "escaped").exists()
    assert not os.path.lexists(tree / "hostdisk")
    for recorded in ("run-uidmap", "useradd-uidmap"):
        inside, host, count = (int(x) for x in (tree / recorded).read_text().split())
        # Container root is an unprivileged host range of veneer's, not host root (`0 0 4294967295`).
        assert (inside, count) == (0, 65536), recorded
        assert host >= HOST_RANGE_FIRST, recorded
    assert (tree / "run-id").read_text().strip() == "0"
    # What the programs wrote holds real ids 0..65535, as every layer does.
    assert (tree / "made-by-root").stat().st_uid == 0
    assert (tree / "home/u/f").stat().st_uid == 1000
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_uid < 65536 and st.st_gid < 65536, os.path.join(dirpath, name)
            assert not stat.S_ISBLK(st.st_mode), os.path.join(dirpath, name)
    assert mounts_under(store.root, store.run) == []
