"""The pure parts of image building: specs, argv builders, account and locale editing, identity scrub."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from veneer.config.layout import Layout
from veneer.errors import ImageError, UsageError
from veneer.images import bootstrap
from veneer.images.bootstrap import (
    PLACEHOLDERS,
    BuildSpec,
    Provisioning,
    SourceKind,
    UserSpec,
    parse_user,
    scrub_identity,
    set_timezone,
    systemctl_enable_argv,
)
from veneer.images.distros import (
    Distribution,
    arch,
    busybox,
    debian,
    enable_locale_gen,
    installer_for,
    locale_gen_line,
    missing_groups,
    parse_os_release,
    read_os_release,
    tree_path,
    useradd_argv,
    write_tree_text,
)
from veneer.images.distros.busybox import AccountFiles, add_account, applet_links, is_static_elf

TREE = Path("/stage/tree")
LAYOUT = Layout(root=Path("/nonexistent/state"), run=Path("/nonexistent/run"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kang", UserSpec(name="kang")),
        ("kang:wheel", UserSpec(name="kang", group="wheel")),
        ("kang:wheel,audio,video", UserSpec(name="kang", group="wheel", groups=("audio", "video"))),
        ("_svc-1:users", UserSpec(name="_svc-1", group="users")),
    ],
)
def test_parse_user(text: str, expected: UserSpec) -> None:
    assert parse_user(text) == expected


@pytest.mark.parametrize(
    "text", ["", "Kang", "kang:", "kang:wheel,", "a:b:c", "-x", "a/b", "k ang", "x" * 33]
)
def test_parse_user_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_user(text)


@pytest.mark.parametrize(
    "fields",
    [
        {"users": ("Bad",)},
        {"locale": "en US"},
        {"timezone": "../../etc/passwd"},
        {"timezone": "/UTC"},
        {"enable": ("-x",)},
        {"enable": ("a b",)},
        {"packages": ("--force",)},
        {"packages": ("a,b",)},
        {"run": ("  ",)},
    ],
)
def test_provisioning_rejects(fields: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Provisioning(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"source": SourceKind.DEBOOTSTRAP},
        {"source": SourceKind.DEBOOTSTRAP, "suite": "-bookworm"},
        {"source": SourceKind.DEBOOTSTRAP, "suite": "bookworm", "variant": "fakechroot"},
        {"source": SourceKind.DEBOOTSTRAP, "suite": "bookworm", "mirror": "--foo"},
        {"source": SourceKind.DEBOOTSTRAP, "suite": "bookworm", "mirror": "not a url"},
        {"source": SourceKind.BUSYBOX, "suite": "bookworm"},
        {"source": SourceKind.BUSYBOX, "packages": ("vim",)},
        {"source": SourceKind.BUSYBOX, "path": Path("/x")},
        {"source": SourceKind.DIR},
        {"source": SourceKind.TAR, "pacman_conf": Path("/etc/pacman.conf"), "path": Path("/x.tar")},
        {"source": SourceKind.PACSTRAP, "packages": ("-d",)},
        {"source": SourceKind.BUSYBOX, "provisioning": Provisioning(packages=("vim",))},
        {"source": SourceKind.BUSYBOX, "provisioning": Provisioning(locale="en_US.UTF-8")},
        {"source": SourceKind.BUSYBOX, "provisioning": Provisioning(timezone="UTC")},
        {"source": SourceKind.BUSYBOX, "provisioning": Provisioning(enable=("foo",))},
    ],
)
def test_build_spec_rejects(fields: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        BuildSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (BuildSpec(source=SourceKind.BUSYBOX), "busybox"),
        (BuildSpec(source=SourceKind.DEBOOTSTRAP, suite="bookworm"), "debootstrap bookworm (minbase)"),
        (
            BuildSpec(source=SourceKind.DEBOOTSTRAP, suite="sid", variant="buildd", mirror="file:///srv/m"),
            "debootstrap sid (buildd) from file:///srv/m",
        ),
        (BuildSpec(source=SourceKind.PACSTRAP), "pacstrap base"),
        (
            BuildSpec(source=SourceKind.PACSTRAP, packages=("base", "vim"), pacman_conf=Path("/p.conf")),
            "pacstrap base vim (pacman.conf /p.conf)",
        ),
        (BuildSpec(source=SourceKind.DIR, path=Path("/srv/root")), "from-dir /srv/root"),
        (BuildSpec(source=SourceKind.TAR, path=Path("/srv/r.tar")), "from-tar /srv/r.tar"),
        (
            BuildSpec(
                source=SourceKind.PACSTRAP,
                packages=("base", "vim", "sudo"),
                provisioning=Provisioning(
                    users=("kang:wheel",),
                    locale="en_US.UTF-8",
                    timezone="UTC",
                    enable=("systemd-networkd", "systemd-resolved"),
                    run=("true", "true"),
                ),
            ),
            "pacstrap base vim sudo + locale en_US.UTF-8; timezone UTC; users kang:wheel; "
            "enable systemd-networkd,systemd-resolved; run 2 commands",
        ),
        (
            BuildSpec(source=SourceKind.BUSYBOX, provisioning=Provisioning(users=("a", "b:c"), run=("x",))),
            "busybox + users a b:c; run 1 command",
        ),
    ],
)
def test_describe(spec: BuildSpec, text: str) -> None:
    assert spec.describe() == text
    assert "\n" not in spec.describe()


def test_source_kinds() -> None:
    assert [k.value for k in SourceKind] == ["busybox", "debootstrap", "pacstrap", "from-dir", "from-tar"]
    assert SourceKind.DEBOOTSTRAP.distribution() is Distribution.DEBIAN
    assert SourceKind.TAR.distribution() is None
    assert SourceKind.DIR.takes_path() and not SourceKind.PACSTRAP.takes_path()


@pytest.mark.parametrize(
    ("kwargs", "argv"),
    [
        (
            {"suite": "bookworm", "mirror": None, "variant": None, "include": ()},
            ["debootstrap", "--foreign", "--variant=minbase", "bookworm", "/stage/tree"],
        ),
        (
            {
                "suite": "bookworm",
                "mirror": "file:///m",
                "variant": "standard",
                "include": ("systemd", "dbus"),
            },
            ["debootstrap", "--foreign", "--include=systemd,dbus", "bookworm", "/stage/tree", "file:///m"],
        ),
        (
            {"suite": "trixie", "mirror": None, "variant": "buildd", "include": ("a",)},
            ["debootstrap", "--foreign", "--variant=buildd", "--include=a", "trixie", "/stage/tree"],
        ),
    ],
)
def test_debootstrap_argv(kwargs: dict[str, object], argv: list[str]) -> None:
    assert debian.debootstrap_argv(TREE, **kwargs) == argv  # type: ignore[arg-type]


def test_debootstrap_names_no_mirror_host() -> None:
    argv = debian.debootstrap_argv(TREE, suite="bookworm", mirror=None, variant=None, include=())
    assert not any("://" in arg for arg in argv)
    assert set(debian.BOOT_PACKAGES) == {"systemd", "systemd-sysv", "dbus"}


def test_debian_install_argvs() -> None:
    argvs = debian.install_argvs(["less", "vim"])
    assert argvs[0] == ["apt-get", "update"]
    assert argvs[1] == ["apt-get", "install", "--yes", "--no-install-recommends", "--", "less", "vim"]
    assert argvs[-1] == ["apt-get", "clean"]


@pytest.mark.parametrize(
    ("kwargs", "argv"),
    [
        (
            {"packages": (), "pacman_conf": None, "copy_mirrorlist": True},
            ["pacstrap", "-c", "/stage/tree", "base"],
        ),
        (
            {"packages": ("base", "vim"), "pacman_conf": Path("/etc/p.conf"), "copy_mirrorlist": False},
            ["pacstrap", "-c", "-M", "-C", "/etc/p.conf", "/stage/tree", "base", "vim"],
        ),
    ],
)
def test_pacstrap_argv(kwargs: dict[str, object], argv: list[str]) -> None:
    # pacstrap's own mounts must die with it: it always runs in a private mount namespace.
    prefix = ["unshare", "--mount", "--propagation=private"]
    assert arch.pacstrap_argv(TREE, **kwargs) == prefix + argv  # type: ignore[arg-type]


def test_pacman_install_argv() -> None:
    assert arch.install_argv(["vim"]) == [
        "pacman",
        "--sync",
        "--refresh",
        "--needed",
        "--noconfirm",
        "--",
        "vim",
    ]


def test_build_box_argv_is_user_namespaced() -> None:
    from veneer.images.buildbox import build_spec
    from veneer.runtime.nspawn import nspawn_argv

    argv = nspawn_argv(build_spec(TREE, 0x7FFD0000, ["apt-get", "update"], setenv={"B": "2", "A": "1"}))
    assert argv[-3:] == ["--", "apt-get", "update"]
    options = argv[1 : argv.index("--")]
    for needed in ("--private-users=2147287040:65536", "--private-users-ownership=off", "--register=no"):
        assert needed in options
    assert "--directory=/stage/tree" in options
    assert [o for o in options if o.startswith("--setenv")] == ["--setenv=A=1", "--setenv=B=2"]
    assert "--private-network" in options
    assert "--timezone=off" in options  # tzdata's postinst replaces /etc/localtime
    # Package installs get the host's network (see veneer.images.buildbox), still user-namespaced.
    host = nspawn_argv(build_spec(TREE, 0x7FFD0000, ["true"], network=True))
    assert not any(o.startswith(("--private-network", "--network")) for o in host)
    assert "--private-users=2147287040:65536" in host


def test_base_filesystem_is_made_without_following_symlinks(tmp_path: Path) -> None:
    from veneer.images.buildbox import make_base_filesystem

    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/lib").symlink_to("/usr/lib")  # hostile: the host's, not the tree's
    (tmp_path / "etc").symlink_to("/etc")
    with pytest.raises(ImageError, match="symlink"):
        make_base_filesystem(tmp_path)
    (tmp_path / "etc").unlink()
    make_base_filesystem(tmp_path)
    assert os.readlink(tmp_path / "sbin") == "usr/sbin"
    assert not os.path.lexists(tmp_path / "bin")  # no usr/bin to point at
    assert not os.path.lexists(tmp_path / "lib")  # usr/lib is a symlink
    assert (tmp_path / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (tmp_path / "etc/resolv.conf").read_text() == ""


class FakeRunner:
    """Records the commands a provisioning step runs in the tree."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str], bool]] = []

    def __call__(
        self,
        command: Sequence[str],
        *,
        setenv: Mapping[str, str] | None = None,
        network: bool = False,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.calls.append((list(command), dict(setenv or {}), network))


def test_installers_run_through_the_runner(tmp_path: Path) -> None:
    runner = FakeRunner()
    Distribution.DEBIAN.installer().install_packages(tmp_path, ["vim"], runner=runner)
    assert [c[0][:2] for c in runner.calls] == [
        ["apt-get", "update"],
        ["apt-get", "install"],
        ["apt-get", "clean"],
    ]
    assert all(network and env == debian.APT_ENV for _, env, network in runner.calls)
    runner = FakeRunner()
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/useradd").write_text("")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text("root:x:0:\n")
    installer_for(None).add_user(tmp_path, name="kang", group="wheel", groups=(), runner=runner)
    # Adding users needs no network.
    assert runner.calls == [
        (["groupadd", "wheel"], {}, False),
        (useradd_argv(name="kang", group="wheel", groups=()), {}, False),
    ]


def test_systemctl_and_useradd_argv() -> None:
    assert systemctl_enable_argv(TREE, ["a", "b.socket"]) == [
        "systemctl",
        "--root=/stage/tree",
        "enable",
        "--",
        "a",
        "b.socket",
    ]
    assert useradd_argv(name="kang", group="wheel", groups=["audio", "video"]) == [
        "useradd",
        "--create-home",
        "--gid",
        "wheel",
        "--groups",
        "audio,video",
        "--",
        "kang",
    ]
    assert useradd_argv(name="kang", group=None, groups=[]) == ["useradd", "--create-home", "--", "kang"]


def test_missing_groups() -> None:
    existing = {"root", "audio"}
    assert missing_groups(existing, group="wheel", groups=["audio", "video", "wheel"]) == ["wheel", "video"]
    assert missing_groups(existing, group=None, groups=[]) == []


def _elf64(*, interp: bool) -> bytes:
    phoff, phentsize = 64, 56
    types = [6, 3, 1] if interp else [6, 1]
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x401000, phoff, 0, 0, 64, phentsize, len(types), 0, 0, 0
    )
    for p_type in types:
        header += struct.pack("<II", p_type, 4) + bytes(phentsize - 8)
    return header


def _elf32(*, interp: bool) -> bytes:
    phoff, phentsize = 52, 32
    types = [3, 1] if interp else [1]
    header = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    header += struct.pack(
        "<HHIIIIIHHHHHH", 2, 3, 1, 0x8048000, phoff, 0, 0, 52, phentsize, len(types), 0, 0, 0
    )
    for p_type in types:
        header += struct.pack("<I", p_type) + bytes(phentsize - 4)
    return header


def test_is_static_elf() -> None:
    assert is_static_elf(_elf64(interp=False))
    assert not is_static_elf(_elf64(interp=True))
    assert is_static_elf(_elf32(interp=False))
    assert not is_static_elf(_elf32(interp=True))
    assert not is_static_elf(b"#!/bin/sh\n" + bytes(100))
    assert not is_static_elf(_elf64(interp=False)[:60])


def test_applet_links() -> None:
    listing = "bin/busybox\nlinuxrc\nbin/sh\nusr/bin/[\nsbin/init\nusr/sbin/arping\n../etc/x\n"
    assert applet_links(listing) == [
        ("bin/sh", "busybox"),
        ("usr/bin/[", "../../bin/busybox"),
        ("sbin/init", "../bin/busybox"),
        ("usr/sbin/arping", "../../bin/busybox"),
    ]


def test_inittab() -> None:
    lines = [line for line in busybox.INITTAB.splitlines() if line and not line.startswith("#")]
    actions = {line.split(":")[2] for line in lines}
    assert {"respawn", "ctrlaltdel", "shutdown"} <= actions
    assert "::respawn:-/bin/sh" in lines
    # nspawn has mounted everything: no mount in any action.
    assert not any("mount" in line for line in lines)


def test_busybox_init_passes_on_the_signals_of_systemd_and_busybox() -> None:
    passed = {
        line.split("'")[1].split()[1]: line.split("'")[2].split()
        for line in busybox.INIT.splitlines()
        if line.startswith("trap 'pass ")
    }
    # SIGRTMIN+3 (halt), +4 (machinectl poweroff), +5 (reboot) with glibc's SIGRTMIN, 34.
    assert passed == {"USR2": ["USR2", "37", "38"], "USR1": ["USR1"], "TERM": ["TERM", "39"],
                      "INT": ["INT"], "HUP": ["HUP"]}  # fmt: skip
    assert "(exec -a linuxrc /bin/busybox) 0<&3 3<&- &" in busybox.INIT


def test_base_accounts() -> None:
    assert busybox.PASSWD.startswith("root:x:0:0:")
    root_shadow = busybox.SHADOW.splitlines()[0].split(":")
    assert root_shadow[0] == "root" and root_shadow[1] in ("*", "!")


def test_add_account_with_groups() -> None:
    files = AccountFiles(passwd=busybox.PASSWD, group=busybox.GROUP, shadow=busybox.SHADOW)
    files, uid, gid = add_account(files, name="kang", group="wheel", groups=["tty", "audio"])
    assert (uid, gid) == (1000, 1000)
    assert "kang:x:1000:1000::/home/kang:/bin/sh\n" in files.passwd
    groups = {line.split(":")[0]: line for line in files.group.splitlines()}
    assert groups["wheel"] == "wheel:x:1000:"
    assert groups["tty"] == "tty:x:5:kang"
    assert groups["audio"] == "audio:x:1001:kang"
    assert files.shadow.splitlines()[-1].startswith("kang:!:")
    files, uid, gid = add_account(files, name="bob", group=None, groups=["audio"])
    assert (uid, gid) == (1002, 1002)
    groups = {line.split(":")[0]: line for line in files.group.splitlines()}
    assert groups["bob"] == "bob:x:1002:"
    assert groups["audio"] == "audio:x:1001:kang,bob"


def test_add_account_refuses_duplicates() -> None:
    files = AccountFiles(passwd=busybox.PASSWD, group=busybox.GROUP, shadow=busybox.SHADOW)
    with pytest.raises(ImageError):
        add_account(files, name="root", group=None, groups=[])
    with pytest.raises(ImageError):
        add_account(files, name="nogroup", group=None, groups=[])


def test_busybox_installer_refuses(tmp_path: Path) -> None:
    installer = Distribution.BUSYBOX.installer()
    with pytest.raises(UsageError):
        installer.install_packages(tmp_path, ["vim"], runner=FakeRunner())
    with pytest.raises(UsageError):
        installer.setup_locale(tmp_path, "en_US.UTF-8", runner=FakeRunner())
    with pytest.raises(ImageError):
        installer_for(None).install_packages(tmp_path, ["vim"], runner=FakeRunner())


def test_busybox_add_user_edits_files(tmp_path: Path) -> None:
    busybox.save_account_files(
        tmp_path, AccountFiles(passwd=busybox.PASSWD, group=busybox.GROUP, shadow=busybox.SHADOW)
    )
    if os.geteuid() != 0:
        pytest.skip("chown of the home directory needs root")
    Distribution.BUSYBOX.installer().add_user(
        tmp_path, name="kang", group="wheel", groups=(), runner=FakeRunner()
    )
    assert "kang:x:1000:1000:" in (tmp_path / "etc/passwd").read_text()
    assert (tmp_path / "etc/shadow").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "home/kang").stat().st_uid == 1000


SUPPORTED = "en_US.UTF-8 UTF-8\nen_US ISO-8859-1\nde_DE.UTF-8 UTF-8\nsr_RS@latin UTF-8\n"


@pytest.mark.parametrize(
    ("supported", "locale", "line"),
    [
        (SUPPORTED, "en_US.UTF-8", "en_US.UTF-8 UTF-8"),
        (SUPPORTED, "en_US", "en_US ISO-8859-1"),
        (SUPPORTED, "sr_RS@latin", "sr_RS@latin UTF-8"),
        (None, "fr_FR.utf8", "fr_FR.utf8 UTF-8"),
        (None, "ja_JP.EUC-JP", "ja_JP.EUC-JP EUC-JP"),
    ],
)
def test_locale_gen_line(supported: str | None, locale: str, line: str) -> None:
    assert locale_gen_line(supported, locale) == line


def test_locale_gen_line_rejects() -> None:
    with pytest.raises(UsageError):
        locale_gen_line(SUPPORTED, "xx_XX.UTF-8")
    with pytest.raises(UsageError):
        locale_gen_line(None, "en_US")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# en_US.UTF-8 UTF-8\n# de_DE.UTF-8 UTF-8\n", "en_US.UTF-8 UTF-8\n# de_DE.UTF-8 UTF-8\n"),
        ("#en_US.UTF-8 UTF-8\n", "en_US.UTF-8 UTF-8\n"),
        ("en_US.UTF-8 UTF-8\n", "en_US.UTF-8 UTF-8\n"),
        ("", "en_US.UTF-8 UTF-8\n"),
        ("# comment\nde_DE.UTF-8 UTF-8", "# comment\nde_DE.UTF-8 UTF-8\nen_US.UTF-8 UTF-8\n"),
    ],
)
def test_enable_locale_gen(text: str, expected: str) -> None:
    assert enable_locale_gen(text, "en_US.UTF-8 UTF-8") == expected


def test_debian_locale_packages() -> None:
    assert debian.DebianInstaller.locale_packages("en_US.UTF-8") == ("locales",)
    assert debian.DebianInstaller.locale_packages("C.UTF-8") == ()
    assert arch.ArchInstaller.locale_packages("en_US.UTF-8") == ()


def test_parse_os_release() -> None:
    text = '# comment\nNAME="Debian GNU/Linux"\nID=debian\nID_LIKE=\'ubuntu debian\'\nBAD\nVERSION_ID="12"\n'
    assert parse_os_release(text) == {
        "NAME": "Debian GNU/Linux",
        "ID": "debian",
        "ID_LIKE": "ubuntu debian",
        "VERSION_ID": "12",
    }


@pytest.mark.parametrize(
    ("os_release", "distribution"),
    [
        ("ID=debian\n", Distribution.DEBIAN),
        ('ID=ubuntu\nID_LIKE="debian"\n', Distribution.DEBIAN),
        ("ID=arch\n", Distribution.ARCH),
        ('ID=manjaro\nID_LIKE="arch"\n', Distribution.ARCH),
        ("ID=busybox\n", Distribution.BUSYBOX),
        ('ID=fedora\nID_LIKE=""\n', None),
        ("", None),
    ],
)
def test_detect(tmp_path: Path, os_release: str, distribution: Distribution | None) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib/os-release").write_text(os_release)
    (tmp_path / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert Distribution.detect(tmp_path) is distribution


def test_read_os_release_does_not_leave_the_tree(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text("ID=arch\n")
    # Absolute: read inside the tree, not the host's /usr/lib/os-release.
    (tmp_path / "etc/os-release").symlink_to("/usr/lib/os-release")
    assert read_os_release(tmp_path) == {"ID": "arch"}
    (tmp_path / "etc/os-release").unlink()
    (tmp_path / "etc/os-release").symlink_to("../../../../../../../etc/os-release")
    assert read_os_release(tmp_path) == {"ID": "arch"}


def test_tree_path_refuses_symlinked_parents(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "etc").symlink_to(outside)
    with pytest.raises(ImageError):
        tree_path(tree, "etc/locale.gen")
    with pytest.raises(ImageError):
        write_tree_text(tree, "etc/locale.gen", "x")
    with pytest.raises(ImageError):
        tree_path(tree, "../x")
    assert list(outside.iterdir()) == []


def test_write_tree_text_replaces_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("host\n")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/locale.gen").symlink_to(outside)
    write_tree_text(tree, "etc/locale.gen", "mine\n")
    assert outside.read_text() == "host\n"
    assert not (tree / "etc/locale.gen").is_symlink()
    assert (tree / "etc/locale.gen").read_text() == "mine\n"


def test_set_timezone(tmp_path: Path) -> None:
    (tmp_path / "usr/share/zoneinfo/Europe").mkdir(parents=True)
    (tmp_path / "usr/share/zoneinfo/Europe/Paris").write_bytes(b"TZif")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/localtime").write_text("")
    (tmp_path / "etc/timezone").write_text("Etc/UTC\n")
    set_timezone(tmp_path, "Europe/Paris")
    assert os.readlink(tmp_path / "etc/localtime") == "../usr/share/zoneinfo/Europe/Paris"
    assert (tmp_path / "etc/timezone").read_text() == "Europe/Paris\n"
    with pytest.raises(ImageError):
        set_timezone(tmp_path, "Mars/Olympus")


def _tree(root: Path, files: dict[str, str]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("->"):
            path.symlink_to(content[2:])
        elif content == "<dir>":
            path.mkdir()
        else:
            path.write_text(content)
    return root


def test_scrub_identity(tmp_path: Path) -> None:
    tree = _tree(
        tmp_path / "tree",
        {
            "etc/hostname": "buildhost\n",
            "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
            "etc/resolv.conf": "nameserver 10.0.0.1\n",
            "etc/ssh/ssh_host_ed25519_key": "secret",
            "etc/ssh/ssh_host_ed25519_key.pub": "public",
            "etc/ssh/sshd_config": "config",
            "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
            "var/lib/systemd/random-seed": "seed",
            "var/lib/apt/lists/deb_Packages": "x",
            "var/lib/apt/lists/partial": "<dir>",
            "var/cache/apt/pkgcache.bin": "x",
            "var/cache/apt/archives/a.deb": "x",
            "var/cache/pacman/pkg/a.pkg.tar.zst": "x",
            "var/lib/pacman/sync/core.db": "x",
            "var/lib/pacman/local/ALPM_DB_VERSION": "9",
        },
    )
    scrub_identity(tree)
    assert not os.path.lexists(tree / "etc/hostname")
    assert (tree / "etc/machine-id").read_text() == ""
    assert (tree / "etc/machine-id").stat().st_mode & 0o777 == 0o444
    assert (tree / "etc/resolv.conf").read_text() == ""
    assert os.readlink(tree / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert sorted(os.listdir(tree / "etc/ssh")) == ["sshd_config"]
    assert not os.path.lexists(tree / "var/lib/systemd/random-seed")
    assert os.listdir(tree / "var/lib/apt/lists") == ["partial"]
    for empty in ("var/cache/apt/archives", "var/cache/pacman/pkg", "var/lib/pacman/sync"):
        assert os.listdir(tree / empty) == []
    assert not (tree / "var/cache/apt/pkgcache.bin").exists()
    assert (tree / "var/lib/pacman/local/ALPM_DB_VERSION").exists()
    for placeholder in PLACEHOLDERS:
        path = tree / placeholder
        assert path.is_file() and not path.is_symlink()
        assert path.stat().st_size == 0 and path.stat().st_mode & 0o777 == 0o644
    scrub_identity(tree)  # idempotent
    assert (tree / "etc/machine-id").read_text() == ""


def test_scrub_identity_keeps_symlinks_and_stays_inside(tmp_path: Path) -> None:
    outside = _tree(tmp_path / "host", {"ssh/ssh_host_rsa_key": "host key", "hostname": "host\n"})
    tree = _tree(
        tmp_path / "tree",
        {
            "etc/ssh": f"->{outside / 'ssh'}",
            "etc/resolv.conf": "->/run/systemd/resolve/stub-resolv.conf",
            "etc/localtime": "->../usr/share/zoneinfo/UTC",
            "etc/machine-id": f"->{outside / 'hostname'}",
            "var/lib": f"->{outside}",
        },
    )
    scrub_identity(tree)
    assert (outside / "ssh/ssh_host_rsa_key").read_text() == "host key"
    assert (outside / "hostname").read_text() == "host\n"
    assert os.readlink(tree / "etc/resolv.conf") == "/run/systemd/resolve/stub-resolv.conf"
    assert os.readlink(tree / "etc/localtime") == "../usr/share/zoneinfo/UTC"
    assert not (tree / "etc/machine-id").is_symlink()
    assert (tree / "etc/machine-id").read_text() == ""
    assert sorted(os.listdir(outside)) == ["hostname", "ssh"]


def test_scrub_identity_makes_etc(tmp_path: Path) -> None:
    scrub_identity(tmp_path)
    assert sorted(os.listdir(tmp_path / "etc")) == sorted(
        ["machine-id", *(p.split("/")[1] for p in PLACEHOLDERS)]
    )


def test_build_tree_needs_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(ImageError):
        bootstrap.build_tree(BuildSpec(source=SourceKind.BUSYBOX), tmp_path, layout=LAYOUT)
    with pytest.raises(ImageError):
        bootstrap.build_tree(BuildSpec(source=SourceKind.BUSYBOX), tmp_path / "missing", layout=LAYOUT)
