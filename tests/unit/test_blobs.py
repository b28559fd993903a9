"""veneer.images.blobs: checked downloads, resume, and refusals, with a fake opener (no network)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from veneer.errors import ImageError
from veneer.images.blobs import BlobCache, Downloads
from veneer.images.oci import Descriptor

DATA = bytes(range(256)) * 4096


def descriptor(data: bytes = DATA, size: int | None = None) -> Descriptor:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    return Descriptor(media_type="", digest=digest, size=len(data) if size is None else size)


class FakeServer:
    """Serves `data`; honours ranges unless told not to; records the offsets asked for."""

    def __init__(self, data: bytes, *, ranges: bool = True) -> None:
        self.data = data
        self.ranges = ranges
        self.asked: list[int] = []

    def __call__(self, offset: int) -> tuple[io.BytesIO, int]:
        self.asked.append(offset)
        start = offset if self.ranges else 0
        return io.BytesIO(self.data[start:]), start


def test_fetch_checks_and_caches(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    server = FakeServer(DATA)
    progress = Downloads(len(DATA), None)
    path = cache.fetch(descriptor(), server, progress=progress)
    assert path.read_bytes() == DATA and progress.done == len(DATA)
    assert cache.fetch(descriptor(), server) == path and server.asked == [0]  # the second time: cached


@pytest.mark.parametrize("ranges", [True, False])
def test_fetch_resumes_a_partial_download(tmp_path: Path, ranges: bool) -> None:
    cache = BlobCache(tmp_path)
    d = descriptor()
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / d.digest.removeprefix("sha256:")).write_bytes(DATA[:1000])
    server = FakeServer(DATA, ranges=ranges)
    assert cache.fetch(d, server).read_bytes() == DATA
    assert server.asked == [1000]
    assert not (tmp_path / "partial" / d.digest.removeprefix("sha256:")).exists()


def test_fetch_refuses_bad_truncated_and_oversized_blobs(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    bad = DATA[:-1] + b"\x00"
    with pytest.raises(ImageError, match="does not match its digest"):
        cache.fetch(descriptor(), FakeServer(bad))
    with pytest.raises(ImageError, match="ended after 100 of"):
        cache.fetch(descriptor(), FakeServer(DATA[:100]))
    with pytest.raises(ImageError, match="exceeds its size"):
        cache.fetch(descriptor(DATA[:20], size=10), FakeServer(DATA[:20]))
    assert not any((tmp_path / "sha256").iterdir())
    # The truncated download stays for the next attempt, which resumes it.
    server = FakeServer(DATA)
    assert cache.fetch(descriptor(), server).read_bytes() == DATA and server.asked == [100]


def test_cancelled_download_stops_and_keeps_what_it_has(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    progress = Downloads(len(DATA), None)
    progress.cancelled.set()
    with pytest.raises(ImageError, match="cancelled"):
        cache.fetch(descriptor(), FakeServer(DATA), progress=progress)
    assert not (tmp_path / "sha256" / descriptor().digest.removeprefix("sha256:")).exists()
