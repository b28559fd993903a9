import os
import stat
from pathlib import Path

import pytest

from veneer.errors import MountError
from veneer.overlay.layers import is_opaque, is_whiteout
from veneer.overlay.mount import (
    FSCONFIG_VALUE_MAX,
    escape_option_path,
    overlay_fsconfig,
    overlay_options,
    overlay_using,
    parse_kernel_release,
    supports_layer_mount_fds,
    supports_lowerdir_add,
)
from veneer.util.mountinfo import MountInfo, parse_mountinfo, parse_super_options, unescape_mountinfo

FEATURES = "index=off,metacopy=off,redirect_dir=off,xino=off"
LOWERS = [Path("/l/base"), Path("/l/mid"), Path("/l/top")]


def test_options_put_the_topmost_lower_first() -> None:
    options = overlay_options(LOWERS, upper=Path("/m/upper"), work=Path("/m/work"))
    assert options == f"lowerdir=/l/top:/l/mid:/l/base,upperdir=/m/upper,workdir=/m/work,{FEATURES}"


def test_options_without_upper_are_read_only() -> None:
    assert overlay_options([Path("/l/base")], upper=None, work=None) == f"lowerdir=/l/base,{FEATURES}"


@pytest.mark.parametrize(
    ("path", "escaped"),
    [
        ("/plain/dir", "/plain/dir"),
        ("/a:b", "/a\\:b"),
        ("/a,b", "/a\\,b"),
        ("/a\\b", "/a\\\\b"),
        ("/sp ace/é", "/sp ace/é"),
        ("/x:,\\", "/x\\:\\,\\\\"),
    ],
)
def test_escape_option_path(path: str, escaped: str) -> None:
    assert escape_option_path(Path(path)) == escaped


def test_options_escape_separators_in_every_path() -> None:
    options = overlay_options([Path("/l/a,b"), Path("/l/c:d")], upper=Path("/u,1"), work=Path("/w:1"))
    assert options.startswith("lowerdir=/l/c\\:d:/l/a\\,b,upperdir=/u\\,1,workdir=/w\\:1,")


@pytest.mark.parametrize(
    ("upper", "work"),
    [(Path("/u"), None), (None, Path("/w"))],
)
def test_upper_and_work_come_together(upper: Path | None, work: Path | None) -> None:
    with pytest.raises(MountError):
        overlay_options(LOWERS, upper=upper, work=work)
    with pytest.raises(MountError):
        overlay_fsconfig(LOWERS, upper=upper, work=work)


def test_no_lowers_is_an_error() -> None:
    with pytest.raises(MountError):
        overlay_options([], upper=None, work=None)
    with pytest.raises(MountError):
        overlay_fsconfig([], upper=None, work=None)


def test_fsconfig_adds_one_lowerdir_per_layer_topmost_first() -> None:
    params = overlay_fsconfig(LOWERS, upper=Path("/m/upper"), work=Path("/m/work"))
    assert params == (
        ("lowerdir+", "/l/top"),
        ("lowerdir+", "/l/mid"),
        ("lowerdir+", "/l/base"),
        ("upperdir", "/m/upper"),
        ("workdir", "/m/work"),
        ("index", "off"),
        ("metacopy", "off"),
        ("redirect_dir", "off"),
        ("xino", "off"),
    )


def test_fsconfig_takes_lowers_verbatim_and_escapes_backslashes_in_upper() -> None:
    params = dict(overlay_fsconfig([Path("/l/a:b,c\\d")], upper=Path("/u\\1:,"), work=Path("/w")))
    assert params["lowerdir+"] == "/l/a:b,c\\d"
    assert params["upperdir"] == "/u\\\\1:,"


def test_fsconfig_has_no_length_limit_on_the_layer_count() -> None:
    lowers = [Path(f"/var/lib/veneer/images/debian/layers/{n:04d}-{'x' * 40}") for n in range(500)]
    params = overlay_fsconfig(lowers, upper=Path("/u"), work=Path("/w"))
    assert [v for k, v in params if k == "lowerdir+"] == [os.fspath(p) for p in reversed(lowers)]


def test_fsconfig_passes_layers_given_as_mount_fds_as_fds() -> None:
    params = overlay_fsconfig([7, 8], upper=Path("/m/upper"), work=Path("/m/work"))
    assert params[:3] == (("lowerdir+", 8), ("lowerdir+", 7), ("upperdir", "/m/upper"))


def test_fsconfig_rejects_values_longer_than_the_kernel_copies() -> None:
    ok = Path("/" + "a" * (FSCONFIG_VALUE_MAX - 1))
    overlay_fsconfig([ok], upper=None, work=None)
    with pytest.raises(MountError) as e:
        overlay_fsconfig([Path(os.fspath(ok) + "b")], upper=None, work=None)
    assert e.value.hint


@pytest.mark.parametrize(
    ("release", "parsed", "lowerdir_add", "mount_fds"),
    [
        ("6.18.44-fc-v595", (6, 18), True, True),
        ("6.15.0", (6, 15), True, True),
        ("6.14.11-300.fc42.x86_64", (6, 14), True, False),
        ("6.8.0-45-generic", (6, 8), True, False),
        ("6.1.0-28-amd64", (6, 1), False, False),
        ("5.19.0", (5, 19), False, False),
        ("garbage", (0, 0), False, False),
    ],
)
def test_kernel_release(release: str, parsed: tuple[int, int], lowerdir_add: bool, mount_fds: bool) -> None:
    assert parse_kernel_release(release) == parsed
    assert supports_lowerdir_add(release) is lowerdir_add
    assert supports_layer_mount_fds(release) is mount_fds


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("/plain", "/plain"),
        ("/with\\040space", "/with space"),
        ("/tab\\011nl\\012", "/tab\tnl\n"),
        ("/back\\134slash", "/back\\slash"),
        ("/comma\\054x", "/comma,x"),
        ("/utf8\\303\\251", "/utf8é"),
    ],
)
def test_unescape_mountinfo(field: str, value: str) -> None:
    assert unescape_mountinfo(field) == value


SAMPLE = (
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n"
    "169 157 254:0 /usr/share/zoneinfo/Etc/UTC /etc/localtime ro,nosuid,nodev shared:35 master:2 - ext4 "
    "/dev/vda rw\n"
    "339 27 0:47 / /tmp/my\\040machine/root rw,relatime - overlay none "
    "rw,lowerdir+=/l/a\\054b,lowerdir+=/l/c,upperdir=/m/up\\134\\134x,workdir=/m/work,uuid=on\n"
    "this line is not mountinfo\n"
)


def test_parse_mountinfo() -> None:
    entries = parse_mountinfo(SAMPLE)
    assert [e.mount_point for e in entries] == ["/", "/etc/localtime", "/tmp/my machine/root"]
    assert entries[1] == MountInfo(
        mount_id=169,
        parent_id=157,
        device="254:0",
        root="/usr/share/zoneinfo/Etc/UTC",
        mount_point="/etc/localtime",
        options="ro,nosuid,nodev",
        fstype="ext4",
        source="/dev/vda",
        super_options="rw",
    )
    assert entries[2].fstype == "overlay"
    assert entries[2].source == "none"


def test_parse_super_options_unescapes_values() -> None:
    overlay = parse_mountinfo(SAMPLE)[2]
    assert parse_super_options(overlay.super_options) == (
        ("rw", ""),
        ("lowerdir+", "/l/a,b"),
        ("lowerdir+", "/l/c"),
        ("upperdir", "/m/up\\\\x"),
        ("workdir", "/m/work"),
        ("uuid", "on"),
    )


def test_overlay_using_finds_the_upper_and_work_dir() -> None:
    entries = parse_mountinfo(SAMPLE)
    # The kernel shows the upperdir as given, backslash-escaped: "/m/up\\x" is the directory "/m/up\x".
    assert overlay_using(Path("/m/up\\x"), entries) == "/tmp/my machine/root"
    assert overlay_using(Path("/m/work"), entries) == "/tmp/my machine/root"
    assert overlay_using(Path("/l/c"), entries) is None
    assert overlay_using(Path("/m/other"), entries) is None


def _stat(mode: int, rdev: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, 0, 0, 0, 0, 0, 0), {"st_rdev": rdev})


@pytest.mark.parametrize(
    ("st", "whiteout"),
    [
        (_stat(stat.S_IFCHR | 0o000, os.makedev(0, 0)), True),
        (_stat(stat.S_IFCHR | 0o666, os.makedev(1, 3)), False),
        (_stat(stat.S_IFBLK | 0o600, os.makedev(0, 0)), False),
        (_stat(stat.S_IFREG | 0o644, 0), False),
    ],
)
def test_is_whiteout(st: os.stat_result, whiteout: bool) -> None:
    assert is_whiteout(st) is whiteout


def test_is_opaque_is_false_without_the_xattr(tmp_path: Path) -> None:
    assert not is_opaque(tmp_path)
    assert not is_opaque(tmp_path / "missing")
