"""veneer.images.oci: references, platforms, manifests and indexes (pure)."""

from __future__ import annotations

import json

import pytest

from veneer.errors import ImageError, UsageError
from veneer.images.oci import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    Descriptor,
    Platform,
    Reference,
    check_layers,
    host_platform_of,
    load_json,
    media_type_of,
    parse_config,
    parse_index,
    parse_manifest,
    parse_platform,
    parse_reference,
    select_platform,
)

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("debian", Reference(registry="docker.io", repository="library/debian", tag="latest", digest=None)),
        (
            "debian:bookworm",
            Reference(registry="docker.io", repository="library/debian", tag="bookworm", digest=None),
        ),
        ("team/app:1.0", Reference(registry="docker.io", repository="team/app", tag="1.0", digest=None)),
        (
            "index.docker.io/x",
            Reference(registry="docker.io", repository="library/x", tag="latest", digest=None),
        ),
        (
            "127.0.0.1:5000/a/b",
            Reference(registry="127.0.0.1:5000", repository="a/b", tag="latest", digest=None),
        ),
        ("localhost/a:t", Reference(registry="localhost", repository="a", tag="t", digest=None)),
        ("quay.io/a/b/c:v", Reference(registry="quay.io", repository="a/b/c", tag="v", digest=None)),
        (f"ghcr.io/a@{D}", Reference(registry="ghcr.io", repository="a", tag=None, digest=D)),
        (f"r.io:443/a:t@{D}", Reference(registry="r.io:443", repository="a", tag="t", digest=D)),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text", ["Debian", "a/../b", "x@sha256:12", "r.io/a:t:u", "", "a//b", "x:"])
def test_parse_reference_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_reference(text)


def test_reference_api_host_and_manifest_reference() -> None:
    hub = parse_reference("debian")
    assert (hub.api_host, hub.reference, str(hub)) == (
        "registry-1.docker.io",
        "latest",
        "docker.io/library/debian:latest",
    )
    assert parse_reference(f"q.io/a:t@{D}").reference == D


def test_platforms() -> None:
    assert parse_platform("linux/arm/v7") == Platform(os="linux", architecture="arm", variant="v7")
    assert str(parse_platform("linux/amd64")) == "linux/amd64"
    for bad in ("linux", "linux/", "a/b/c/d"):
        with pytest.raises(UsageError):
            parse_platform(bad)
    assert host_platform_of("x86_64") == Platform(os="linux", architecture="amd64")
    assert host_platform_of("aarch64") == Platform(os="linux", architecture="arm64")
    assert host_platform_of("armv7l") == Platform(os="linux", architecture="arm", variant="v7")


def _entry(arch: str, variant: str | None = None, digest: str = D) -> Descriptor:
    return Descriptor(
        media_type=DOCKER_MANIFEST,
        digest=digest,
        size=1,
        platform=Platform(os="linux", architecture=arch, variant=variant),
    )


def test_select_platform() -> None:
    b, c = "sha256:" + "b" * 64, "sha256:" + "c" * 64
    entries = (_entry("amd64"), _entry("arm64", "v8", b), _entry("arm", "v7", c))
    assert select_platform(entries, Platform(os="linux", architecture="arm64"), "x").digest == b
    assert select_platform(entries, Platform(os="linux", architecture="arm", variant="v7"), "x").digest == c
    with pytest.raises(ImageError, match="offers: linux/amd64, linux/arm/v7, linux/arm64/v8"):
        select_platform(entries, Platform(os="linux", architecture="s390x"), "x")
    # A wanted variant matches an entry that names none.
    loose = (_entry("arm64"),)
    assert select_platform(loose, Platform(os="linux", architecture="arm64", variant="v8"), "x") == loose[0]


def test_manifest_and_index_parsing() -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D, "size": 7},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D, "size": 9}
        ],
    }
    parsed = parse_manifest(manifest, "m")
    assert parsed.config.size == 7 and len(parsed.layers) == 1
    assert media_type_of({"manifests": []}) == OCI_INDEX
    assert media_type_of({}, "application/vnd.docker.distribution.manifest.v2+json") == DOCKER_MANIFEST
    assert len(parse_index({"manifests": [_entry("amd64").to_json()]}, "i")) == 1
    with pytest.raises(ImageError, match="schema version 1"):
        parse_manifest({**manifest, "schemaVersion": 1}, "m")
    with pytest.raises(ImageError, match="unsupported type"):
        parse_manifest({**manifest, "layers": [{"mediaType": "text/plain", "digest": D, "size": 1}]}, "m")
    with pytest.raises(ImageError, match="unsupported digest"):
        parse_manifest({**manifest, "config": {"digest": "md5:00", "size": 1}}, "m")
    with pytest.raises(ImageError, match="not a JSON object"):
        load_json(b"[1]", "x")
    with pytest.raises(ImageError, match="bytes"):
        load_json(b" " * (5 << 20), "x")


def test_config_must_match_manifest_layers() -> None:
    config = parse_config(
        json.dumps({"architecture": "amd64", "rootfs": {"diff_ids": [D, D]}}).encode(), "c"
    )
    assert config.diff_ids == (D, D) and config.platform.architecture == "amd64"
    manifest = parse_manifest(
        {"schemaVersion": 2, "config": {"digest": D, "size": 1}, "layers": [{"digest": D, "size": 1}]}, "m"
    )
    with pytest.raises(ImageError, match="1 layers but 2 diff_ids"):
        check_layers(manifest, config, "img")
    with pytest.raises(ImageError, match="rootfs.diff_ids"):
        parse_config(b"{}", "c")
