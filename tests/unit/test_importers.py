"""veneer.images.importers: format detection and root partition choice (no root, no loop devices)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from veneer.errors import ImageError
from veneer.images.importers import Partition, SourceFormat, choose_root, detect_format, parse_partitions

GPT_ROOT_AMD64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def tarball(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    return path


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["./etc/passwd", "./bin/sh"], SourceFormat.TAR),
        (["blobs/sha256/" + "a" * 64, "oci-layout", "index.json"], SourceFormat.OCI_ARCHIVE),
        (["manifest.json", "a" * 64 + ".tar"], SourceFormat.DOCKER_ARCHIVE),
        (["a" * 64 + "/layer.tar", "repositories"], SourceFormat.DOCKER_ARCHIVE),
    ],
)
def test_detect_archives(tmp_path: Path, names: list[str], expected: SourceFormat) -> None:
    assert detect_format(tarball(tmp_path / "x.tar", names)) is expected


def test_detect_layout_disk_and_junk(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_text("{}")
    (tmp_path / "index.json").write_text("{}")
    assert detect_format(tmp_path) is SourceFormat.OCI_LAYOUT
    (tmp_path / "blobs").mkdir()
    with pytest.raises(ImageError, match="not an OCI image layout"):
        detect_format(tmp_path / "blobs")
    mbr = bytearray(4096)
    mbr[510:512] = b"\x55\xaa"
    (tmp_path / "disk.img").write_bytes(bytes(mbr))
    assert detect_format(tmp_path / "disk.img") is SourceFormat.DISK
    (tmp_path / "junk").write_bytes(b"junk" * 1000)
    with pytest.raises(ImageError, match="neither a tar archive nor a disk image"):
        detect_format(tmp_path / "junk")


def test_partitions_and_root_choice() -> None:
    text = json.dumps(
        {
            "partitiontable": {
                "sectorsize": 512,
                "partitions": [
                    {"node": "d1", "start": 2048, "size": 4096, "type": GPT_ESP},
                    {"node": "d2", "start": 6144, "size": 1000, "type": GPT_LINUX},
                    {"node": "d3", "start": 8192, "size": 9000, "type": GPT_LINUX},
                ],
            }
        }
    )
    parts = parse_partitions(text)
    assert parts[0] == Partition(start=2048 * 512, size=4096 * 512, type=GPT_ESP, node="d1")
    assert choose_root(parts, architecture="amd64") == parts[2]  # the largest Linux partition
    rooted = [*parts, Partition(start=0, size=1, type=GPT_ROOT_AMD64.lower(), node="d4")]
    assert choose_root(rooted, architecture="amd64") == rooted[3]  # the discoverable root type wins
    assert choose_root([Partition(start=0, size=1, type="83", node="m1")], architecture="amd64") is not None
    assert choose_root(parts[:1], architecture="amd64") is None
