"""A hostile or careless registry against `veneer image pull`: credentials go only where they belong, a
gzip bomb layer or an oversized config is refused with the limit named and nothing stored, and
credentials can be given without putting them on the command line."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from tests.integration.layouts import entry, layer_tar, write_layout
from tests.integration.registries import (
    PASSWORD,
    USER,
    BuiltImages,
    LayoutRegistry,
    free_port,
    run_registry,
)

pytestmark = [pytest.mark.root]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No credentials but those a test writes (not root's own ~/.docker or auth.json)."""
    (tmp_path / "docker").mkdir()
    (tmp_path / "xdg").mkdir()
    return {"DOCKER_CONFIG": str(tmp_path / "docker"), "XDG_RUNTIME_DIR": str(tmp_path / "xdg")}


class CaptureServer:
    """An HTTP server on 127.0.0.1 that records every request's path and Authorization header.

    As a registry (`challenge` set) it answers every /v2/ request with 401 and that challenge; as a
    token service it hands out a token to anyone."""

    def __init__(self, *, challenge: str | None = None) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.challenge = challenge
        self.port = free_port()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.seen.append((self.path, self.headers.get("Authorization")))
                if server.challenge is not None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", server.challenge)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": "anonymous-token"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    server = CaptureServer()
    yield server
    server.close()


def test_credentials_never_go_to_a_plain_http_realm_elsewhere(
    store: Store, capture: CaptureServer, env: dict[str, str]
) -> None:
    realm = f"http://127.0.0.1:{capture.port}/token"
    registry = CaptureServer(challenge=f'Bearer realm="{realm}",service="evil",scope="repository:x:pull"')
    try:
        ref = f"127.0.0.1:{registry.port}/team/app:1"
        store.veneer("image", "pull", "x", ref, "--creds", f"{USER}:{PASSWORD}", env=env, ok=(1,))
        (Path(env["XDG_RUNTIME_DIR"]) / "containers").mkdir()
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (Path(env["XDG_RUNTIME_DIR"]) / "containers/auth.json").write_text(
            json.dumps({"auths": {f"127.0.0.1:{registry.port}": {"auth": auth}}})
        )
        store.veneer("image", "pull", "y", ref, env=env, ok=(1,))
    finally:
        registry.close()
    assert capture.seen, "the token realm was never asked"
    leaked = [
        header for _, header in capture.seen + registry.seen if header and PASSWORD in _decoded(header)
    ]
    assert leaked == [], "basic credentials were sent to a plain-http realm on another port"


def _decoded(header: str) -> str:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return header
    return base64.b64decode(value).decode(errors="replace")


def assert_nothing_stored(store: Store) -> None:
    assert json.loads(store.veneer("image", "list", "--json").stdout) == []
    assert not any((store.root / "layers").glob("*"))
    assert not any((store.root / ".staging").glob("*"))


def test_gzip_bomb_layer_is_refused_with_the_limit(
    store: Store, tmp_path: Path, env: dict[str, str]
) -> None:
    bomb = layer_tar([entry("zeros", tarfile.REGTYPE, data=bytes(48 << 20))])
    registry = LayoutRegistry(write_layout(tmp_path / "bomb", [bomb]))
    try:
        ref = f"{registry.host}/bomb:latest"
        refused = store.veneer("image", "pull", "x", ref, "--max-layer-size", "16M", env=env, ok=(1,))
        assert "16 MiB" in refused.stderr and "--max-layer-size" in refused.stderr
        assert_nothing_stored(store)
        store.veneer("image", "pull", "x", ref, "--max-layer-size", "64M", env=env)
    finally:
        registry.close()


def with_config_of(layout: Path, size: int) -> Path:
    """Give the layout's image a valid config padded to `size` bytes."""
    blobs = layout / "blobs" / "sha256"

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    manifest = json.loads((blobs / entry["digest"].removeprefix("sha256:")).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes())
    config["padding"] = ""
    config["padding"] = "x" * (size - len(json.dumps(config)))
    manifest["config"].update(put(json.dumps(config).encode()))
    entry.update(put(json.dumps(manifest).encode()))
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def test_oversized_config_is_refused_before_its_download(
    store: Store, tmp_path: Path, env: dict[str, str]
) -> None:
    layer = layer_tar([entry("hello", data=b"hello\n")])
    registry = LayoutRegistry(with_config_of(write_layout(tmp_path / "big", [layer]), 5 << 20))
    try:
        refused = store.veneer("image", "pull", "x", f"{registry.host}/big:latest", env=env, ok=(1,))
        assert "over the limit of 4 MiB" in refused.stderr
        assert_nothing_stored(store)
        assert not list((store.root / "blobs").glob("*/*")), "the config was downloaded"
    finally:
        registry.close()


def test_credentials_from_stdin_a_file_or_auth_json(
    store: Store, tmp_path: Path, built_images: BuiltImages, env: dict[str, str]
) -> None:
    with run_registry(tmp_path / "registry", auth="htpasswd") as registry:
        ref = registry.push(built_images.source("other"), "private/other:1")
        argv = ["image", "pull", "a", ref, "--username", USER, "--password-stdin"]
        store.veneer(*argv, input=f"{PASSWORD}\n", env=env)
        assert PASSWORD not in " ".join(argv)
        authfile = tmp_path / "auth.json"
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        authfile.write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
        store.veneer("image", "pull", "b", ref, "--authfile", str(authfile), env=env)
        (Path(env["XDG_RUNTIME_DIR"]) / "containers").mkdir()
        authfile.rename(Path(env["XDG_RUNTIME_DIR"]) / "containers/auth.json")
        store.veneer("image", "pull", "c", ref, env=env)
        # Still accepted, with a warning: the password shows in the process list.
        old = store.veneer("image", "pull", "d", ref, "--creds", f"{USER}:{PASSWORD}", env=env)
        assert "process list" in old.stderr
