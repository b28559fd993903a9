"""`veneer image pull` against Debian's docker-registry on 127.0.0.1, with images built by buildah and
pushed by skopeo: layers, deletions, an index, the blob cache, resumed downloads, auth, damaged blobs."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from tests.integration.layouts import entry, layer_tar, stack, write_layout
from tests.integration.registries import (
    PASSWORD,
    USER,
    BuiltImages,
    LayoutRegistry,
    Registry,
    run_registry,
)
from veneer.util import proc

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="session")
def open_registry(tmp_path_factory: pytest.TempPathFactory, built_images: BuiltImages) -> Iterator[Registry]:
    with run_registry(tmp_path_factory.mktemp("registry-open") / "r", auth="none") as registry:
        registry.push(built_images.source("layers"), "test/layers:1")
        registry.push(built_images.source("other"), "test/other:1")
        registry.push(built_images.source("multi"), "test/multi:1", all_platforms=True)
        docker_list = ("--format", "v2s2")  # a Docker manifest list rather than an OCI index
        registry.push(
            built_images.source("multi"), "test/mdocker:1", all_platforms=True, options=docker_list
        )
        registry.push(built_images.source("layers"), "test/docker:1", options=("--format", "v2s2"))
        # Through a dir: copy, since skopeo reuses the gzip blobs it knows the registry has when pushing.
        zstd_dir = tmp_path_factory.mktemp("zstd") / "dir"
        zstd = ["--format", "oci", "--dest-compress", "--dest-compress-format", "zstd"]
        proc.run(["skopeo", "copy", "--quiet", *zstd, built_images.source("layers"), f"dir:{zstd_dir}"])
        registry.push(f"dir:{zstd_dir}", "test/zstd:1")
        yield registry


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No Docker credentials but those a test writes (not root's own ~/.docker)."""
    (tmp_path / "docker").mkdir()
    return {"DOCKER_CONFIG": str(tmp_path / "docker")}


def image_layers(store: Store, image: str) -> list[Path]:
    return stack(store.root, image)


def test_pull_applies_layers_and_deletions_and_runs(
    store: Store, open_registry: Registry, env: dict[str, str]
) -> None:
    out = store.veneer("image", "pull", "img", f"{open_registry.host}/test/layers:1", env=env).stdout
    assert "Pulled image 'img' (5 layers" in out
    layers = image_layers(store, "img")
    assert len(layers) == 5
    gone = layers[2] / "etc" / "gone"
    assert stat.S_ISCHR(gone.lstat().st_mode) and gone.lstat().st_rdev == 0  # OCI .wh.gone -> whiteout
    assert (layers[0] / "bin" / "busybox").stat().st_mode & 0o111
    store.veneer("create", "m", "--from", "img", "--network", "none")
    script = "cat /etc/hello; test -e /etc/gone || echo no-gone; ls /opt/d"
    result = store.veneer("run", "m", "--", "sh", "-c", script)
    assert result.stdout.split() == ["hello", "from", "a", "layer", "no-gone", "c"]
    shown = json.loads(store.veneer("image", "show", "img", "--json").stdout)
    assert "pull 127.0.0.1" in json.dumps(shown["revisions"][0])  # its origin (or command)


def test_repull_and_shared_layers_download_no_blob_twice(
    store: Store, open_registry: Registry, env: dict[str, str]
) -> None:
    store.veneer("image", "pull", "a", f"{open_registry.host}/test/layers:1", env=env)
    before = open_registry.blob_gets()
    store.veneer("image", "pull", "b", f"{open_registry.host}/test/layers:1", env=env)
    assert open_registry.blob_gets() == before  # from the cache and the store: nothing downloaded
    assert image_layers(store, "a") == image_layers(store, "b")  # the same layers, shared on disk
    store.veneer("image", "pull", "c", f"{open_registry.host}/test/other:1", env=env)
    fetched = open_registry.blob_gets()[len(before) :]
    assert len(fetched) == 2  # its config and its one layer of its own
    assert image_layers(store, "c")[:2] == image_layers(store, "a")[:2]
    # With the blob cache gone, the layers stored already are still not downloaded again.
    store.veneer("image", "rm", "b")
    os.system(f"rm -rf {store.root / 'blobs'}")
    store.veneer("image", "pull", "d", f"{open_registry.host}/test/layers:1", env=env)
    refetched = open_registry.blob_gets()[len(before) + 2 :]
    assert len(refetched) == 1  # the config only


@pytest.mark.parametrize(
    ("repo", "media_type"),
    [
        ("test/multi:1", "application/vnd.oci.image.index.v1+json"),
        ("test/mdocker:1", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ],
)
def test_pull_index_picks_host_or_requested_platform(
    store: Store, open_registry: Registry, env: dict[str, str], repo: str, media_type: str
) -> None:
    ref = f"{open_registry.host}/{repo}"
    raw = proc.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], capture=True)
    assert json.loads(raw.stdout)["mediaType"] == media_type
    store.veneer("image", "pull", "native", ref, env=env)
    assert (image_layers(store, "native")[1] / "etc" / "hello").exists()
    store.veneer("image", "pull", "arm", ref, "--platform", "linux/arm64", env=env)
    assert (image_layers(store, "arm")[-1] / "arm64-only").exists()
    bad = store.veneer("image", "pull", "s390", ref, "--platform", "linux/s390x", env=env, ok=(1,))
    assert "has no image for linux/s390x" in bad.stderr and "linux/arm64" in bad.stderr
    assert "s390" not in store.veneer("image", "list").stdout


def test_pull_resumes_an_interrupted_download(
    store: Store, open_registry: Registry, built_images: BuiltImages, env: dict[str, str]
) -> None:
    index = json.loads((built_images.layout / "index.json").read_text())
    manifest_digest = next(
        m["digest"]
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == "layers"
    )
    blobs = built_images.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest.removeprefix("sha256:")).read_text())
    big = manifest["layers"][0]["digest"].removeprefix("sha256:")
    data = (blobs / big).read_bytes()
    partial = store.root / "blobs" / "partial"
    partial.mkdir(parents=True)
    (partial / big).write_bytes(data[: len(data) // 2])
    store.veneer("image", "pull", "img", f"{open_registry.host}/test/layers:1", env=env)
    assert (store.root / "blobs" / "sha256" / big).read_bytes() == data
    assert not (partial / big).exists()


def test_pull_refuses_bad_digest_and_truncated_blob(
    store: Store, tmp_path: Path, built_images: BuiltImages, env: dict[str, str]
) -> None:
    with run_registry(tmp_path / "registry", auth="none") as registry:
        ref = registry.push(built_images.source("layers"), "test/bad:1")
        data = tmp_path / "registry" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
        layer_files = sorted(data.glob("*/*/data"), key=lambda p: p.stat().st_size)
        biggest = layer_files[-1]
        content = biggest.read_bytes()
        biggest.write_bytes(content[:100] + bytes([content[100] ^ 0xFF]) + content[101:])
        bad = store.veneer("image", "pull", "bad", ref, env=env, ok=(1,))
        assert "does not match its digest" in bad.stderr
        assert "nothing was published" in bad.stderr
        biggest.write_bytes(content[: len(content) // 2])
        short = store.veneer("image", "pull", "bad", ref, env=env, ok=(1,))
        assert "ended after" in short.stderr, short.stderr
        assert json.loads(store.veneer("image", "list", "--json").stdout) == []
        assert not any((store.root / "layers").glob("*"))
        assert not (store.root / "blobs" / "sha256" / biggest.parent.name).exists()
        biggest.write_bytes(content)
        store.veneer("image", "pull", "good", ref, env=env)  # resumes what the truncated pull received


def test_pull_with_basic_auth(
    store: Store, tmp_path: Path, built_images: BuiltImages, env: dict[str, str]
) -> None:
    with run_registry(tmp_path / "registry", auth="htpasswd") as registry:
        ref = registry.push(built_images.source("other"), "private/other:1")
        denied = store.veneer("image", "pull", "x", ref, env=env, ok=(1,))
        assert "needs credentials" in denied.stderr and "--password-stdin" in denied.stderr
        wrong = store.veneer("image", "pull", "x", ref, "--creds", f"{USER}:nope", env=env, ok=(1,))
        assert "refused" in wrong.stderr
        store.veneer("image", "pull", "x", ref, "--creds", f"{USER}:{PASSWORD}", env=env)
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(
            json.dumps({"auths": {registry.host: {"auth": auth}}})
        )
        store.veneer("image", "pull", "y", ref, env=env)


def test_pull_with_token_auth_as_docker_hub_does(
    store: Store, tmp_path: Path, built_images: BuiltImages, env: dict[str, str]
) -> None:
    with run_registry(tmp_path / "registry", auth="token") as registry:
        assert registry.token is not None
        env = {**env, "SSL_CERT_FILE": str(registry.token.tls_bundle)}
        ref = registry.push(built_images.source("layers"), "team/app:1")
        denied = store.veneer("image", "pull", "x", ref, env=env, ok=(1,))
        assert "refused access" in denied.stderr
        argv = ["image", "pull", "x", ref, "--username", USER, "--password-stdin"]
        store.veneer(*argv, input=f"{PASSWORD}\n", env=env)
        assert (USER, "repository:team/app:pull") in registry.token.requests
        store.veneer("create", "m", "--from", "x", "--network", "none")
        assert store.veneer("run", "m", "--", "cat", "/etc/hello").stdout == "hello from a layer\n"
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(
            json.dumps({"auths": {registry.host: {"auth": auth}}})
        )
        store.veneer("image", "pull", "y", ref, env=env)


def largest_file(directory: Path) -> int:
    """The size of the largest file in `directory`; smaller downloads finish and leave it meanwhile."""
    sizes = [0]
    for path in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            sizes.append(path.stat().st_size)
    return max(sizes)


def test_killed_pull_leaves_nothing_and_the_next_resumes(
    store: Store, built_images: BuiltImages, env: dict[str, str]
) -> None:
    registry = LayoutRegistry(built_images.layout)
    try:
        registry.stall_after = 300_000  # only the busybox layer (about 1 MB) is larger
        ref = f"{registry.host}/test/layers:layers"
        process = proc.spawn(store.argv("image", "pull", "img", ref), env={**store.env(), **env})
        try:
            assert registry.stalled.wait(30), "the pull never reached the big layer"
            partial = store.root / "blobs" / "partial"
            assert proc.wait_until(lambda: largest_file(partial) >= 300_000, timeout=10)
        finally:
            process.kill()
            process.wait()
        registry.release.set()
        store.veneer("image", "list")  # the next command sweeps what the killed one left
        assert json.loads(store.veneer("image", "list", "--json").stdout) == []
        assert not any((store.root / "layers").glob("*"))
        assert not any((store.root / ".staging").glob("*"))
        registry.stall_after = None
        registry.ranges.clear()
        store.veneer("image", "pull", "img", ref, env=env)
        assert "bytes=300000-" in registry.ranges
        store.veneer("create", "m", "--from", "img", "--network", "none")
        assert store.veneer("run", "m", "--", "cat", "/etc/hello").stdout == "hello from a layer\n"
    finally:
        registry.close()


def test_interrupted_pull_exits_at_once(
    store: Store, built_images: BuiltImages, env: dict[str, str]
) -> None:
    registry = LayoutRegistry(built_images.layout)
    try:
        registry.stall_after = 300_000
        process = proc.spawn(
            store.argv("image", "pull", "img", f"{registry.host}/test/layers:layers"),
            env={**store.env(), **env},
        )
        try:
            assert registry.stalled.wait(30), "the pull never reached the big layer"
            process.send_signal(signal.SIGINT)
            started = time.monotonic()
            assert process.wait(timeout=20) == 130
            assert time.monotonic() - started < 5  # not after the stalled download's socket timeout
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert json.loads(store.veneer("image", "list", "--json").stdout) == []
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("repo", "media_type"),
    [
        ("test/docker:1", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ("test/zstd:1", "application/vnd.oci.image.layer.v1.tar+zstd"),
    ],
)
def test_pull_docker_schema2_and_zstd_layers(
    store: Store, open_registry: Registry, env: dict[str, str], repo: str, media_type: str
) -> None:
    manifest = json.loads(
        proc.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{open_registry.host}/{repo}"],
            capture=True,
        ).stdout
    )
    assert {layer["mediaType"] for layer in manifest["layers"]} == {media_type}
    store.veneer("image", "pull", "img", f"{open_registry.host}/{repo}", env=env)
    store.veneer("create", "m", "--from", "img", "--network", "none")
    out = store.veneer(
        "run", "m", "--", "sh", "-c", "cat /etc/hello; test -e /etc/gone || echo no-gone; ls /opt/d"
    )
    assert out.stdout == "hello from a layer\nno-gone\nc\n"


def test_repeated_layer_is_pulled_again_when_stored_once(
    store: Store, tmp_path: Path, env: dict[str, str]
) -> None:
    # Docker images often repeat one empty layer; each occurrence is a layer of its own (overlayfs takes a
    # directory once per mount), so a second copy's blob is needed when only one copy is stored.
    busybox = Path("/bin/busybox").read_bytes()
    base = [entry("usr/", tarfile.DIRTYPE), entry("bin/busybox", data=busybox, mode=0o755)]
    base += [entry("bin/cat", tarfile.SYMTYPE, linkname="busybox")]
    empty, top = layer_tar([]), layer_tar([entry("f", data=b"f\n")])
    one = LayoutRegistry(write_layout(tmp_path / "one", [layer_tar(base), empty]))
    two = LayoutRegistry(write_layout(tmp_path / "two", [layer_tar(base), empty, top, empty]))
    try:
        store.veneer("image", "pull", "one", f"{one.host}/x/one:latest", env=env)
        proc.run(["rm", "-rf", store.root / "blobs"])
        store.veneer("image", "pull", "two", f"{two.host}/x/two:latest", env=env)
        store.veneer("image", "pull", "again", f"{two.host}/x/two:latest", env=env)
    finally:
        one.close()
        two.close()
    first, second, third = (image_layers(store, name) for name in ("one", "two", "again"))
    assert second[:2] == first and len(set(second)) == 4
    assert third == second  # every layer shared, the repeated one too (one stored copy per occurrence)
    store.veneer("create", "m", "--from", "again", "--network", "none")
    assert store.veneer("run", "m", "--", "cat", "/f").stdout == "f\n"


def test_concurrent_pulls_share_downloads_and_layers(
    store: Store, open_registry: Registry, env: dict[str, str]
) -> None:
    ref = f"{open_registry.host}/test/layers:1"
    pulls = [proc.spawn(store.argv("image", "pull", name, ref), env={**store.env(), **env}) for name in "ab"]
    assert [p.wait(timeout=120) for p in pulls] == [0, 0]
    assert image_layers(store, "a") == image_layers(store, "b")
    assert len(list((store.root / "layers").iterdir())) == 5


def test_pull_by_digest_checks_the_manifest(
    store: Store, open_registry: Registry, env: dict[str, str]
) -> None:
    ref = f"{open_registry.host}/test/layers:1"
    inspect = ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"]
    digest = json.loads(proc.run(inspect, capture=True).stdout)["Digest"]
    store.veneer("image", "pull", "pinned", f"{open_registry.host}/test/layers@{digest}", env=env)
    # A digest the registry does not have: the pinned manifest is looked up by digest and refused.
    other = "sha256:" + "0" * 64
    missing = store.veneer(
        "image", "pull", "bad", f"{open_registry.host}/test/layers@{other}", env=env, ok=(1,)
    )
    assert "has no manifest" in missing.stderr
