"""veneer.images.pull: manifest resolution through an index, digest checks (a fake registry, no network)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping

import pytest

from veneer.errors import ImageError
from veneer.images.oci import OCI_INDEX, OCI_MANIFEST, Platform, parse_reference
from veneer.images.pull import resolve_manifest
from veneer.images.registry import RegistryClient, Response


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "c" * 64,
            "size": 2,
        },
        "layers": [],
    }
).encode()


class FakeRegistry(RegistryClient):
    """Serves manifests from a dict of reference -> bytes."""

    def __init__(self, documents: dict[str, bytes]) -> None:
        super().__init__("127.0.0.1:1", "x", registry_name="fake", creds=None)
        self.documents = documents

    def get(self, path: str, *, headers: Mapping[str, str] | None = None, what: str) -> Response:
        data = self.documents[path.removeprefix("manifests/")]
        return Response(io.BytesIO(data), 200, [("Content-Type", json.loads(data).get("mediaType", ""))])


def index_of(entries: list[tuple[str, bytes]]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest(data),
                    "size": len(data),
                    "platform": {"os": "linux", "architecture": arch},
                }
                for arch, data in entries
            ],
        }
    ).encode()


def test_index_leads_to_the_platform_manifest() -> None:
    arm = MANIFEST.replace(b'"layers": []', b'"layers": [], "annotations": {"arch": "arm64"}')
    index = index_of([("amd64", MANIFEST), ("arm64", arm)])
    registry = FakeRegistry({"1": index, digest(MANIFEST): MANIFEST, digest(arm): arm})
    ref = parse_reference("127.0.0.1:1/x:1")
    _, found = resolve_manifest(registry, ref, Platform(os="linux", architecture="arm64"))
    assert found == digest(arm)


def test_a_manifest_not_matching_its_digest_is_refused() -> None:
    tampered = MANIFEST.replace(b"sha256:c", b"sha256:d")
    index = index_of([("amd64", MANIFEST)])
    registry = FakeRegistry({"1": index, digest(MANIFEST): tampered})
    with pytest.raises(ImageError, match="does not match its digest"):
        resolve_manifest(
            registry, parse_reference("127.0.0.1:1/x:1"), Platform(os="linux", architecture="amd64")
        )
    pinned = parse_reference(f"127.0.0.1:1/x@{digest(MANIFEST)}")
    with pytest.raises(ImageError, match="does not match its digest"):
        resolve_manifest(registry, pinned, Platform(os="linux", architecture="amd64"))
