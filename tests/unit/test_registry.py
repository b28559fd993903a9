"""veneer.images.registry: challenges, credentials and where they may go (no network); the layer size
limit of veneer.images.transfer."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from veneer.errors import ImageError, UsageError
from veneer.images.registry import (
    Credentials,
    auth_file_paths,
    docker_config_path,
    is_loopback,
    load_default_credentials,
    load_docker_credentials,
    may_send_credentials,
    parse_challenge,
    parse_creds,
    parse_password,
)
from veneer.images.transfer import LayerTooLarge, extract_layer, format_size


def test_parse_challenge() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"'
    assert parse_challenge(header) == (
        "bearer",
        {
            "realm": "https://auth.docker.io/token",
            "service": "registry.docker.io",
            "scope": "repository:library/debian:pull",
        },
    )
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


def test_parse_creds() -> None:
    assert parse_creds("alice:pa:ss") == Credentials(username="alice", password="pa:ss")
    for bad in ("alice", ":x"):
        with pytest.raises(UsageError):
            parse_creds(bad)
    assert Credentials(username="a", password="b").basic() == "Basic " + base64.b64encode(b"a:b").decode()


def test_docker_config_credentials(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    assert load_docker_credentials("r.io", config) is None
    auth = base64.b64encode(b"bob:pw").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "127.0.0.1:5000": {"auth": auth},
                    "https://index.docker.io/v1/": {"auth": auth},
                    "https://q.io": {"username": "u", "password": "p"},
                }
            }
        )
    )
    assert load_docker_credentials("127.0.0.1:5000", config) == Credentials(username="bob", password="pw")
    assert load_docker_credentials("docker.io", config) == Credentials(username="bob", password="pw")
    assert load_docker_credentials("q.io", config) == Credentials(username="u", password="p")
    assert load_docker_credentials("other.io", config) is None
    config.write_text("{not json")
    with pytest.raises(ImageError, match="Cannot read the credentials"):
        load_docker_credentials("r.io", config)


def test_docker_config_path_and_loopback() -> None:
    assert docker_config_path({"DOCKER_CONFIG": "/d"}) == Path("/d/config.json")
    assert docker_config_path({"HOME": "/h"}) == Path("/h/.docker/config.json")
    for host in ("127.0.0.1:5000", "localhost:1", "localhost", "[::1]:5000", "127.1.2.3"):
        assert is_loopback(host), host
    for host in ("r.io", "localhost.example.com:5000", "127.example.com", "[2001:db8::1]:5000"):
        assert not is_loopback(host), host


@pytest.mark.parametrize(
    ("url", "registry", "allowed"),
    [
        ("https://auth.docker.io/token", "registry-1.docker.io", True),
        ("https://127.0.0.1:5000/v2/x", "127.0.0.1:5000", True),
        ("http://127.0.0.1:5000/v2/x", "127.0.0.1:5000", True),  # the loopback registry itself
        ("http://127.0.0.1:5001/token", "127.0.0.1:5000", False),  # another port: anyone's
        ("http://localhost:5000/token", "127.0.0.1:5000", False),
        ("http://registry.example/token", "registry.example", False),  # --plain-http elsewhere
        ("file:///etc/shadow", "127.0.0.1:5000", False),
        ("ftp://127.0.0.1:5000/x", "127.0.0.1:5000", False),
    ],
)
def test_may_send_credentials(url: str, registry: str, allowed: bool) -> None:
    assert may_send_credentials(url, registry) is allowed


def test_auth_files_in_containers_order(tmp_path: Path) -> None:
    env = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1", "REGISTRY_AUTH_FILE": "/etc/auth.json"}
    assert auth_file_paths(env) == [
        Path("/etc/auth.json"),
        Path("/run/user/1/containers/auth.json"),
        Path("/home/u/.config/containers/auth.json"),
        Path("/home/u/.docker/config.json"),
    ]
    auth = base64.b64encode(b"alice:s3cret").decode()
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers/auth.json").write_text(json.dumps({"auths": {"r.example": {"auth": auth}}}))
    creds = load_default_credentials(
        "r.example", {"HOME": str(tmp_path / "none"), "XDG_RUNTIME_DIR": str(tmp_path)}
    )
    assert creds is not None and (creds.username, creds.password) == ("alice", "s3cret")
    assert load_default_credentials("other.example", {"XDG_RUNTIME_DIR": str(tmp_path)}) is None


def test_parse_password() -> None:
    creds = parse_password("alice", "s3cret\nignored\n")
    assert (creds.username, creds.password) == ("alice", "s3cret")
    for username, text in (("", "x\n"), ("alice", ""), ("alice", "\n")):
        with pytest.raises(UsageError):
            parse_password(username, text)


def test_gzip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        info = tarfile.TarInfo("zeros")
        info.size = 8 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    blob = tmp_path / "layer.gz"
    blob.write_bytes(gzip.compress(out.getvalue()))
    (tmp_path / "tree").mkdir()
    with pytest.raises(LayerTooLarge) as raised:
        extract_layer(blob, tmp_path / "tree", diff_id=None, max_bytes=1 << 20)
    assert "1 MiB" in raised.value.message and "--max-layer-size 2M" in (raised.value.hint or "")
    assert list((tmp_path / "tree").iterdir()) == []


def test_format_size() -> None:
    assert [format_size(n) for n in (32 << 30, 16 << 20, 1536, 1000)] == [
        "32 GiB",
        "16 MiB",
        "1536 bytes",
        "1000 bytes",
    ]
