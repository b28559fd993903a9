"""`veneer image pull`: an image from a registry becomes a veneer image, one veneer layer per image layer.

Order of work: the manifest (through an index, for the chosen platform), the config, then only the layers
whose diff_id no stored layer has, downloaded in parallel into the blob cache, each checked against its
digest; then every new layer is applied into a layer tree of its own (OCI whiteouts become overlayfs
whiteouts) and checked against its diff_id, and the image is published at once. Until that last step
nothing is visible; a failure leaves only verified blobs in the cache and partial downloads to resume.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import ImageName
from veneer.errors import ImageError
from veneer.images import oci
from veneer.images.blobs import BlobCache, Downloads, Opener
from veneer.images.registry import Credentials, RegistryClient, Response, client_for
from veneer.images.store import (
    ImageRecord,
    LayerSource,
    create_image_from_layers,
    list_images,
    refuse_existing_image,
)
from veneer.images.transfer import DEFAULT_MAX_LAYER_BYTES, extract_image_layer, format_size
from veneer.util.progress import QUIET, Progress

logger = logging.getLogger(__name__)

_PARALLEL = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class PullSpec:
    """What `veneer image pull` was asked for."""

    reference: str
    platform: oci.Platform | None = None
    creds: Credentials | None = None
    plain_http: bool = False
    authfile: Path | None = None  # where the credentials are, if not in `creds` or the usual auth files
    max_layer_bytes: int | None = None  # how long a layer's tar may be, decompressed (None: the default)


def _manifest(client: RegistryClient, reference: str, what: str) -> tuple[dict[str, object], str, str]:
    """(document, media type, digest) of a manifest or index."""
    response = client.get(f"manifests/{reference}", headers={"Accept": oci.ACCEPT}, what=what)
    try:
        data = response.read(oci.MAX_JSON + 1)
    finally:
        response.close()
    document = oci.load_json(data, what)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if reference.startswith("sha256:") and digest != reference:
        raise ImageError(
            f"{what} does not match its digest {reference} (got {digest})",
            hint="The registry is damaged or was tampered with; nothing was pulled.",
        )
    return document, oci.media_type_of(document, response.headers.get("content-type")), digest


def resolve_manifest(
    client: RegistryClient, ref: oci.Reference, platform: oci.Platform
) -> tuple[oci.Manifest, str]:
    """The image manifest of `ref` for `platform` (through an index if there is one), and its digest."""
    what = f"manifest '{ref}'"
    document, media_type, digest = _manifest(client, ref.reference, what)
    if media_type in oci.INDEX_TYPES:
        entry = oci.select_platform(oci.parse_index(document, what), platform, f"Image '{ref}'")
        logger.debug("Index %s: %s is %s", digest, platform, entry.digest)
        what = f"manifest '{ref}' for {platform}"
        document, media_type, digest = _manifest(client, entry.digest, what)
    if media_type not in oci.MANIFEST_TYPES:
        raise ImageError(
            f"{what} has the unsupported type '{media_type}'",
            hint="veneer pulls OCI and Docker schema 2 images (not Docker schema 1).",
        )
    return oci.parse_manifest(document, what), digest


class _BlobStream:
    """A blob's body, read as it arrives: what came before an interruption is kept for resuming."""

    def __init__(self, response: Response) -> None:
        self.response = response

    def read(self, size: int, /) -> bytes:
        return self.response.read_some(size)

    def close(self) -> None:
        self.response.close()


def _opener(client: RegistryClient, descriptor: oci.Descriptor) -> Opener:
    def open_blob(offset: int) -> tuple[_BlobStream, int]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        what = f"blob {descriptor.digest}"
        response = client.get(f"blobs/{descriptor.digest}", headers=headers, what=what)
        return _BlobStream(response), offset if response.status == 206 else 0

    return open_blob


def pull_image(
    layout: Layout, name: ImageName, spec: PullSpec, *, progress: Progress = QUIET
) -> ImageRecord:
    """Pull `spec.reference` from its registry and publish it as the image `name`, reporting the
    downloads and the layers applied into `progress`."""
    ref = oci.parse_reference(spec.reference)
    refuse_existing_image(layout, name)
    platform = spec.platform or oci.host_platform_of()
    client = client_for(
        ref.api_host,
        ref.repository,
        registry_name=ref.registry,
        creds=spec.creds,
        plain_http=spec.plain_http,
        authfile=spec.authfile,
    )
    manifest, digest = resolve_manifest(client, ref, platform)
    cache = BlobCache(layout.blobs)
    if manifest.config.size > oci.MAX_JSON:
        # Refused before the download: a config is read whole, and genuine ones are a few KiB.
        raise ImageError(
            f"The config of '{ref}' is {manifest.config.size} bytes, over the limit of "
            f"{format_size(oci.MAX_JSON)}",
            hint="Genuine image configs are a few KiB, and the limit cannot be raised: the image or the "
            "registry is damaged or hostile.",
        )
    config_path = cache.fetch(manifest.config, _opener(client, manifest.config))
    config = oci.parse_config(config_path.read_bytes(), f"The config of '{ref}'")
    oci.check_layers(manifest, config, f"Image '{ref}'")
    if config.platform.architecture and config.platform.architecture != platform.architecture:
        logger.warning("Image '%s' is for %s, not %s; it may not run here.", ref, config.platform, platform)

    # A layer is downloaded unless a stored layer has its diff_id. A diff_id repeated in the stack needs
    # as many stored layers as it has occurrences (see `create_image_from_layers`), else its blob.
    stored: dict[str, set[str]] = {}
    for image in list_images(layout):
        for stored_layer in image.layers:
            if stored_layer.key is not None:
                stored.setdefault(stored_layer.key, set()).add(stored_layer.id)
    wanted: dict[str, oci.Descriptor] = {}
    taken: dict[str, int] = {}
    for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
        n = taken.get(diff_id, 0)
        if n >= len(stored.get(diff_id, ())) and not cache.has(layer):
            wanted[layer.digest] = layer
        taken[diff_id] = n + 1

    if wanted:
        total = sum(layer.size for layer in wanted.values())
        progress.phase(f"Pulling {len(wanted)} layer(s) of {ref}", total=total)
        logger.debug("Downloading %d blobs, %d bytes", len(wanted), total)
        download_all(
            cache, client, list(wanted.values()), Downloads(total, lambda done, _: progress.advance(done))
        )

    count = len(manifest.layers)
    pinned = f"{ref.registry}/{ref.repository}@{digest}"
    sources = [
        LayerSource(
            key=diff_id,
            origin=f"pull {pinned} layer {index + 1}/{count}",
            build=_layer_builder(
                cache,
                layer,
                diff_id,
                f"{index + 1}/{count}",
                spec.max_layer_bytes or DEFAULT_MAX_LAYER_BYTES,
                progress,
            ),
        )
        for index, (layer, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True))
    ]
    return create_image_from_layers(
        layout, name, origin=f"pull {ref} ({digest})", layers=sources, config=config.run
    )


def download_all(
    cache: BlobCache, client: RegistryClient, blobs: list[oci.Descriptor], progress: Downloads
) -> None:
    """Download `blobs` into the cache, `_PARALLEL` at a time; the first failure stops the others.

    Daemon threads, not a ThreadPoolExecutor: the executor joins its threads at exit, so Ctrl-C would
    wait for a download stalled in a read; here the main thread waits in short joins and can leave.
    """
    queue = list(reversed(blobs))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while not progress.cancelled.is_set():
            with lock:
                if not queue:
                    return
                blob = queue.pop()
            try:
                cache.fetch(blob, _opener(client, blob), progress=progress)
            except BaseException as e:
                with lock:
                    errors.append(e)
                progress.cancelled.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(_PARALLEL, len(blobs)))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except BaseException:
        progress.cancelled.set()
        raise
    if errors:
        # The first real failure, not the "cancelled" of the downloads it stopped.
        raise errors[0]


def _layer_builder(
    cache: BlobCache, layer: oci.Descriptor, diff_id: str, position: str, max_bytes: int, progress: Progress
) -> Callable[[Path], None]:
    def build(tree: Path) -> None:
        blob = cache.path(layer.digest)
        if not cache.has(layer):
            raise ImageError(
                f"Blob {layer.digest} left the cache during the pull", hint="Run the pull again."
            )
        extract_image_layer(
            blob, tree, diff_id=diff_id, position=position, max_bytes=max_bytes, progress=progress
        )

    return build
