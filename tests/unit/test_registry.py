"""veneer.images.registry: challenges and credentials (no network)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from veneer.errors import ImageError, UsageError
from veneer.images.registry import (
    Credentials,
    docker_config_path,
    is_loopback,
    load_docker_credentials,
    parse_challenge,
    parse_creds,
)


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
    with pytest.raises(ImageError, match="Cannot read the Docker credentials"):
        load_docker_credentials("r.io", config)


def test_docker_config_path_and_loopback() -> None:
    assert docker_config_path({"DOCKER_CONFIG": "/d"}) == Path("/d/config.json")
    assert docker_config_path({"HOME": "/h"}) == Path("/h/.docker/config.json")
    for host in ("127.0.0.1:5000", "localhost:1", "localhost", "[::1]:5000", "127.1.2.3"):
        assert is_loopback(host), host
    for host in ("r.io", "localhost.example.com:5000", "127.example.com", "[2001:db8::1]:5000"):
        assert not is_loopback(host), host
