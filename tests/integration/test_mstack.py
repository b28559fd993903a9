"""`.mstack` directories on this host: a machine exported as one is mounted as systemd mounts it (overlayfs
with `userxattr`, layer@ directories in version order, rw/data on top) and shows the machine's files with
image ids; an mstack imports back as an image, and a foreign-range or hostile one is handled. systemd-nspawn
≥ 260 booting them is tested in a Debian sid VM (test_mstack_vm.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from tests.integration.layouts import stack as image_stack
from veneer.util import proc

pytestmark = [pytest.mark.root]

SCRIPT = (
    "echo changed > /etc/hello; rm /bin/cat; "
    "rm -rf /srv/opaque; mkdir /srv/opaque; echo new > /srv/opaque/b; chown 1234:5678 /srv/opaque/b"
)


def mount_mstack(stack: Path, target: Path) -> None:
    """Mount as systemd's `mstack_make_overlayfs()` does, read-only: rw/data becomes the top lower."""
    layers = sorted((p for p in stack.iterdir() if p.name.startswith("layer@")), key=lambda p: p.name)
    lowers = [stack / "rw" / "data", *reversed(layers)]
    target.mkdir()
    options = "ro,userxattr,lowerdir=" + ":".join(os.fspath(p) for p in lowers)
    proc.run(["mount", "-t", "overlay", "mstack", "-o", options, target])


def test_machine_exports_as_mstack_and_imports_back(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    store.veneer(
        "image",
        "update",
        "bb",
        "--network",
        "none",
        "--",
        "sh",
        "-c",
        "echo v2 > /etc/v2; mkdir -p /srv/opaque; echo a > /srv/opaque/a",
    )
    store.veneer("create", "m", "--from", "bb", "--network", "none")
    store.veneer("run", "m", "--", "sh", "-c", SCRIPT)
    dest = tmp_path / "m.mstack"
    store.veneer("export", "m", str(dest), "--format", "mstack")
    assert sorted(p.name for p in dest.iterdir()) == ["layer@0", "layer@1", "rw"]
    assert sorted(p.name for p in (dest / "rw").iterdir()) == ["data", "work"]
    opaque = dest / "rw/data/srv/opaque"
    assert os.getxattr(opaque, "user.overlay.opaque") == b"y"
    assert not [x for x in os.listxattr(opaque) if x.startswith("trusted.")]
    whiteout = (dest / "rw/data/bin/cat").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    foreign = 0x7FFE0000  # systemd's foreign UID range, what --private-users=managed maps
    owned = (dest / "rw/data/srv/opaque/b").stat()
    assert (owned.st_uid, owned.st_gid) == (foreign + 1234, foreign + 5678)
    assert (dest / "layer@0/bin/busybox").stat().st_uid == foreign
    assert (dest / "rw/work").stat().st_uid == foreign
    image_owned = tmp_path / "image-ids.mstack"
    store.veneer("export", "m", str(image_owned), "--format", "mstack", "--owner", "image")
    assert (image_owned / "rw/data/srv/opaque/b").stat().st_uid == 1234
    assert (image_owned / "layer@0/bin/busybox").stat().st_uid == 0

    merged = tmp_path / "merged"
    mount_mstack(dest, merged)
    try:
        assert (merged / "etc/hello").read_text() == "changed\n"
        assert (merged / "etc/v2").read_text() == "v2\n"
        assert not (merged / "bin/cat").exists() and (merged / "bin/sh").exists()
        assert sorted(os.listdir(merged / "srv/opaque")) == ["b"]
    finally:
        proc.run(["umount", merged])

    store.veneer("image", "import", "back", str(dest))
    store.veneer("create", "b", "--from", "back", "--network", "none")
    out = store.veneer("run", "b", "--", "sh", "-c", "cat /etc/hello /etc/v2; ls /srv/opaque; stat -c %u:%g "
                       "/srv/opaque/b; test -e /bin/cat || echo no-cat").stdout  # fmt: skip
    assert out.split() == ["changed", "v2", "b", "1234:5678", "no-cat"]


def test_foreign_range_mstack_imports_with_image_ids(store: Store, tmp_path: Path) -> None:
    stack = tmp_path / "f.mstack"
    layer = stack / "layer@10"
    (layer / "bin").mkdir(parents=True)
    proc.run(["cp", "/bin/busybox", layer / "bin/busybox"])
    (layer / "bin/sh").symlink_to("busybox")
    (layer / "usr").mkdir()
    lower = stack / "layer@9"
    lower.mkdir()
    (lower / "below").write_text("bottom\n")
    (lower / "shadowed").write_text("from layer 9\n")
    (layer / "shadowed").write_text("from layer 10\n")  # 10 sorts above 9: a version sort
    foreign = 0x7FFE0000
    for path in (stack, *stack.rglob("*")):
        os.chown(path, foreign + 7, foreign + 8, follow_symlinks=False)
    for top in (layer, lower):
        os.chown(top, foreign, foreign)
    store.veneer("image", "import", "f", str(stack))
    store.veneer("create", "m", "--from", "f", "--network", "none")
    out = store.veneer("run", "m", "--", "/bin/busybox", "sh", "-c", "cat /below /shadowed; "
                       "/bin/busybox stat -c %u:%g /shadowed").stdout  # fmt: skip
    assert out.split("\n")[:3] == ["bottom", "from layer 10", "7:8"]


def test_mstack_with_host_owners_or_devices_is_refused(store: Store, tmp_path: Path) -> None:
    stack = tmp_path / "bad.mstack"
    (stack / "layer@0").mkdir(parents=True)
    (stack / "layer@0/file").write_text("x")
    os.chown(stack / "layer@0/file", 100000, 0)
    assert "outside 0-65535" in store.veneer("image", "import", "bad", str(stack), ok=(1,)).stderr
    os.chown(stack / "layer@0/file", 0, 0)
    os.mknod(stack / "layer@0/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1))
    assert "device node" in store.veneer("image", "import", "bad", str(stack), ok=(1,)).stderr
    os.unlink(stack / "layer@0/mem")
    (stack / "layer@1.raw").write_text("")
    assert "does not import" in store.veneer("image", "import", "bad", str(stack), ok=(1,)).stderr
    assert "bad" not in store.veneer("image", "list").stdout


def test_importctl_pull_oci_layout_imports_with_shared_layers_and_config(
    store: Store, tmp_path: Path
) -> None:
    """As importctl pull-oci leaves it: NAME.mstack/layer@N -> ../.oci-sha256:HEX (foreign UID range, read
    only), an empty rw/, and NAME.oci-config beside it."""
    machines = tmp_path / "machines"
    base = machines / f".oci-sha256:{'1' * 64}"
    (base / "bin").mkdir(parents=True)
    (base / "usr").mkdir()
    proc.run(["cp", "/bin/busybox", base / "bin/busybox"])
    (base / "bin/sh").symlink_to("busybox")
    (base / "bin/cat").symlink_to("busybox")
    top = machines / f".oci-sha256:{'2' * 64}"
    top.mkdir()
    (top / "app").write_text("app\n")
    for index, name in enumerate(("one", "two")):
        stack = machines / f"{name}.mstack"
        (stack / "rw").mkdir(parents=True)
        (stack / "layer@0").symlink_to(f"../{base.name}")
        if index:
            (stack / "layer@1").symlink_to(f"../{top.name}")
    (machines / "two.oci-config").write_text(
        '{"config": {"Cmd": ["cat", "/app"], "User": "0"}, "rootfs": {"type": "layers", "diff_ids": []}}'
    )
    foreign = 0x7FFE0000
    for path in (base, *base.rglob("*"), top, *top.rglob("*")):
        os.chown(path, foreign, foreign, follow_symlinks=False)
    store.veneer("image", "import", "one", str(machines / "one.mstack"))
    store.veneer("image", "import", "two", str(machines / "two.mstack"))
    # The shared layer is stored once.
    assert image_stack(store.root, "one") == image_stack(store.root, "two")[:1]
    store.veneer("create", "m", "--from", "two", "--network", "none")
    assert store.veneer("run", "m").stdout == "app\n"  # its Cmd, from two.oci-config
