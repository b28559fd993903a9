"""`veneer image import` of what other tools write (OCI layouts and archives, docker-archives, rootfs
tarballs, partitioned raw disk images), and `veneer image export` / `veneer export` read back by podman,
skopeo and GNU tar."""

from __future__ import annotations

import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from tests.integration.layouts import stack
from tests.integration.registries import BUSYBOX_APPLETS, BuiltImages, podman
from veneer.util import proc

pytestmark = [pytest.mark.root]


def layer_ids(store: Store, image: str) -> list[str]:
    return [tree.parent.name for tree in stack(store.root, image)]


def busybox_tree(path: Path, *, marker: str) -> Path:
    """A minimal root filesystem: static busybox, its applets, /usr, and /etc/hello saying `marker`."""
    for d in ("bin", "usr/bin", "etc", "root"):
        (path / d).mkdir(parents=True)
    proc.run(["cp", "/bin/busybox", path / "bin" / "busybox"])
    for applet in BUSYBOX_APPLETS:
        (path / "bin" / applet).symlink_to("busybox")
    (path / "etc" / "hello").write_text(f"{marker}\n")
    return path


def test_import_oci_layout_archive_and_docker_archive_share_layers(
    store: Store, built_images: BuiltImages, tmp_path: Path
) -> None:
    layout = built_images.layout
    several = store.veneer("image", "import", "x", str(layout), ok=(1,))
    assert "holds" in several.stderr and "--tag" in several.stderr
    store.veneer("image", "import", "from-dir", str(layout), "--tag", "layers")
    archive = tmp_path / "layers.oci.tar"
    proc.run(["skopeo", "copy", "--quiet", f"oci:{layout}:layers", f"oci-archive:{archive}:layers"])
    store.veneer("image", "import", "from-oci-archive", str(archive))
    docker = tmp_path / "layers.docker.tar"
    proc.run(["skopeo", "copy", "--quiet", f"oci:{layout}:layers", f"docker-archive:{docker}:test/layers:1"])
    store.veneer("image", "import", "from-docker-archive", str(docker))
    ids = layer_ids(store, "from-dir")
    assert len(ids) == 5
    assert layer_ids(store, "from-oci-archive") == ids == layer_ids(store, "from-docker-archive")
    assert len(list((store.root / "layers").iterdir())) == 5
    store.veneer("create", "m", "--from", "from-docker-archive", "--network", "none")
    out = store.veneer("run", "m", "--", "sh", "-c", "cat /etc/hello; test -e /etc/gone || echo no-gone")
    assert out.stdout == "hello from a layer\nno-gone\n"


def test_import_podman_save_archive(
    store: Store, built_images: BuiltImages, tmp_path: Path, podman_storage: Path
) -> None:
    podman(podman_storage, "pull", "--quiet", f"oci:{built_images.layout}:other")
    saved = tmp_path / "saved.tar"
    images = json.loads(podman(podman_storage, "images", "--format", "json").stdout)
    podman(podman_storage, "save", "--quiet", "-o", saved, images[0]["Id"])
    store.veneer("image", "import", "saved", str(saved))
    store.veneer("create", "m", "--from", "saved", "--network", "none")
    assert store.veneer("run", "m", "--", "cat", "/other").stdout == "hello from a layer\n"


@pytest.mark.parametrize("suffix", ["tar", "tar.gz", "tar.xz", "tar.zst"])
def test_import_rootfs_tarball(store: Store, tmp_path: Path, suffix: str) -> None:
    tree = busybox_tree(tmp_path / "tree", marker=suffix)
    archive = tmp_path / f"rootfs.{suffix}"
    compress = {"tar": [], "tar.gz": ["--gzip"], "tar.xz": ["--xz"], "tar.zst": ["--zstd"]}[suffix]
    proc.run(["tar", "-C", tree, *compress, "-cf", archive, "."])
    store.veneer("image", "import", "rootfs", str(archive))
    store.veneer("create", "m", "--from", "rootfs", "--network", "none")
    assert store.veneer("run", "m", "--", "cat", "/etc/hello").stdout == f"{suffix}\n"


def make_disk(path: Path, tree: Path, *, table: str) -> None:
    """A 48 MiB raw disk image whose second partition is an ext4 file system made from `tree`."""
    proc.run(["truncate", "-s", "48M", path])
    if table == "gpt":
        script = "label: gpt\nsize=2M, type=uefi\ntype=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n"
    else:
        script = "label: dos\nsize=2M, type=c\ntype=83\n"
    proc.run(["sfdisk", "--quiet", path], input=script)
    table_json = json.loads(proc.run(["sfdisk", "--json", path], capture=True).stdout)["partitiontable"]
    root = table_json["partitions"][1]
    part = path.with_suffix(".part")
    proc.run(["truncate", "-s", str(root["size"] * 512), part])
    proc.run(["mkfs.ext4", "-q", "-d", tree, part], capture=True)
    proc.run(
        ["dd", f"if={part}", f"of={path}", "bs=512", f"seek={root['start']}", "conv=notrunc", "status=none"]
    )
    part.unlink()


@pytest.mark.parametrize("table", ["gpt", "dos"])
def test_import_partitioned_raw_disk_image(store: Store, tmp_path: Path, table: str) -> None:
    tree = busybox_tree(tmp_path / "tree", marker=f"disk {table}")
    disk = tmp_path / "disk.img"
    make_disk(disk, tree, table=table)
    loops_before = proc.run(["losetup", "--list", "--noheadings"], capture=True).stdout
    store.veneer("image", "import", "disk", str(disk))
    assert proc.run(["losetup", "--list", "--noheadings"], capture=True).stdout == loops_before
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    store.veneer("create", "m", "--from", "disk", "--network", "none")
    assert store.veneer("run", "m", "--", "cat", "/etc/hello").stdout == f"disk {table}\n"


def test_import_refuses_what_it_cannot_read(store: Store, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an image at all" * 100)
    bad = store.veneer("image", "import", "x", str(junk), ok=(1,))
    assert "neither a tar archive nor a disk image" in bad.stderr
    plain_dir = tmp_path / "dir"
    plain_dir.mkdir()
    assert "--from-dir" in store.veneer("image", "import", "x", str(plain_dir), ok=(1,)).stderr
    blank = tmp_path / "blank.img"
    proc.run(["truncate", "-s", "8M", blank])
    proc.run(["sfdisk", "--quiet", blank], input="label: dos\ntype=c\n")
    assert "no Linux root partition" in store.veneer("image", "import", "x", str(blank), ok=(1,)).stderr
    assert json.loads(store.veneer("image", "list", "--json").stdout) == []


def test_export_loads_into_podman_and_runs(
    store: Store, built_images: BuiltImages, tmp_path: Path, podman_storage: Path
) -> None:
    store.veneer("image", "import", "img", str(built_images.layout), "--tag", "layers")
    for fmt in ("docker-archive", "oci-archive"):
        dest = tmp_path / f"img.{fmt}.tar"
        store.veneer("image", "export", "img", str(dest), "--format", fmt, "--tag", f"localhost/exp-{fmt}:1")
        loaded = podman(podman_storage, "load", "--input", dest).stdout
        assert f"localhost/exp-{fmt}:1" in loaded
        script = "cat /etc/hello; test -e /etc/gone || echo no-gone; ls /opt/d"
        out = podman(
            podman_storage, "run", "--rm", f"localhost/exp-{fmt}:1", "sh", "-c", script, run_flags=True
        )
        assert out.stdout == "hello from a layer\nno-gone\nc\n"
    oci_dir = tmp_path / "img.oci"
    store.veneer("image", "export", "img", str(oci_dir), "--format", "oci")
    inspected = json.loads(proc.run(["skopeo", "inspect", f"oci:{oci_dir}"], capture=True).stdout)
    assert len(inspected["Layers"]) == 5
    # What veneer writes, veneer reads back.
    store.veneer("image", "import", "again", str(oci_dir))
    store.veneer("create", "m", "--from", "again", "--network", "none")
    assert store.veneer("run", "m", "--", "cat", "/etc/hello").stdout == "hello from a layer\n"
    flat = tmp_path / "img.tar.gz"
    store.veneer("image", "export", "img", str(flat))
    names = proc.run(["tar", "-tzf", flat], capture=True).stdout.split()
    assert "etc/hello" in names and "opt/d/c" in names
    assert "etc/gone" not in names and "opt/d/a" not in names and not any(".wh." in n for n in names)
    again = store.veneer("image", "export", "img", str(flat), ok=(1,))
    assert "exists already" in again.stderr


def test_export_machine_writes_the_ids_the_guest_saw(store: Store, tmp_path: Path) -> None:
    store.veneer("image", "create", "bb", "--busybox")
    store.veneer("create", "m", "--from", "bb", "--network", "none")
    store.veneer("run", "m", "--", "sh", "-c", "echo mine > /root/f; chown 1000:1000 /root/f; rm /bin/ls")
    dest = tmp_path / "m.tar"
    store.veneer("export", "m", str(dest))
    with tarfile.open(dest) as tf:
        names = tf.getnames()
        f = tf.getmember("root/f")
        assert (f.uid, f.gid) == (1000, 1000)
        assert tf.getmember("bin/busybox").uid == 0
        assert "bin/ls" not in names
        data = tf.extractfile(f)
        assert data is not None and data.read() == b"mine\n"


def test_import_index_from_layout_by_platform(store: Store, built_images: BuiltImages) -> None:
    layout = str(built_images.layout)
    store.veneer("image", "import", "arm", layout, "--tag", "multi", "--platform", "linux/arm64")
    assert (stack(store.root, "arm")[-1] / "arm64-only").exists()
    bad = store.veneer(
        "image", "import", "x", layout, "--tag", "multi", "--platform", "linux/ppc64le", ok=(1,)
    )
    assert "no image for linux/ppc64le" in bad.stderr


def test_disk_image_with_a_device_node_outside_dev_is_refused(store: Store, tmp_path: Path) -> None:
    tree = busybox_tree(tmp_path / "tree", marker="evil")
    os.mknod(tree / "etc" / "disk", 0o600 | stat.S_IFBLK, os.makedev(8, 0))
    disk = tmp_path / "disk.img"
    make_disk(disk, tree, table="gpt")
    loops_before = proc.run(["losetup", "--list", "--noheadings"], capture=True).stdout
    result = store.veneer("image", "import", "evil", str(disk), ok=(1,))
    assert "device node outside dev/" in result.stderr
    assert proc.run(["losetup", "--list", "--noheadings"], capture=True).stdout == loops_before
    assert str(store.root) not in Path("/proc/self/mountinfo").read_text()
    assert json.loads(store.veneer("image", "list", "--json").stdout) == []
    assert not any((store.root / ".staging").glob("*"))


def test_export_of_a_running_machine_is_refused(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    store.veneer("create", "m", "--from", "bb", "--network", "none")
    store.veneer("start", "m", "--wait")
    try:
        result = store.veneer("export", "m", str(tmp_path / "m.tar"), ok=(1,))
        assert "running" in result.stderr and "veneer stop m" in result.stderr
        assert not (tmp_path / "m.tar").exists()
    finally:
        store.veneer("stop", "m")
    store.veneer("export", "m", str(tmp_path / "m.tar"))
