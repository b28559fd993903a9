"""Building real image trees: busybox (runs and boots), Debian (debootstrap, from-dir provisioning),
Arch (pacstrap from a local repository with a package made here by makepkg)."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import DEBIAN_USER, remove_tree
from tests.integration.helpers import mounts_under
from veneer.config.layout import Layout
from veneer.images.bootstrap import PLACEHOLDERS, BuildSpec, Provisioning, SourceKind, build_tree
from veneer.images.distros import busybox
from veneer.util import proc

pytestmark = [pytest.mark.root]

# Probes must not change the tree: nothing copied or created in it, nothing registered anywhere.
PROBE = [
    "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--settings=no", "--read-only",
    "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--pipe",
]  # fmt: skip
BOOT = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--settings=no", "--boot"]


def probe(tree: Path, script: str) -> str:
    """Run `script` with /bin/sh inside the tree; return its output."""
    result = proc.run([*PROBE, f"--directory={tree}", "--", "/bin/sh", "-c", script], capture=True)
    return result.stdout


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A directory for the test's trees; whatever is mounted under it is detached and all of it removed."""
    yield tmp_path
    leftover = mounts_under(tmp_path)
    for point in leftover:
        proc.run(["umount", "--lazy", point], check=False)
    remove_tree(tmp_path)
    assert not leftover, f"left mounted: {leftover}"


def layout_in(work: Path) -> Layout:
    """The store whose runtime dir holds the uid range reservations of the test's builds."""
    return Layout(root=work / "state", run=work / "run", uids=work / "uids")


def new_tree(work: Path, name: str = "tree") -> Path:
    tree = work / name
    tree.mkdir()
    return tree


def assert_no_build_identity(tree: Path) -> None:
    assert not os.path.lexists(tree / "etc/hostname")
    assert (tree / "etc/machine-id").read_bytes() == b""
    resolv = tree / "etc/resolv.conf"
    assert resolv.is_symlink() or resolv.read_bytes() == b""
    assert not list((tree / "etc").glob("ssh/ssh_host_*"))
    for placeholder in PLACEHOLDERS:
        assert os.path.lexists(tree / placeholder)
    assert mounts_under(tree) == []


def test_busybox_tree_runs_commands(work: Path) -> None:
    tree = new_tree(work)
    provisioning = Provisioning(users=("alice:wheel,audio", "bob"), run=("echo ran > /root/ran",))
    build_tree(BuildSpec(source=SourceKind.BUSYBOX, provisioning=provisioning), tree, layout=layout_in(work))
    assert_no_build_identity(tree)
    assert (tree / "sbin/init").resolve() == tree / busybox.INIT_PATH
    assert (tree / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (tree / "root").stat().st_mode & 0o777 == 0o700
    out = probe(tree, "cat /etc/os-release; id; id alice; id bob; cat /root/ran; stat -c %U /home/alice")
    assert "ID=busybox" in out
    assert "uid=0(root) gid=0(root)" in out
    assert "uid=1000(alice) gid=1000(wheel) groups=1000(wheel),1001(audio)" in out
    assert "uid=1002(bob) gid=1002(bob)" in out
    assert out.splitlines()[-2:] == ["ran", "alice"]


def test_busybox_tree_boots_and_powers_off(work: Path) -> None:
    tree = new_tree(work)
    build_tree(BuildSpec(source=SourceKind.BUSYBOX), tree, layout=layout_in(work))
    # The console shell that the init respawns reads these lines; busybox `poweroff` signals init (SIGUSR2).
    result = proc.run(
        ["timeout", "--kill-after=5", "30", *BOOT, f"--directory={tree}", "--console=pipe"],
        input="echo booted-$((40+2))\npoweroff\n",
        capture=True,
    )
    assert "booted-42" in result.stdout
    assert mounts_under(tree) == []


POWEROFF, REBOOT = 0, 133  # nspawn's exit status when its container powered off, rebooted


@pytest.mark.parametrize(
    ("signal_number", "status"),
    [
        (signal.SIGUSR2, POWEROFF),  # what `veneer stop` has nspawn send (--kill-signal)
        (signal.SIGRTMIN + 3, POWEROFF),  # nspawn's default kill signal, systemd's halt
        (signal.SIGRTMIN + 4, POWEROFF),  # machinectl poweroff
        (signal.SIGINT, REBOOT),  # machinectl reboot
        (signal.SIGRTMIN + 5, REBOOT),
    ],
)
def test_busybox_init_ends_on_the_signals_of_busybox_systemd_and_machinectl(
    work: Path, signal_number: int, status: int
) -> None:
    from veneer.machines.guest import find_leader

    tree = new_tree(work)
    build_tree(BuildSpec(source=SourceKind.BUSYBOX), tree, layout=layout_in(work))
    # From the host, as machined sends them: the init of a PID namespace gets only the signals it handles.
    nspawn = proc.spawn([*BOOT, f"--directory={tree}"])
    try:
        # A signal that comes before the init has its handlers is lost; it sets them up before it starts
        # its first child (the console shell), which is what `start --wait` waits for too.
        def init_started_a_child() -> int | None:
            leader = find_leader(nspawn.pid)
            if leader is None or not Path(f"/proc/{leader}/task/{leader}/children").read_text().split():
                return None
            return leader

        assert proc.wait_until(lambda: init_started_a_child() is not None, timeout=30, interval=0.05)
        leader = init_started_a_child()
        assert leader is not None
        os.kill(leader, signal_number)
        assert nspawn.wait(timeout=60) == status
    finally:
        if nspawn.poll() is None:
            nspawn.kill()
            nspawn.wait()
    assert mounts_under(tree) == []


def test_debian_tree_has_no_build_host_identity(debian_tree: Path) -> None:
    assert_no_build_identity(debian_tree)
    assert os.readlink(debian_tree / "var/lib/dbus/machine-id") == "/etc/machine-id"
    hosts = debian_tree / "etc/hosts"
    if hosts.exists():
        assert socket.gethostname() not in hosts.read_text().split()
    assert [p.name for p in (debian_tree / "var/lib/apt/lists").iterdir() if not p.is_dir()] == []
    assert list((debian_tree / "var/cache/apt/archives").glob("*.deb")) == []


def test_debian_tree_runs_dpkg_and_has_the_user(debian_tree: Path) -> None:
    out = probe(debian_tree, f"dpkg -l systemd systemd-sysv dbus | grep -c '^ii'; id {DEBIAN_USER}")
    count, ids = out.splitlines()
    assert count == "3"
    assert "gid=100(users)" in ids and "(audio)" in ids
    assert (debian_tree / "home" / DEBIAN_USER).is_dir()


def test_from_dir_provisions_a_debian_tree(debian_tree: Path, work: Path) -> None:
    tree = new_tree(work)
    provisioning = Provisioning(
        users=("kang:wheel,audio",),
        locale="de_DE.UTF-8",
        timezone="Europe/Berlin",
        enable=("systemd-networkd",),
        packages=("less",),
        run=("echo ran > /root/ran",),
    )
    build_tree(
        BuildSpec(source=SourceKind.DIR, path=debian_tree, provisioning=provisioning),
        tree,
        layout=layout_in(work),
    )
    assert_no_build_identity(tree)
    assert os.readlink(tree / "etc/localtime") == "../usr/share/zoneinfo/Europe/Berlin"
    assert (tree / "etc/default/locale").read_text() == "LANG=de_DE.UTF-8\n"
    assert (tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").is_symlink()
    assert [p for p in (tree / "var/lib/apt/lists").iterdir() if not p.is_dir()] == []
    out = probe(tree, "id kang; locale -a; dpkg -l less | grep -c '^ii'; cat /root/ran")
    # wheel did not exist in Debian: it was made for kang, who is its first member.
    assert "(kang) gid=" in out and "(wheel) groups=" in out and "(audio)" in out
    assert "de_DE.utf8" in out.splitlines()
    assert out.splitlines()[-2:] == ["1", "ran"]


PKGBUILD = """\
pkgname=veneer-hello
pkgver=1.0
pkgrel=1
pkgdesc="veneer test package"
arch=(any)
license=(MIT)
package() {
  mkdir -p "$pkgdir/usr/share/veneer-hello"
  echo hello > "$pkgdir/usr/share/veneer-hello/hello"
}
"""


@pytest.fixture
def pacman_repo(work: Path) -> Iterator[Path]:
    """A pacman.conf whose only repository is a local one holding the package veneer-hello."""
    # makepkg refuses to run as root: build as nobody, in a directory nobody can reach (not under the
    # test's tmp_path, whose parents are private to root).
    build = Path(tempfile.mkdtemp(prefix="veneer-makepkg-"))
    try:
        (build / "PKGBUILD").write_text(PKGBUILD)
        os.chown(build, 65534, 65534)
        os.chown(build / "PKGBUILD", 65534, 65534)
        proc.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "makepkg",
                "--nodeps",
                "--noconfirm",
            ],
            cwd=build,
            env={"HOME": os.fspath(build), "PKGEXT": ".pkg.tar.gz"},
            capture=True,
        )
        repo = work / "repo"
        repo.mkdir()
        (package,) = build.glob("veneer-hello-*.pkg.tar.gz")
        os.replace(package, repo / package.name)
    finally:
        remove_tree(build)
    proc.run(["repo-add", repo / "veneer.db.tar.gz", repo / package.name], capture=True)
    (work / "cache").mkdir()
    conf = work / "pacman.conf"
    conf.write_text(
        "[options]\nArchitecture = auto\nSigLevel = Never\n"
        f"CacheDir = {work / 'cache'}/\n\n[veneer]\nServer = file://{repo}\n"
    )
    yield conf


def test_pacstrap_installs_from_a_local_repository(work: Path, pacman_repo: Path) -> None:
    tree = new_tree(work)
    spec = BuildSpec(source=SourceKind.PACSTRAP, packages=("veneer-hello",), pacman_conf=pacman_repo)
    build_tree(spec, tree, layout=layout_in(work))
    assert (tree / "usr/share/veneer-hello/hello").read_text() == "hello\n"
    assert (tree / "var/lib/pacman/local/veneer-hello-1.0-1/desc").is_file()
    # Downloaded packages went to the configured cache, not into the image; no sync database kept.
    assert list((work / "cache").glob("veneer-hello-*"))
    assert list((tree / "var/lib/pacman/sync").iterdir()) == []
    assert_no_build_identity(tree)
