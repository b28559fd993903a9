"""Image pull and import benchmarks: veneer against the tools a user would run instead.

- pull: an image of about 100 MB in 4 gzip layers (real files from /usr, built by buildah, pushed to
  Debian's docker-registry on 127.0.0.1), into an empty store each time, blob cache included:
  `veneer image pull` vs `podman pull` (its own empty store, overlay driver) vs `skopeo copy` to an OCI
  layout followed by GNU `tar -x` of each layer into one tree (no whiteout handling: a lower bound).
- import: a root filesystem tarball of the same files (plain and gzip): `veneer image import` vs GNU
  `tar -xpf --numeric-owner --xattrs` into an empty directory.

Every contender runs --repeat times after one untimed warm-up; the table shows medians and each time as a
ratio to veneer's. Everything (registry, stores, scratch dir) is removed on the way out. Run as root:
    sudo python3 bench/pull.py [--size-mb 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

# The harness (bench/ is on sys.path when a script in it runs).
from harness import log, podman_flags  # noqa: E402

from veneer.util.proc import run, spawn  # noqa: E402

SOURCES = (Path("/usr/share"), Path("/usr/lib"))  # /usr/share first: many small files, as in real images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(dest: Path, budget: int) -> int:
    """Copy regular files from /usr into `dest` until `budget` bytes; return the bytes copied."""
    total = 0
    for source in SOURCES:
        for dirpath, _dirs, files in os.walk(source):
            for name in sorted(files):
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                size = path.stat().st_size
                if total + size > budget:
                    return total
                target = dest / path.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                total += size
    return total


@contextlib.contextmanager
def registry(scratch: Path) -> Iterator[str]:
    port = free_port()
    config = scratch / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {scratch / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    process = spawn(["sh", "-c", 'exec docker-registry serve "$0" >/dev/null 2>&1', config])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def build_image(scratch: Path, host: str, size: int) -> tuple[str, Path]:
    """Build the image (4 layers of files from /usr plus busybox) and push it; return (ref, rootfs dir)."""
    ctx = scratch / "ctx"
    rootfs = ctx / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    run(["cp", "/bin/busybox", rootfs / "bin" / "busybox"])
    copied = fill(rootfs, size)
    parts = sorted(p for p in rootfs.rglob("*") if p.is_file())
    log(f"image: {copied / 1e6:.0f} MB in {len(parts)} files")
    lines = ["FROM scratch"]
    # Four layers: the top-level directories of the tree split into four groups.
    tops = sorted(p.relative_to(rootfs) for p in (rootfs / "usr").glob("*/*"))
    groups = [tops[i::4] for i in range(4)]
    for group in groups:
        for top in group:
            lines.append(f"COPY rootfs/{top} /{top}")
    lines.append("COPY rootfs/bin /bin")
    (ctx / "Containerfile").write_text("\n".join(lines) + "\n")
    storage = scratch / "buildah"
    buildah: list[str | Path] = [
        "buildah",
        "--root",
        storage / "root",
        "--runroot",
        storage / "run",
        "--storage-driver",
        "vfs",
    ]
    ref = f"{host}/bench/big:1"
    try:
        run([*buildah, "bud", "--quiet", "--layers", "-t", "big", ctx], capture=True)
        run([*buildah, "push", "--quiet", "--tls-verify=false", "big", f"docker://{ref}"], capture=True)
    finally:
        run([*buildah, "rmi", "--all", "--force"], check=False, capture=True)
        run(["rm", "-rf", "--one-file-system", storage], check=False)
    return ref, rootfs


def timed(step: Callable[[], None], reset: Callable[[], None], *, repeat: int) -> list[float]:
    """One untimed warm-up, then `repeat` timed runs; `reset` (untimed) before each."""
    samples = []
    for i in range(repeat + 1):
        reset()
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        if i:
            samples.append(elapsed)
    reset()
    return samples


def clear(path: Path) -> None:
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split()[4]
        if point.startswith(f"{path}/"):
            run(["umount", "--lazy", point], check=False, capture=True)
    run(["rm", "-rf", "--one-file-system", path], check=False)
    path.mkdir(parents=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/pull.py: run as root", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="veneer-bench-pull-"))
    results: dict[str, dict[str, list[float]]] = {}
    try:
        with registry(scratch) as host:
            ref, rootfs = build_image(scratch, host, args.size_mb * 1_000_000)
            env = {"PYTHONPATH": str(REPO / "src"), "DOCKER_CONFIG": str(scratch)}
            store = scratch / "store"
            veneer: list[str | Path] = [sys.executable, "-m", "veneer", "--root", store]

            def veneer_pull() -> None:
                run([*veneer, "image", "pull", "big", ref], capture=True, env=env)

            pstore = Path(tempfile.mkdtemp(prefix="vbp-"))  # podman refuses a run root over 50 chars
            global_flags, _ = podman_flags()
            podman: list[str | Path] = [
                "podman",
                *global_flags,
                "--root",
                pstore / "root",
                "--runroot",
                pstore / "run",
            ]

            def podman_pull() -> None:
                run([*podman, "pull", "--quiet", "--tls-verify=false", f"docker://{ref}"], capture=True)

            def podman_reset() -> None:
                run([*podman, "rmi", "--all", "--force"], check=False, capture=True)
                clear(pstore)

            copy_dir = scratch / "skopeo"

            def skopeo_tar() -> None:
                layout = copy_dir / "layout"
                run(
                    [
                        "skopeo",
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                        f"docker://{ref}",
                        f"oci:{layout}:1",
                    ]
                )
                index = json.loads((layout / "index.json").read_text())
                blobs = layout / "blobs" / "sha256"
                manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
                tree = copy_dir / "tree"
                tree.mkdir()
                for layer in manifest["layers"]:
                    run(["tar", "-xpzf", blobs / layer["digest"][7:], "--numeric-owner", "-C", tree])

            try:
                results[f"pull ~{args.size_mb} MB"] = {
                    "veneer image pull": timed(veneer_pull, lambda: clear(store), repeat=args.repeat),
                    "podman pull": timed(podman_pull, podman_reset, repeat=args.repeat),
                    "skopeo copy + tar -x": timed(skopeo_tar, lambda: clear(copy_dir), repeat=args.repeat),
                }
            finally:
                podman_reset()
                run(["rm", "-rf", "--one-file-system", pstore], check=False)

            target = scratch / "untar"
            for compress, suffix in (([], "tar"), (["--gzip"], "tar.gz")):
                tarball = scratch / f"rootfs.{suffix}"
                run(["tar", "-C", rootfs, *compress, "--numeric-owner", "-cf", tarball, "."])

                def veneer_import(tarball: Path = tarball) -> None:
                    run([*veneer, "image", "import", "big", tarball], capture=True, env=env)

                def gnu_tar(tarball: Path = tarball) -> None:
                    run(["tar", "-xpf", tarball, "--numeric-owner", "--xattrs", "-C", target])

                results[f"import rootfs .{suffix}"] = {
                    "veneer image import": timed(veneer_import, lambda: clear(store), repeat=args.repeat),
                    "GNU tar -x": timed(gnu_tar, lambda: clear(target), repeat=args.repeat),
                }
                tarball.unlink()
    finally:
        run(["rm", "-rf", "--one-file-system", scratch], check=False)

    print(f"\n{args.repeat} timed runs each after one warm-up; medians; ratio = contender / veneer\n")
    print("| benchmark | contender | median s | ratio |")
    print("|---|---|---:|---:|")
    for bench, contenders in results.items():
        base = statistics.median(next(iter(contenders.values())))
        for name, samples in contenders.items():
            median = statistics.median(samples)
            print(f"| {bench} | {name} | {median:.2f} | {median / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
