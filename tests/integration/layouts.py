"""OCI image layouts written by hand (tarfile and json), for layers no image tool would make."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

Member = tuple[tarfile.TarInfo, bytes]


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    linkname: str = "",
    dev: tuple[int, int] = (0, 0),
    pax: dict[str, str] | None = None,
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = uid
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1_700_000_000
    if pax:
        info.pax_headers = pax
    return info, data


def layer_tar(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def write_layout(
    path: Path,
    layers: list[bytes],
    *,
    diff_ids: list[str] | None = None,
    tamper: Callable[[bytes], bytes] | None = None,
    run_config: dict[str, object] | None = None,
) -> Path:
    """An OCI image layout holding one image of gzip `layers` (with `run_config` as the config's `config`
    object); `tamper` changes the last layer blob after its digest was taken."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, *, stored: bytes | None = None) -> dict[str, object]:
        digest = sha(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data if stored is None else stored)
        return {"digest": digest, "size": len(data)}

    descriptors = []
    for position, tar in enumerate(layers):
        blob = gzip.compress(tar, mtime=0)
        stored = tamper(blob) if tamper is not None and position == len(layers) - 1 else None
        descriptors.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(blob, stored=stored)}
        )
    config: dict[str, object] = {
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha(t) for t in layers]},
    }
    if run_config is not None:
        config["config"] = run_config
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **put(json.dumps(config).encode()),
        },
        "layers": descriptors,
    }
    index: dict[str, object] = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **put(json.dumps(manifest).encode()),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return path


def stack(store_root: Path, image: str) -> list[Path]:
    """The layer trees of an image's current revision, bottom first (image records of version 1 list the
    stack as their layers; version 2 names each revision's layers)."""
    record = json.loads((store_root / "images" / image / "image.json").read_text())
    if "revisions" in record:
        current = next(r for r in record["revisions"] if r["number"] == record["current"])
        ids = [str(layer_id) for layer_id in current["layers"]]
    else:
        ids = [str(layer["id"]) for layer in record["layers"]]
    return [store_root / "layers" / layer_id / "tree" for layer_id in ids]
