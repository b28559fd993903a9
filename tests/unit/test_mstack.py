"""The pure parts of `.mstack` handling: layer order (a version sort) and which entries import."""

from __future__ import annotations

from pathlib import Path

import pytest

from veneer.errors import ImageError
from veneer.images.mstack import is_mstack, read_mstack, version_key


def test_layers_sort_as_versions() -> None:
    names = ["10", "9", "2a", "2", "base", "1.10", "1.9"]
    assert sorted(names, key=version_key) == ["1.9", "1.10", "2", "2a", "9", "10", "base"]


def test_read_mstack_orders_layers_and_keys_shared_ones(tmp_path: Path) -> None:
    digest = "ab" * 32
    shared = tmp_path / f".oci-sha256:{digest}"
    shared.mkdir()
    stack = tmp_path / "x.mstack"
    stack.mkdir()
    (stack / "layer@10").mkdir()
    (stack / "layer@9").symlink_to(f"../{shared.name}")
    (stack / "rw" / "data").mkdir(parents=True)
    assert is_mstack(stack)
    layers = read_mstack(stack)
    assert [(layer.name, layer.key) for layer in layers] == [
        ("layer@9", f"sha256:{digest}"),
        ("layer@10", None),
    ]  # an empty rw/data adds no layer
    (stack / "rw/data/file").write_text("x")
    assert [layer.name for layer in read_mstack(stack)][-1] == "rw/data"


@pytest.mark.parametrize("entry", ["layer@0.raw", "bind@var", "root", "junk"])
def test_what_veneer_cannot_import_is_refused(tmp_path: Path, entry: str) -> None:
    (tmp_path / "layer@1").mkdir()
    (tmp_path / entry).mkdir()
    with pytest.raises(ImageError):
        read_mstack(tmp_path)


def test_a_directory_without_layers_is_no_mstack(tmp_path: Path) -> None:
    assert not is_mstack(tmp_path)
    with pytest.raises(ImageError, match="no layer@"):
        read_mstack(tmp_path)
