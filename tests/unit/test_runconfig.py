"""Image run configs: parsing (hostile values refused), Podman's command rules, users resolved in a root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from veneer.errors import ImageError, MachineError, UsageError
from veneer.images.runconfig import RunConfig, parse_run_config, signal_number
from veneer.machines.app import app_command, resolve_app, resolve_ids

FULL = {
    "Entrypoint": ["/bin/app", "--flag"],
    "Cmd": ["serve"],
    "Env": ["PATH=/usr/bin:/bin", "GREETING=a=b", "GREETING=c"],
    "User": "1000:1000",
    "WorkingDir": "/srv//app/",
    "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "9000": {}},
    "Labels": {"b": "2", "a": "1"},
    "StopSignal": "QUIT",
}


def test_full_config_is_kept_and_normalized() -> None:
    config = parse_run_config(FULL, "img")
    assert config == RunConfig(
        entrypoint=("/bin/app", "--flag"),
        cmd=("serve",),
        env=(("PATH", "/usr/bin:/bin"), ("GREETING", "c")),
        user="1000:1000",
        working_dir="/srv/app",
        exposed_ports=("53/udp", "8080/tcp", "9000/tcp"),
        labels=(("a", "1"), ("b", "2")),
        stop_signal="SIGQUIT",
    )
    assert parse_run_config(config.to_oci(), "img") == config


@pytest.mark.parametrize("empty", [None, {}, {"Cmd": None, "Env": [], "User": ""}])
def test_no_settings_is_no_config(empty: Any) -> None:
    assert parse_run_config(empty, "img") is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("Cmd", "/bin/sh"),
        ("Cmd", ["a\0b"]),
        ("Entrypoint", ["x"] * 2000),
        ("Env", ["NOEQUALS"]),
        ("Env", ["BAD NAME=1"]),
        ("Env", ["A=" + "x" * (300 << 10)]),
        ("User", "root:root:root"),
        ("User", "../etc"),
        ("User", "100000"),
        ("User", "a:99999999"),
        ("User", 0),
        ("WorkingDir", "relative"),
        ("WorkingDir", "/srv/../../etc"),
        ("WorkingDir", "/a\nb"),
        ("ExposedPorts", {"70000/tcp": {}}),
        ("ExposedPorts", {"80/icmp": {}}),
        ("Labels", {"a": 1}),
        ("StopSignal", "SIGKILL"),
        ("StopSignal", "SIGNOPE"),
        ("StopSignal", "999"),
    ],
)
def test_hostile_values_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ImageError, match=field):
        parse_run_config({field: value}, "img")


def test_signals() -> None:
    config = parse_run_config({"StopSignal": "SIGRTMIN+3"}, "i")
    assert config is not None and signal_number(config.stop_signal or "") == 37
    assert parse_run_config({"StopSignal": "15"}, "i") == RunConfig(stop_signal="SIGTERM")


@pytest.mark.parametrize(
    "entrypoint, cmd, command, override, expected",
    [
        ((), ("sh",), (), None, ("sh",)),
        ((), ("sh",), ("ls",), None, ("ls",)),
        (("/app",), ("a",), (), None, ("/app", "a")),
        (("/app",), ("a",), ("b",), None, ("/app", "b")),
        (("/app",), ("a",), (), ("/other",), ("/other",)),
        (("/app",), ("a",), ("c",), (), ("c",)),
    ],
)
def test_podman_command_rules(
    entrypoint: tuple[str, ...],
    cmd: tuple[str, ...],
    command: tuple[str, ...],
    override: tuple[str, ...] | None,
    expected: tuple[str, ...],
) -> None:
    config = RunConfig(entrypoint=entrypoint, cmd=cmd)
    assert app_command(config, command, entrypoint=override) == expected


def make_root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n"
    )
    (tmp_path / "etc/group").write_text("root:x:0:\nstaff:x:50:app\n")
    return tmp_path


@pytest.mark.parametrize(
    "spec, ids, home",
    [
        ("app", (1000, 1001), "/home/app"),
        ("1000", (1000, 1001), "/home/app"),
        ("app:staff", (1000, 50), "/home/app"),
        ("4242", (4242, 0), "/"),
        ("4242:7", (4242, 7), "/"),
    ],
)
def test_users_resolve_in_the_machine(tmp_path: Path, spec: str, ids: tuple[int, int], home: str) -> None:
    assert resolve_ids(make_root(tmp_path), spec) == (ids, home)


def test_unknown_names_and_symlinked_passwd_are_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with pytest.raises(MachineError, match="No user 'nobody'"):
        resolve_ids(root, "nobody")
    with pytest.raises(MachineError, match="No group 'wheel'"):
        resolve_ids(root, "app:wheel")
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to("/etc/passwd")  # the host's: never read
    with pytest.raises(MachineError):
        resolve_ids(root, "root")


def test_app_process_merges_caller_over_image(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    config = RunConfig(cmd=("serve",), env=(("A", "1"), ("B", "2")), user="app", working_dir="/srv")
    app = resolve_app(root, config, env=(("B", "3"),))
    assert app.command == ("serve",)
    assert dict(app.env) == {"A": "1", "B": "3", "HOME": "/home/app"}
    assert (app.workdir, app.ids) == ("/srv", (1000, 1001))
    as_root = resolve_app(root, config, user="root", workdir="/tmp", command=("ls",))
    assert (as_root.command, as_root.workdir, as_root.ids) == (("ls",), "/tmp", None)
    with pytest.raises(UsageError, match="Missing command"):
        resolve_app(root, None)
