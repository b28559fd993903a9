"""The OCI image format: references, media types, manifests, indexes, configs and platforms. Pure: no I/O
beyond what the caller passes in, no network (see `registry.py`), no store.

Docker schema 2 manifests and manifest lists are read as their OCI equivalents; the media types differ,
the fields used here do not (https://github.com/opencontainers/image-spec/blob/main/manifest.md).
"""

from __future__ import annotations

import json
import platform as host_platform
import re
from dataclasses import dataclass
from typing import Any

from veneer.errors import ImageError, UsageError
from veneer.images.runconfig import RunConfig, parse_run_config

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_ZSTD,
        DOCKER_FOREIGN_LAYER,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    }
)
# What a registry is asked for: any manifest or index, in the order of preference.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Bounds what is read into memory from a registry or an archive: manifests and configs are small.
MAX_JSON = 4 << 20

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_REPO_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_HOST_RE = re.compile(r"(?:\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]+)(?::[0-9]+)?")

# uname -m -> OCI architecture and variant (https://go.dev/doc/install/source#environment).
_ARCHES = {
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", None),
    "i386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """`[REGISTRY/]REPO[:TAG][@DIGEST]`, normalized as Docker does (`debian` = docker.io/library/debian)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host that serves the distribution API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What the manifest endpoint is asked for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse an image reference; raise `UsageError` naming what is wrong."""
    hint = "An image reference looks like debian:bookworm, or 127.0.0.1:5000/team/app:1.0[@sha256:...]."
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise UsageError(f"Invalid digest '{digest}' in image reference '{text}'", hint=hint)
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, remainder
        if not _HOST_RE.fullmatch(registry):
            raise UsageError(f"Invalid registry '{registry}' in image reference '{text}'", hint=hint)
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG_RE.fullmatch(tag):
            raise UsageError(f"Invalid tag '{tag}' in image reference '{text}'", hint=hint)
    if registry in (DOCKER_HUB, "index.docker.io") and "/" not in path:
        path = f"library/{path}"
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if not _REPO_RE.fullmatch(path):
        raise UsageError(f"Invalid repository '{path}' in image reference '{text}'", hint=hint)
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    """An OCI platform: os/architecture[/variant]."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> Platform:
    """`linux/amd64`, `linux/arm64/v8`; raise `UsageError` otherwise."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise UsageError(
            f"Invalid platform '{text}'", hint="A platform looks like linux/amd64 or linux/arm/v7."
        )
    return Platform(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)


def host_platform_of(machine: str | None = None) -> Platform:
    """The platform of this host (or of `uname -m` = `machine`)."""
    machine = machine or host_platform.machine()
    arch, variant = _ARCHES.get(machine, (machine, None))
    return Platform(os="linux", architecture=arch, variant=variant)


@dataclass(frozen=True, slots=True, kw_only=True)
class Descriptor:
    """A pointer to a blob: media type, digest, size, and for index entries the platform."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            data["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                data["platform"]["variant"] = self.platform.variant
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """An image manifest: its config and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageConfig:
    """The parts of an image config veneer uses: the layers' diff_ids, platform and run settings."""

    diff_ids: tuple[str, ...]
    platform: Platform
    run: RunConfig | None
    raw: dict[str, Any]


def _fail(what: str, reason: str) -> ImageError:
    return ImageError(
        f"{what} is not a valid image document: {reason}",
        hint="The registry or archive serves something veneer cannot read; check the reference.",
    )


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object; anything else raises `ImageError` naming `what`."""
    if len(data) > MAX_JSON:
        raise _fail(what, f"{len(data)} bytes (at most {MAX_JSON} are read)")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(what, str(e)) from None
    if not isinstance(value, dict):
        raise _fail(what, "not a JSON object")
    return value


def parse_descriptor(data: Any, what: str) -> Descriptor:
    if not isinstance(data, dict):
        raise _fail(what, "a descriptor is not an object")
    digest, size, media_type = data.get("digest"), data.get("size"), data.get("mediaType", "")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise _fail(what, f"unsupported digest {digest!r} (veneer checks sha256 digests)")
    if not isinstance(size, int) or size < 0:
        raise _fail(what, f"invalid size {size!r}")
    if not isinstance(media_type, str):
        raise _fail(what, f"invalid media type {media_type!r}")
    platform = None
    if isinstance(data.get("platform"), dict):
        p = data["platform"]
        platform = Platform(
            os=str(p.get("os", "")), architecture=str(p.get("architecture", "")), variant=p.get("variant")
        )
    return Descriptor(media_type=media_type, digest=digest, size=size, platform=platform)


def media_type_of(document: dict[str, Any], header: str | None = None) -> str:
    """The media type of a manifest or index: its own field, the Content-Type, or guessed from its shape."""
    media_type = document.get("mediaType") or header or ""
    if media_type in INDEX_TYPES or media_type in MANIFEST_TYPES:
        return str(media_type)
    if "manifests" in document:
        return OCI_INDEX
    if "layers" in document and "config" in document:
        return OCI_MANIFEST
    return str(media_type)


def parse_index(document: dict[str, Any], what: str) -> tuple[Descriptor, ...]:
    entries = document.get("manifests")
    if not isinstance(entries, list):
        raise _fail(what, "an index without 'manifests'")
    return tuple(parse_descriptor(entry, what) for entry in entries)


def parse_manifest(document: dict[str, Any], what: str) -> Manifest:
    if document.get("schemaVersion") != 2:
        raise _fail(what, f"schema version {document.get('schemaVersion')!r} (veneer reads version 2)")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise _fail(what, "a manifest without 'layers'")
    manifest = Manifest(
        media_type=media_type_of(document),
        config=parse_descriptor(document.get("config"), what),
        layers=tuple(parse_descriptor(layer, what) for layer in layers),
    )
    for layer in manifest.layers:
        if layer.media_type and layer.media_type not in LAYER_TYPES:
            raise _fail(what, f"a layer of the unsupported type '{layer.media_type}'")
    return manifest


def parse_config(data: bytes, what: str) -> ImageConfig:
    document = load_json(data, what)
    rootfs = document.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise _fail(what, "a config without rootfs.diff_ids")
    diff_ids = tuple(str(d) for d in rootfs["diff_ids"])
    for diff_id in diff_ids:
        if not _DIGEST_RE.fullmatch(diff_id):
            raise _fail(what, f"unsupported diff_id {diff_id!r}")
    platform = Platform(
        os=str(document.get("os", "linux")),
        architecture=str(document.get("architecture", "")),
        variant=document.get("variant"),
    )
    run = parse_run_config(document.get("config"), what)
    return ImageConfig(diff_ids=diff_ids, platform=platform, run=run, raw=document)


def select_platform(entries: tuple[Descriptor, ...], wanted: Platform, what: str) -> Descriptor:
    """The index entry for `wanted`; a missing variant matches any (arm64 images rarely name v8)."""
    candidates = [
        e
        for e in entries
        if e.platform is not None
        and e.platform.os == wanted.os
        and e.platform.architecture == wanted.architecture
        and e.media_type not in INDEX_TYPES
    ]
    exact = [
        e
        for e in candidates
        if wanted.variant is None or e.platform and e.platform.variant == wanted.variant
    ]
    if exact:
        return exact[0]
    if candidates and wanted.variant is not None:
        loose = [e for e in candidates if e.platform and e.platform.variant is None]
        if loose:
            return loose[0]
    offered = ", ".join(sorted({str(e.platform) for e in entries if e.platform})) or "none"
    raise ImageError(
        f"{what} has no image for {wanted} (it offers: {offered})",
        hint="Choose one of those with --platform OS/ARCH[/VARIANT].",
    )


def check_layers(manifest: Manifest, config: ImageConfig, what: str) -> None:
    """A manifest and its config must name the same number of layers."""
    if len(manifest.layers) != len(config.diff_ids):
        raise _fail(what, f"{len(manifest.layers)} layers but {len(config.diff_ids)} diff_ids in its config")
    if not manifest.layers:
        raise _fail(what, "an image without layers")


def digest_hex(digest: str) -> str:
    """The hex part of a checked `sha256:` digest (safe as a file name)."""
    if not _DIGEST_RE.fullmatch(digest):
        raise ImageError(f"Unsupported digest '{digest}'", hint="veneer checks sha256 digests only.")
    return digest.removeprefix("sha256:")
