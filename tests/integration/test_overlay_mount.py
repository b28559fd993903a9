"""Real overlay and idmapped mounts (and one nspawn run) in temp dirs; every mount is undone."""

import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from veneer.errors import MountError
from veneer.overlay import idmap
from veneer.overlay import mount as overlay_mount
from veneer.overlay.layers import is_opaque, is_whiteout
from veneer.overlay.mount import (
    _mount_legacy,
    is_mounted,
    mount_overlay,
    overlay_options,
    unmount,
)
from veneer.util.mountinfo import load_mountinfo
from veneer.util.proc import run, which

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

BASE = 1879048192  # 0x70000000


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    """The directories of one overlay mount under a temp dir."""

    lowers: tuple[Path, ...]
    upper: Path
    work: Path
    root: Path
    scratch: Path


def _under(path: Path) -> list[str]:
    where = os.path.realpath(path) + "/"
    return [m.mount_point for m in load_mountinfo() if (m.mount_point + "/").startswith(where)]


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, with anything still mounted below it detached at the end, deepest first."""
    yield tmp_path
    for point in sorted(_under(tmp_path), key=len, reverse=True):
        with contextlib.suppress(OSError):
            idmap.umount2(Path(point), idmap.MNT_DETACH)
    assert _under(tmp_path) == []


def _layers(tmp: Path, count: int) -> tuple[Path, ...]:
    lowers = []
    for n in range(count):
        layer = tmp / "layers" / f"{n:03d}"
        (layer / "etc").mkdir(parents=True)
        (layer / "etc" / f"only{n}").write_text(f"{n}\n")
        (layer / "etc" / "shared").write_text(f"layer {n}\n")
        lowers.append(layer)
    return tuple(lowers)


def _machine(tmp: Path, lowers: tuple[Path, ...]) -> Machine:
    m = Machine(
        lowers=lowers, upper=tmp / "upper", work=tmp / "work", root=tmp / "root", scratch=tmp / "idmap"
    )
    for d in (m.upper, m.work, m.root):
        d.mkdir()
    return m


@pytest.fixture
def machine(tmp: Path) -> Iterator[Machine]:
    """Two lower layers, the bottom one holding root-owned files and a directory; not yet mounted."""
    lowers = _layers(tmp, 2)
    (lowers[0] / "var" / "lib").mkdir(parents=True)
    (lowers[0] / "var" / "lib" / "data").write_text("data\n")
    m = _machine(tmp, lowers)
    yield m
    unmount(m.root)


@pytest.fixture(params=["detached", "scratch"])
def idmapped_layers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of giving overlayfs the idmapped layers: detached mounts as they are (Linux 6.15+), or
    mounted on scratch directories first (before; this kernel is made to take that way)."""
    if request.param == "scratch":
        monkeypatch.setattr(overlay_mount, "supports_layer_mount_fds", lambda _release: False)
    else:
        assert overlay_mount.supports_layer_mount_fds(os.uname().release), "this kernel predates 6.15"
    return str(request.param)


def _mount(m: Machine, uid_base: int | None = BASE) -> None:
    mount_overlay(m.lowers, m.root, upper=m.upper, work=m.work, uid_base=uid_base, scratch=m.scratch)


def test_idmapped_lowers_show_root_files_as_uid_base(machine: Machine, idmapped_layers: str) -> None:
    _mount(machine)
    for rel in ("etc", "etc/only0", "etc/only1", "var/lib/data"):
        st = (machine.root / rel).stat()
        assert (st.st_uid, st.st_gid) == (BASE, BASE), rel
    assert (machine.root / "etc" / "shared").read_text() == "layer 1\n"
    assert (machine.lowers[0] / "etc" / "only0").stat().st_uid == 0


def test_no_idmapped_layer_stays_mounted_and_the_overlay_still_works(
    machine: Machine, idmapped_layers: str
) -> None:
    _mount(machine)
    assert _under(machine.root.parent) == [os.fspath(machine.root)]
    assert not machine.scratch.exists()
    # Fresh lookups after the detach still reach both layers through the overlay's private clones.
    assert sorted(os.listdir(machine.root / "etc")) == ["only0", "only1", "shared"]
    assert (machine.root / "var" / "lib" / "data").read_text() == "data\n"


def test_copy_up_keeps_the_shifted_owner_and_leaves_the_lower_alone(machine: Machine) -> None:
    _mount(machine)
    (machine.root / "var" / "lib" / "data").write_text("changed\n")
    os.chmod(machine.root / "etc" / "only1", 0o600)
    for rel in ("var", "var/lib", "var/lib/data", "etc/only1"):
        st = (machine.upper / rel).stat()
        assert (st.st_uid, st.st_gid) == (BASE, BASE), rel
    assert (machine.lowers[0] / "var" / "lib" / "data").read_text() == "data\n"
    assert (machine.lowers[1] / "etc" / "only1").stat().st_mode & 0o777 == 0o644


def test_a_file_host_root_creates_is_not_shifted(machine: Machine) -> None:
    # The upper is not idmapped: a file created by host root through the overlay is owned by 0 on
    # disk, which a guest in the uid_base user namespace sees as nobody (65534). veneer writes into
    # a machine as the guest (nspawn) or chowns what it puts there to uid_base.
    _mount(machine)
    (machine.root / "hostfile").write_text("x\n")
    assert (machine.upper / "hostfile").stat().st_uid == 0


def test_idmapped_lowers_are_read_only(tmp: Path) -> None:
    source, target = tmp / "source", tmp / "target"
    source.mkdir()
    target.mkdir()
    (source / "f").write_text("x\n")
    idmap.idmapped_mount(source, target, uid_base=BASE)
    try:
        assert (target / "f").stat().st_uid == BASE
        with pytest.raises(OSError) as e:
            (target / "new").write_text("x\n")
        assert e.value.errno == errno.EROFS
    finally:
        unmount(target)


def test_user_namespace_maps(tmp: Path) -> None:
    fd = idmap.open_userns(uid_base=BASE, count=65536)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("user:[")
    finally:
        os.close(fd)


def test_user_namespaces_opened_by_many_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`start A B C` mounts in a thread per machine: the child one thread forks must not hold another
    thread's pipe, or two children wait for each other's EOF for ever (2 of 20 starts once did)."""
    real_pipe = os.pipe

    def pipe_then_yield() -> tuple[int, int]:
        fds = real_pipe()
        if threading.current_thread().name.startswith("opener"):
            time.sleep(0.01)  # the other threads make their pipes too before this one forks
        return fds

    monkeypatch.setattr(os, "pipe", pipe_then_yield)
    done: list[int] = []

    def open_some() -> None:
        for _ in range(5):
            os.close(idmap.open_userns(uid_base=BASE, count=65536))
        done.append(1)

    threads = [threading.Thread(target=open_some, name=f"opener{n}", daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)  # a deadlock, not a speed: each call takes milliseconds
    assert len(done) == len(threads), "open_userns deadlocked between threads"


def test_whiteouts_and_opaque_dirs_in_the_upper(machine: Machine) -> None:
    _mount(machine)
    (machine.root / "etc" / "only0").unlink()
    shutil.rmtree(machine.root / "var" / "lib")
    (machine.root / "var" / "lib").mkdir()
    assert is_whiteout((machine.upper / "etc" / "only0").stat(follow_symlinks=False))
    assert not is_whiteout((machine.upper / "var").stat())
    assert is_opaque(machine.upper / "var" / "lib")
    assert not is_opaque(machine.upper / "etc")


@pytest.mark.parametrize("uid_base", [None, BASE])
def test_120_lowers(tmp: Path, uid_base: int | None, idmapped_layers: str) -> None:
    m = _machine(tmp, _layers(tmp, 120))
    _mount(m, uid_base)
    try:
        assert len(os.listdir(m.root / "etc")) == 121
        assert (m.root / "etc" / "shared").read_text() == "layer 119\n"
        assert (m.root / "etc" / "only0").stat().st_uid == (uid_base or 0)
    finally:
        unmount(m.root)
    assert _under(tmp) == []


def test_unmount_is_idempotent_and_leaves_nothing(machine: Machine) -> None:
    _mount(machine)
    assert is_mounted(machine.root)
    unmount(machine.root)
    unmount(machine.root)
    assert not is_mounted(machine.root)
    assert all(m.fstype != "overlay" or m.mount_point != os.fspath(machine.root) for m in load_mountinfo())
    assert _under(machine.root.parent) == []


def test_unmount_of_a_busy_overlay_names_the_holder(machine: Machine) -> None:
    _mount(machine)
    fd = os.open(machine.root / "etc" / "only0", os.O_RDONLY)
    try:
        with pytest.raises(MountError) as e:
            unmount(machine.root)
        assert e.value.hint is not None and f"pid {os.getpid()}" in e.value.hint
        assert is_mounted(machine.root)
    finally:
        os.close(fd)
    unmount(machine.root)


def test_a_failed_mount_undoes_everything(machine: Machine, idmapped_layers: str) -> None:
    broken = Machine(
        lowers=(*machine.lowers, machine.root.parent / "missing"),
        upper=machine.upper,
        work=machine.work,
        root=machine.root,
        scratch=machine.scratch,
    )
    with pytest.raises(MountError) as e:
        _mount(broken)
    assert "missing" in e.value.message and e.value.hint
    assert _under(machine.root.parent) == []
    assert not machine.scratch.exists()


def test_mounting_twice_or_sharing_an_upper_is_refused(machine: Machine) -> None:
    _mount(machine)
    with pytest.raises(MountError):
        _mount(machine)
    other = machine.root.parent / "other"
    other.mkdir()
    with pytest.raises(MountError) as e:
        mount_overlay(
            machine.lowers,
            other,
            upper=machine.upper,
            work=machine.work,
            uid_base=None,
            scratch=machine.scratch,
        )
    assert "in use" in e.value.message
    assert not is_mounted(other)


def test_separators_in_paths(tmp: Path) -> None:
    lowers = (tmp / "a:b", tmp / "c,d", tmp / "e\\f")
    for n, layer in enumerate(lowers):
        layer.mkdir()
        (layer / f"f{n}").write_text("x\n")
    upper, work = tmp / "up:1,\\", tmp / "work"
    upper.mkdir()
    work.mkdir()
    for legacy in (False, True):
        target = tmp / f"root{int(legacy)}"
        target.mkdir()
        if legacy:
            _mount_legacy(overlay_options(lowers, upper=upper, work=work), target)
        else:
            mount_overlay(lowers, target, upper=upper, work=work, uid_base=None, scratch=tmp / "s")
        try:
            assert sorted(os.listdir(target)) == ["f0", "f1", "f2"]
            (target / "new").write_text("x\n")
            assert (upper / "new").exists()
            (upper / "new").unlink()
        finally:
            unmount(target)


def _busybox_base(base: Path) -> None:
    for d in ("bin", "dev", "proc", "sys", "run", "tmp", "etc", "root", "var", "usr/bin"):
        (base / d).mkdir(parents=True)
    os.chmod(base / "tmp", 0o1777)
    os.chmod(base / "root", 0o700)
    busybox = which("busybox")
    assert busybox is not None, "busybox (busybox-static) is not installed"
    shutil.copy2(busybox, base / "bin" / "busybox")
    for applet in ("sh", "id", "cat", "stat"):
        (base / "bin" / applet).symlink_to("busybox")
    (base / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (base / "etc" / "group").write_text("root:x:0:\n")
    (base / "etc" / "os-release").write_text("ID=busybox\n")
    # Placeholders: nspawn bind-mounts the host's files onto them instead of creating them in the upper.
    (base / "etc" / "resolv.conf").write_text("")
    (base / "etc" / "localtime").write_text("")


def test_a_user_namespaced_guest_writes_only_its_own_files(tmp: Path) -> None:
    base = tmp / "base"
    _busybox_base(base)
    m = _machine(tmp, (base,))
    os.chown(m.upper, BASE, BASE)
    _mount(m)
    try:
        result = run(
            [
                "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", m.root,
                f"--machine=vtest{os.getpid()}", f"--private-users={BASE}:65536",
                "--private-users-ownership=off", "--link-journal=no", "--private-network",
                "--resolv-conf=bind-host", "--timezone=bind", "--pipe",
                "--", "/bin/sh", "-c", "id -u; stat -c %u /etc/passwd; echo x > /root/f",
            ],
            capture=True,
        )  # fmt: skip
        assert result.stdout.split() == ["0", "0"]
    finally:
        unmount(m.root)
    found = sorted(
        (os.path.relpath(os.path.join(d, n), m.upper), os.lstat(os.path.join(d, n)).st_uid)
        for d, dirs, files in os.walk(m.upper)
        for n in (*dirs, *files)
    )
    assert found == [("root", BASE), ("root/f", BASE)]
