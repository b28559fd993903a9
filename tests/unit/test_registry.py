"""Where a registry client may send credentials, where it looks for them, and the layer size limit."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from veneer.errors import UsageError
from veneer.images.registry import (
    auth_file_paths,
    load_default_credentials,
    may_send_credentials,
    parse_password,
)
from veneer.images.transfer import LayerTooLarge, extract_layer, format_size


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
