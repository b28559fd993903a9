"""Multi-layer images: `create_image_from_layers` shares layers by key; the layer record keeps its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from veneer.config.layout import Layout
from veneer.config.settings import ImageName
from veneer.errors import ImageError
from veneer.images.store import LayerRecord, LayerSource, create_image_from_layers, load_image


def source(key: str | None, text: str, calls: list[str]) -> LayerSource:
    def build(tree: Path) -> None:
        calls.append(text)
        (tree / text).write_text(text)

    return LayerSource(key=key, origin=f"test {text}", build=build)


def test_layers_with_a_known_key_are_shared_not_rebuilt(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path / "state", run=tmp_path / "run")
    calls: list[str] = []
    a = create_image_from_layers(
        layout, ImageName("a"), origin="t", layers=[source("k1", "one", calls), source("k2", "two", calls)]
    )
    b = create_image_from_layers(
        layout, ImageName("b"), origin="t", layers=[source("k1", "one", calls), source(None, "three", calls)]
    )
    assert calls == ["one", "two", "three"]
    assert b.layers[0] == a.layers[0] and b.layers[1].key is None
    assert load_image(layout, "b") == b
    assert (layout.layer_tree(b.layers[1].id) / "three").read_text() == "three"
    assert len(list(layout.layers.iterdir())) == 3


def test_a_key_repeated_in_one_stack_gets_its_own_layer(tmp_path: Path) -> None:
    # overlayfs refuses one directory twice among its lower layers.
    layout = Layout(root=tmp_path / "state", run=tmp_path / "run")
    calls: list[str] = []
    image = create_image_from_layers(
        layout, ImageName("a"), origin="t", layers=[source("empty", "e", calls), source("empty", "e", calls)]
    )
    assert image.layers[0].id != image.layers[1].id and image.layers[0].key == image.layers[1].key == "empty"
    again = create_image_from_layers(
        layout, ImageName("b"), origin="t", layers=[source("empty", "e", calls), source("empty", "e", calls)]
    )
    assert again.layers == image.layers and calls == ["e", "e"]  # one stored copy per occurrence


def test_failed_build_publishes_nothing(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path / "state", run=tmp_path / "run")

    def fail(tree: Path) -> None:
        raise ImageError("broken layer")

    calls: list[str] = []
    with pytest.raises(ImageError, match="broken layer"):
        create_image_from_layers(
            layout,
            ImageName("a"),
            origin="t",
            layers=[source("k", "x", calls), LayerSource(key=None, origin="o", build=fail)],
        )
    assert not list(layout.layers.iterdir()) and not layout.image_record("a").exists()
    assert not list(layout.staging.iterdir())
    with pytest.raises(ImageError, match="no layers"):
        create_image_from_layers(layout, ImageName("a"), origin="t", layers=[])


def test_layer_record_key_round_trip() -> None:
    record = LayerRecord(id="ab", created=1.0, origin="pull x", size_bytes=4096, key="sha256:" + "0" * 64)
    data = record.to_json()
    assert data == {
        "version": 1,
        "id": "ab",
        "created": 1.0,
        "origin": "pull x",
        "size_bytes": 4096,
        "key": "sha256:" + "0" * 64,
    }
    assert LayerRecord.from_json(data) == record
    del data["key"]
    assert LayerRecord.from_json(data).key is None
