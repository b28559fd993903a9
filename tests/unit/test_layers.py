"""The layer-chain lookup on small trees (whiteouts made with mknod 0/0, which needs no privilege)."""

import os
import stat
from pathlib import Path

from veneer.overlay.layers import lookup


def make(layer: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        path = layer / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "<whiteout>":
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        elif content.startswith("->"):
            os.symlink(content[2:], path)
        else:
            path.write_text(content)
    return layer


def test_top_layer_wins_and_whiteouts_hide(tmp_path: Path) -> None:
    bottom = make(tmp_path / "0", {"etc/a": "old", "etc/b": "b", "etc/c": "c"})
    top = make(tmp_path / "1", {"etc/a": "new!", "etc/b": "<whiteout>"})
    layers = [bottom, top]
    found = lookup(layers, "etc/a")
    assert found is not None and found.st_size == 4
    assert lookup(layers, "etc/b") is None
    assert lookup(layers, "etc/c") is not None
    assert lookup(layers, "etc/missing") is None
    assert lookup(layers, "etc") is not None


def test_whiteout_of_a_directory_hides_its_contents(tmp_path: Path) -> None:
    bottom = make(tmp_path / "0", {"srv/app/x": "x"})
    top = make(tmp_path / "1", {"srv": "<whiteout>"})
    assert lookup([bottom, top], "srv/app/x") is None
    assert lookup([bottom], "srv/app/x") is not None


def test_symlinked_parent_is_not_followed(tmp_path: Path) -> None:
    outside = make(tmp_path / "outside", {"secret": "s"})
    layer = make(tmp_path / "0", {"bin": f"->{outside}"})
    assert lookup([layer], "bin/secret") is None, "a lookup never leaves the layer through a symlink"
    assert lookup([layer], "bin") is not None
