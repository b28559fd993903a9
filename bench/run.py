"""Benchmarks: veneer against the tools a user would run instead, side by side in one run, as ratios.

Run as root from a checkout: `python3 bench/run.py [--quick] [--only NAME] [--repeat N]`. Everything the
run makes (a store, copies, podman images and containers, mounts, cgroups) lives in one scratch directory
or is named `veneer-bench-*` or `vb*`, and is removed on the way out, also after a failure or Ctrl-C; the
machines and containers it boots in the background are stopped by pid.

Each contender is a small class following the protocol of bench/harness.py, which times them. A survey
(`memory`) measures something other than time and makes a table of its own. bench/README.md says what
each benchmark measures and why it is fair.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import itertools
import json
import math
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The harness (bench/ is on sys.path when a script in it runs); importing it puts src/ on sys.path.
from harness import (
    POLL_INTERVAL,
    Background,
    Contender,
    Samples,
    Scratch,
    child_pids,
    descendants,
    executable,
    exit_with,
    first_line,
    human_time,
    is_running,
    loadavg,
    log,
    machine_info,
    measure_process,
    memory_row,
    mounts_under,
    on_systemd,
    podman_flags,
    process_name,
    python_info,
    raise_on_sigterm,
    save_report,
    scratch_dir,
    spawn_logged,
    start_time,
    stat_fields,
    time_contenders,
    unit_pids,
    wait_all,
)

from veneer.errors import CommandFailed
from veneer.runtime.systemd_unit import SLICE
from veneer.util.proc import Completed, run, which

MB = 1024 * 1024
GB = 1024 * MB
PODMAN_PREFIX = "veneer-bench"
DEBIAN_SUITE = "bookworm"


# ---------------------------------------------------------------------------------------------------------
# The run's environment: scratch space, the veneer store in it, and how to call veneer and podman.


@dataclass(kw_only=True)
class Bench(Scratch):
    """The settings of this script's run, and podman as its peer."""

    quick: bool
    with_podman: bool = True  # False: the podman rows are left out (a host without podman)
    debian_from: Path | None = None  # `deb` from this tree instead of debootstrap (a host with no mirror)
    machines: int = 20  # how many machines `many` starts at once
    systemd: bool = False  # veneer's supervisor here is systemd: plain nspawn runs in scopes too
    base_info: dict[str, dict[str, int]] = field(default_factory=dict)
    _scopes: itertools.count[int] = field(default_factory=itertools.count)
    _podman_flags: tuple[list[str], list[str]] | None = None

    def podman_flags(self) -> tuple[list[str], list[str]]:
        """Podman's global flags and `run` flags that work on this host (see README, "Podman flags")."""
        if self._podman_flags is None:
            self._podman_flags = podman_flags()
        return self._podman_flags

    def podman(self, *args: str, check: bool = True) -> Completed:
        global_flags, _ = self.podman_flags()
        return run(["podman", *global_flags, *args], capture=True, check=check)

    def nspawn_argv(self, name: str, *flags: str) -> list[str]:
        """Plain systemd-nspawn with `flags`; on a systemd host in a transient scope of its own in
        machine.slice, delegated, as veneer's `run` puts its nspawn and its units keep theirs (see README,
        "On a systemd host"). Elsewhere the caller gives it a cgroup of its own (`nspawn_cgroups`)."""
        argv = ["systemd-nspawn", *flags]
        if not self.systemd:
            return argv
        scope = f"{PODMAN_PREFIX}-{name}-{next(self._scopes)}.scope"
        return ["systemd-run", "--scope", "--quiet", f"--unit={scope}", f"--slice={SLICE}", "--collect",
                "--property=Delegate=yes", "--", *argv]  # fmt: skip

    def nspawn_cgroups(self, name: str) -> list[Path]:
        """The cgroups of its own that plain nspawn `name` is started in: none on a systemd host, where its
        scope is that (`nspawn_argv`)."""
        return [] if self.systemd else setup_nspawn_cgroup(name)

    def podman_import(self, tree: Path, image: str) -> None:
        """Import a tree as a podman image (tar, then `podman import`); removed at the end of the run."""
        tarball = self.scratch / f"{image}.tar"
        run(["tar", "-C", tree, "-cf", tarball, "."], capture=True)
        self.defer(lambda: self.podman("rmi", "--force", image), f"podman rmi {image}")
        self.podman("import", os.fspath(tarball), image)
        tarball.unlink()


# ---------------------------------------------------------------------------------------------------------
# Machines that keep running: commands started in the background, processes found in /proc, stopped by pid.

BOOT_TIMEOUT = 60.0  # seconds for a machine to become ready, as `veneer start`'s default --timeout
STOP_TIMEOUT = 60.0
# The cgroup of its own that each plain nspawn runs in: /sys/fs/cgroup/<hierarchy>/veneer-bench/<name>.
CGROUP_GROUP = PODMAN_PREFIX


def container_init(nspawn_pid: int) -> int | None:
    """The container's PID 1 as the host sees it: the child of nspawn that is PID 1 in its pid namespace."""
    for child in child_pids(nspawn_pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                fields = line.split()
                if fields[:1] == ["NSpid:"] and len(fields) > 2 and fields[-1] == "1":
                    return child
    return None


def busybox_ready(nspawn_pid: int) -> bool:
    """Whether the container's init has started its first child: when veneer calls a busybox machine
    ready, busybox init having no way to say so itself."""
    init = container_init(nspawn_pid)
    return init is not None and executable(init) != "systemd-nspawn" and bool(child_pids(init))


def processes_using(paths: Sequence[Path]) -> dict[int, str]:
    """Running processes but this one whose command line, root, working directory or open files name a path
    under `paths`, or which listen on a unix socket there (a tmux server). A container's processes are
    not among them (their root is in another mount namespace): the caller watches them by pid."""
    places = [os.fspath(path) for path in paths]
    sockets = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and any(fields[7].startswith(place + "/") for place in places):
            sockets.add(f"socket:[{fields[6]}]")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if stat_fields(int(entry.name))[:1] in ([], ["Z"]):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            links = [os.readlink(entry / "root"), os.readlink(entry / "cwd")]
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    links.append(os.readlink(fd))
            if any(place in text for place in places for text in [cmdline, *links]) or sockets & set(links):
                found[int(entry.name)] = f"{process_name(int(entry.name))}: {cmdline[:100]}"
    return found


def kill_nspawn(nspawn: Background) -> None:
    """Cleanup only: SIGKILL the container's PID 1 (which ends its pid namespace) and nspawn."""
    if nspawn.process.poll() is not None:
        return  # exited and reaped: its pid may be another process's by now
    init = container_init(nspawn.pid)
    if init is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signal.SIGKILL)
    nspawn.kill()


def end_nspawns(nspawns: Sequence[Background], *, patience: float = 10.0) -> None:
    """Cleanup only: SIGTERM, so that nspawn removes its lock files under /run/systemd/nspawn/locks and
    its container powers off; SIGKILL what is left after `patience` seconds."""
    running = [nspawn for nspawn in nspawns if nspawn.process.poll() is None]
    for nspawn in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(nspawn.pid, signal.SIGTERM)
    with contextlib.suppress(CommandFailed):
        wait_all(running, what="exit after SIGTERM", timeout=patience)
    for nspawn in running:
        kill_nspawn(nspawn)


def stop_nspawn(nspawn: Background) -> None:
    """SIGTERM (nspawn passes its --kill-signal on to the init, which powers off) and wait for it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(nspawn.pid, signal.SIGTERM)
    try:
        wait_all([nspawn], what="exit after SIGTERM", timeout=STOP_TIMEOUT)
    except CommandFailed:
        kill_nspawn(nspawn)
        raise


def remove_nspawn_lock(tree: Path) -> None:
    """Cleanup only, once no nspawn runs on `tree`: remove the lock file nspawn keeps for it under
    /run/systemd/nspawn/locks, which an nspawn killed before it could release it leaves behind."""
    with contextlib.suppress(FileNotFoundError):
        st = tree.stat()
        Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}").unlink()


def cgroup_hierarchies(mountinfo: str | None = None) -> list[Path]:
    """The hierarchies nspawn needs a cgroup in: the v2 one and, on hybrid and v1 hosts, name=systemd."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    found = []
    for line in text.splitlines():
        fields = line.split()
        sep = fields.index("-")
        point, fstype, options = fields[4], fields[sep + 1], fields[sep + 3].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
            found.append(Path(point))
    return found


def setup_nspawn_cgroup(name: str) -> list[Path]:
    """A cgroup of its own for one plain nspawn, as a systemd host gives it a scope unit. Without one, nspawn
    --keep-unit runs in the harness's cgroup (here the root one, which it litters with `payload/` and
    `supervisor/`), where systemd in a user namespace cannot create its own cgroups and does not boot."""
    dirs = [top / CGROUP_GROUP / name for top in cgroup_hierarchies()]
    for path in dirs:
        path.mkdir(parents=True, exist_ok=True)
    return dirs


def prune_cgroups(dirs: Sequence[Path], *, keep_top: bool) -> None:
    """Remove the (empty) cgroups nspawn made below `dirs`, innermost first; with them `dirs` unless
    `keep_top`, and the veneer-bench group once empty."""
    for top in dirs:
        if not top.exists():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda walk: -len(walk[0])):
            if not keep_top or Path(dirpath) != top:
                remove_cgroup(Path(dirpath))
        if not keep_top:
            with contextlib.suppress(OSError):
                top.parent.rmdir()  # fails while another contender's cgroup is still in it


def remove_cgroup(path: Path, *, patience: float = 5.0) -> None:
    """rmdir a cgroup, waiting for processes just killed in it to be gone (EBUSY until then)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            path.rmdir()
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def machine_cgroups(name: str) -> list[Path]:
    """The cgroups veneer made for machine `name` that still exist, in any hierarchy: `veneer/NAME`, or
    `veneer-HASH/NAME` for a store other than the default one (as the run's own); on a systemd host its
    units' in machine.slice (`veneer[-HASH]-NAME.service` or `.scope`, `veneer[-HASH]-console@NAME.service`).
    """
    top = Path("/sys/fs/cgroup")
    units = [
        *(top / SLICE).glob(f"veneer*-{name}.s*"),
        *(top / SLICE).glob(f"veneer*-console@{name}.service"),
    ]
    return sorted([*top.glob(f"*/veneer*/{name}"), *top.glob(f"veneer*/{name}"), *units])


def remove_store_cgroups(bench: Bench) -> None:
    """Remove the run's store's own cgroup group (`veneer-HASH`) in each hierarchy, should veneer have left
    it behind (it removes it with the store's last machine's cgroups)."""
    group = Path(bench.layout.cgroup("m")).parent
    if group == Path("veneer"):
        return  # the default store's group is shared with the host's own machines: never ours to remove
    for hierarchy in {*Path("/sys/fs/cgroup").glob("*"), Path("/sys/fs/cgroup")}:
        if (hierarchy / group).is_dir():
            try:
                remove_cgroup(hierarchy / group)
            except OSError as e:
                raise CommandFailed(["rmdir", os.fspath(hierarchy / group)], 1, str(e)) from e


# ---------------------------------------------------------------------------------------------------------
# Bases shared by the benchmarks, each made once per run (untimed).


@dataclass(frozen=True, kw_only=True)
class Base:
    """A veneer image and where its tree is."""

    image: str
    tree: Path
    size_bytes: int
    files: int


def tree_stats(path: Path) -> tuple[int, int]:
    """Apparent size in bytes and number of non-directories under `path` (symlinks not followed)."""
    size = files = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            size += os.lstat(os.path.join(dirpath, name)).st_size
            files += 1
    return size, files


def image_tree(bench: Bench, image: str) -> Path:
    info = json.loads(bench.veneer("image", "show", image, "--json").stdout)
    return bench.store / "layers" / str(info["revisions"][0]["layers"][0]) / "tree"


class Bases:
    """The busybox base (~2 MB), the big base (~2 GB, ~200 MB with --quick) and a Debian base with systemd
    (~160 MB), each made on first use."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self._busybox: Base | None = None
        self._big: Base | None = None
        self._debian: Base | None = None

    def _register(self, image: str) -> Base:
        tree = image_tree(self.bench, image)
        size, files = tree_stats(tree)
        self.bench.base_info[image] = {"size_bytes": size, "files": files}
        log(f"base '{image}': {size / MB:.0f} MB, {files} files")
        return Base(image=image, tree=tree, size_bytes=size, files=files)

    def busybox(self) -> Base:
        if self._busybox is None:
            self.bench.defer(lambda: self.bench.veneer("image", "rm", "bb"), "veneer image rm bb")
            self.bench.timed_setup("veneer image create bb --busybox", lambda: self._create_busybox())
            self._busybox = self._register("bb")
        return self._busybox

    def _create_busybox(self) -> None:
        self.bench.veneer("image", "create", "bb", "--busybox")

    def big(self) -> Base:
        """The busybox tree padded with generated files to ~2 GB (made the same way every run, offline),
        as one tarball that veneer and podman both import."""
        if self._big is None:
            budget = 200 * MB if self.bench.quick else 2 * GB
            source = self.bench.scratch / "big-source"
            self.bench.timed_setup(
                f"fill a {budget // MB} MB tree", lambda: make_big_tree(source, self.busybox().tree, budget)
            )
            tarball = self.big_tarball
            self.bench.timed_setup("tar of the big tree", lambda: make_tarball(source, tarball))
            shutil.rmtree(source)
            self.bench.defer(lambda: self.bench.veneer("image", "rm", "big"), "veneer image rm big")
            self.bench.timed_setup("veneer image import big TAR", lambda: self._import_big(tarball))
            self._big = self._register("big")
        return self._big

    @property
    def big_tarball(self) -> Path:
        return self.bench.scratch / "big.tar"

    def _import_big(self, tarball: Path) -> None:
        self.bench.veneer("image", "import", "big", os.fspath(tarball))

    def debian(self) -> Base:
        """Debian with systemd, by debootstrap from the Debian mirror (about a minute)."""
        if self._debian is None:
            self.bench.defer(lambda: self.bench.veneer("image", "rm", "deb"), "veneer image rm deb")
            source = self.bench.debian_from
            how = f"--from-dir {source}" if source else f"--debootstrap {DEBIAN_SUITE}"
            self.bench.timed_setup(f"veneer image create deb {how}", self._create_debian)
            self._debian = self._register("deb")
        return self._debian

    def _create_debian(self) -> None:
        if self.bench.debian_from is not None:
            self.bench.veneer("image", "create", "deb", "--from-dir", os.fspath(self.bench.debian_from))
        else:
            self.bench.veneer("image", "create", "deb", "--debootstrap", DEBIAN_SUITE)


def make_big_tree(dest: Path, skeleton: Path, budget: int) -> None:
    """A root filesystem: the busybox skeleton plus generated files until `budget` bytes, the same every
    run: sizes log-uniform from 1 KiB to 4 MiB and contents from a PRNG with a fixed seed, in directories
    of 100 files (about 2,200 files per GB)."""
    run(["cp", "-a", skeleton, dest], capture=True)
    rng = random.Random(20261206)
    total, index = tree_stats(dest)[0], 0
    while total < budget:
        size = min(int(math.exp(rng.uniform(math.log(1 << 10), math.log(4 << 20)))), budget - total)
        directory = dest / "usr" / "share" / "bench-filler" / f"{index // 100:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index:06d}.bin").write_bytes(rng.randbytes(size))
        total += size
        index += 1


def make_tarball(tree: Path, tarball: Path) -> None:
    """The tree as a tar, members in name order and times fixed, so every run's tarball is the same."""
    run(
        ["tar", "-C", tree, "--sort=name", "--mtime=@0", "--numeric-owner", "-cf", tarball, "."],
        capture=True,
    )


# ---------------------------------------------------------------------------------------------------------
# Contenders.


class VeneerCreate(Contender):
    def __init__(self, bench: Bench, base: Callable[[], Base], label: str) -> None:
        self.bench, self.base, self.label = bench, base, label
        self.name = f"veneer create ({label} base)"
        self.command = "veneer create M --from IMAGE"
        self.image = ""

    def setup(self) -> None:
        self.image = self.base().image

    def machine(self, i: int) -> str:
        return f"bc{self.image[:3]}{i + 1}"

    def measure(self, i: int) -> None:
        self.bench.veneer("create", self.machine(i), "--from", self.image)

    def reset(self, i: int) -> None:
        self.bench.veneer("rm", self.machine(i))


class CopyTree(Contender):
    name = "cp -a (big tree)"
    command = "cp -a TREE COPY"

    def __init__(self, bench: Bench, base: Callable[[], Base]) -> None:
        self.bench, self.base = bench, base
        self.copies = bench.scratch / "copies"

    def setup(self) -> None:
        self.tree = self.base().tree
        self.copies.mkdir()

    def measure(self, i: int) -> None:
        run(["cp", "-a", self.tree, self.copies / f"c{i + 1}"], capture=True)

    def reset(self, i: int) -> None:
        shutil.rmtree(self.copies / f"c{i + 1}")

    def teardown(self) -> None:
        shutil.rmtree(self.copies, ignore_errors=True)


class PodmanCreate(Contender):
    name = "podman create (big image)"
    command = "podman create IMAGE true"

    def __init__(self, bench: Bench, base: Callable[[], Base], tarball: Path) -> None:
        self.bench, self.base, self.tarball = bench, base, tarball
        self.image = f"{PODMAN_PREFIX}-big"
        self.containers: dict[int, str] = {}

    def setup(self) -> None:
        self.base()
        self.bench.timed_setup(f"podman import of the big tarball as {self.image}", self._import)

    def _import(self) -> None:
        self.bench.defer(lambda: self.bench.podman("rmi", "--force", self.image), f"podman rmi {self.image}")
        self.bench.podman("import", os.fspath(self.tarball), self.image)

    def measure(self, i: int) -> None:
        self.containers[i] = self.bench.podman("create", self.image, "true").stdout.strip()

    def reset(self, i: int) -> None:
        self.bench.podman("rm", self.containers.pop(i))

    def teardown(self) -> None:
        for container in self.containers.values():
            self.bench.podman("rm", "--force", container, check=False)


class VeneerRun(Contender):
    """`veneer run` of a busybox machine on `network` (none or nat)."""

    def __init__(self, bench: Bench, bases: Bases, *, network: str, reference: int = 0) -> None:
        self.bench, self.bases, self.network = bench, bases, network
        self.name = f"veneer run, --network {network}"
        self.command = f"veneer run M -- /bin/true (M made with --network {network})"
        self.machine = f"brun-{network}"
        self.reference = reference
        self.created = False

    def setup(self) -> None:
        image = self.bases.busybox().image
        if self.network == "nat":
            # A subnet few others use: the bridge comes and goes with each run, and another store on the
            # host that picks the first free candidate meanwhile would clash with ours.
            self.bench.veneer(
                "network", "subnet", f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(256)}.0/24"
            )
        self.bench.veneer("create", self.machine, "--from", image, "--network", self.network)
        self.created = True

    def measure(self, i: int) -> None:
        self.bench.veneer("run", self.machine, "--", "/bin/true")

    def teardown(self) -> None:
        if self.created:
            self.bench.veneer("rm", self.machine)


# The address the `--network-veth` contender gives its container (TEST-NET-3: nothing is sent to it).
VETH_ADDRESS, VETH_GATEWAY = "203.0.113.2/24", "203.0.113.1"
# What a user of plain nspawn runs to give the container an address before the command, with the tree's
# busybox.
VETH_SETUP = (
    f"ip addr add {VETH_ADDRESS} dev host0 && ip link set host0 up && "
    f'ip route add default via {VETH_GATEWAY} && exec "$@"'
)


class NspawnRun(Contender):
    """systemd-nspawn on a plain copy of the busybox tree; `network` adds what veneer sets up too:
    "none" a user namespace and no network, "veth" a user namespace and a veth whose container side gets
    an address and a default route before the command runs."""

    def __init__(self, bench: Bench, bases: Bases, *, network: str | None, reference: int = 0) -> None:
        self.bench, self.bases, self.network = bench, bases, network
        self.reference = reference
        self.tree = bench.scratch / f"nspawn-{network or 'plain'}"
        self.flags = ["--quiet", "--register=no", "--keep-unit", f"--directory={self.tree}", "--pipe"]
        self.argv = ["/bin/true"]
        if network == "none":
            self.flags += ["--private-users=pick", "--private-network"]
            self.name = "systemd-nspawn -U --private-network"
        elif network == "veth":
            self.flags += ["--private-users=pick", "--network-veth"]
            self.argv = ["/bin/sh", "-c", VETH_SETUP, "sh", "/bin/true"]
            self.name = "systemd-nspawn -U --network-veth, address set in the container"
        else:
            self.name = "systemd-nspawn"
        shown = " ".join(f for f in self.flags if not f.startswith("--dir"))
        self.command = f"systemd-nspawn {shown} -D TREE -- {shlex.join(self.argv)}"

    def setup(self) -> None:
        run(["cp", "-a", self.bases.busybox().tree, self.tree], capture=True)
        if self.network:
            self.measure(-1)  # --private-users=pick chowns the copy on its first run: not part of the task

    def measure(self, i: int) -> None:
        run(self.bench.nspawn_argv(self.tree.name, *self.flags, "--", *self.argv), capture=True)

    def teardown(self) -> None:
        shutil.rmtree(self.tree, ignore_errors=True)


class PodmanRun(Contender):
    name = "podman run --rm"

    def __init__(self, bench: Bench, bases: Bases) -> None:
        self.bench, self.bases = bench, bases
        self.image = f"{PODMAN_PREFIX}-bb"
        global_flags, run_flags = bench.podman_flags()
        self.command = " ".join(["podman", *global_flags, "run --rm", *run_flags, "IMAGE /bin/true"])

    def setup(self) -> None:
        self.bench.podman_import(self.bases.busybox().tree, self.image)

    def measure(self, i: int) -> None:
        _, run_flags = self.bench.podman_flags()
        self.bench.podman("run", "--rm", *run_flags, self.image, "/bin/true")


class Command(Contender):
    """A command with nothing to set up: the floors that veneer's numbers stand on."""

    def __init__(self, name: str, call: Callable[[], Completed]) -> None:
        self.name = self.command = name
        self.call = call

    def measure(self, i: int) -> None:
        self.call()


class VeneerBoot(Contender):
    """`veneer start M --wait` of a machine with no network (as the isolated nspawn row), `debian` or not."""

    def __init__(self, bench: Bench, base: Callable[[], Base], *, label: str) -> None:
        self.bench, self.base = bench, base
        self.name = f"veneer start --wait ({label})"
        self.command = "veneer start M --wait (M: --network none)"
        self.machine = f"vbboot{label[:2]}"
        self.created = False

    def setup(self) -> None:
        self.bench.veneer("create", self.machine, "--from", self.base().image, "--network", "none")
        self.created = True

    def measure(self, i: int) -> None:
        self.bench.veneer("start", self.machine, "--wait")

    def reset(self, i: int) -> None:
        self.bench.veneer("stop", self.machine)

    def teardown(self) -> None:
        if self.created:
            self.bench.veneer("stop", self.machine, check=False)
            self.bench.veneer("rm", self.machine)


class NspawnBoot(Contender):
    """Plain systemd-nspawn --boot of its own copy of the base's tree, in the background: a systemd guest
    is ready when nspawn passes its READY=1 on to the socket the harness listens on, a busybox guest once
    its init has a child. `isolated` adds what veneer sets up."""

    def __init__(self, bench: Bench, base: Callable[[], Base], *, isolated: bool, systemd: bool) -> None:
        self.bench, self.base, self.isolated, self.systemd = bench, base, isolated, systemd
        # The directory's name is the machine's name (nspawn's default).
        kind = "deb" if systemd else "bb"
        self.tree = bench.scratch / (f"vb{kind}-userns" if isolated else f"vb{kind}-nspawn")
        self.socket_path = bench.scratch / f"{self.tree.name}.notify"
        self.flags = ["--quiet", "--register=no", "--keep-unit", f"--directory={self.tree}"]
        # The console goes to a log file, as veneer's does; read-only: nobody types into it.
        self.boot = ["--boot", "--console=read-only"]
        # busybox init powers off on SIGUSR2 (nspawn's default is SIGRTMIN+3); veneer passes the same.
        self.boot += ["--notify-ready=yes"] if systemd else ["--kill-signal=SIGUSR2"]
        if isolated:
            # veneer's defaults: a user namespace and no network.
            self.flags += ["--private-users=pick", "--private-network"]
        self.name = "systemd-nspawn --boot -U --private-network" if isolated else "systemd-nspawn --boot"
        self.command = "systemd-nspawn " + " ".join(f for f in self.flags if not f.startswith("--dir"))
        self.command += " -D TREE " + " ".join(self.boot)
        self.command += " (NOTIFY_SOCKET=S)" if systemd else ", until init has a child"
        self.cgroups: list[Path] = []
        self.notify: socket.socket | None = None
        self.running: list[Background] = []  # at most one

    def setup(self) -> None:
        run(["cp", "-a", self.base().tree, self.tree], capture=True)
        self.cgroups = self.bench.nspawn_cgroups(self.tree.name)
        if self.isolated:
            # --private-users=pick chowns the copy on its first run, unless it can map it with an idmapped
            # mount (nspawn 252 on ext4 does): not part of the task either way.
            wait_all([self.spawn(["--pipe", "--", "/bin/true"])], what="run /bin/true", timeout=STOP_TIMEOUT)
            self.running.clear()
            prune_cgroups(self.cgroups, keep_top=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify.bind(os.fspath(self.socket_path))

    def spawn(self, args: list[str]) -> Background:
        env = {"NOTIFY_SOCKET": os.fspath(self.socket_path)}
        log = self.bench.log_file(self.tree.name)
        argv = self.bench.nspawn_argv(self.tree.name, *self.flags, *args)
        return spawn_logged(argv, into=self.running, log=log, env=env, cgroups=self.cgroups)

    def measure(self, i: int) -> None:
        assert self.notify is not None
        nspawn = self.spawn(self.boot)
        if self.systemd:
            wait_for_ready(self.notify, nspawn, timeout=BOOT_TIMEOUT)
        else:
            wait_for_busybox([nspawn], timeout=BOOT_TIMEOUT)

    def reset(self, i: int) -> None:
        assert self.notify is not None
        stop_nspawn(self.running[0])
        self.running.clear()
        drain(self.notify)  # STOPPING=1 and the like, not to be read as the next boot's
        prune_cgroups(self.cgroups, keep_top=True)  # nspawn leaves payload/ and supervisor/ behind

    def teardown(self) -> None:
        end_nspawns(self.running)
        self.running.clear()
        if self.notify is not None:
            self.notify.close()
        self.socket_path.unlink(missing_ok=True)
        prune_cgroups(self.cgroups, keep_top=False)
        remove_nspawn_lock(self.tree)
        shutil.rmtree(self.tree, ignore_errors=True)


def wait_for_busybox(nspawns: Sequence[Background], *, timeout: float) -> None:
    """Until each nspawn's busybox init has started a child (looked for every POLL_INTERVAL)."""
    deadline = time.monotonic() + timeout
    pending = list(nspawns)
    while pending := [nspawn for nspawn in pending if not busybox_ready(nspawn.pid)]:
        for nspawn in pending:
            if (status := nspawn.process.poll()) is not None:
                raise nspawn.failure(status)
        if time.monotonic() > deadline:
            raise pending[0].timed_out("boot busybox", timeout)
        time.sleep(POLL_INTERVAL)


def wait_for_ready(notify: socket.socket, nspawn: Background, *, timeout: float) -> None:
    """Until nspawn sends READY=1 (sd_notify) to `notify`; raise if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    notify.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            message = notify.recv(4096)
        except TimeoutError:
            status = nspawn.process.poll()
            if status is not None:
                raise nspawn.failure(status) from None
            continue
        if b"READY=1" in message.split(b"\n"):
            return
    raise nspawn.timed_out("report READY=1", timeout)


def drain(notify: socket.socket) -> None:
    notify.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            notify.recv(4096)


class Fleet:
    """Many busybox machines started all at once and stopped all at once, by veneer or by plain nspawn."""

    def setup(self) -> None:
        """Untimed, idempotent: two contenders (start, stop) share a fleet."""

    def start_all(self) -> None:
        raise NotImplementedError

    def stop_all(self) -> None:
        raise NotImplementedError

    def before_stop(self) -> None:
        """Untimed, while the machines run."""

    def after_stop(self) -> None:
        """Untimed: clean up what stopping leaves (or check that nothing is left)."""

    def teardown(self) -> None:
        """Idempotent; copes with a fleet half started or half stopped."""

    def notes(self) -> list[str]:
        return []


class VeneerFleet(Fleet):
    """`count` machines from the busybox image; each start or stop is a `veneer` process of its own, all
    started at once. After each stop: the check that nothing of the machines is left."""

    def __init__(
        self,
        bench: Bench,
        bases: Bases,
        *,
        prefix: str,
        count: int,
        one_process: bool = False,
        base: Callable[[], Base] | None = None,
    ) -> None:
        self.bench, self.one_process = bench, one_process
        self.base = base or bases.busybox
        self.names = [f"{prefix}{n:02d}" for n in range(1, count + 1)]
        self.created: list[str] = []
        self.commands: list[Background] = []  # veneer processes in flight
        # The machines' processes while they ran, pid: (start time, what), to find any left after a stop.
        self.watched: dict[int, tuple[int | None, str]] = {}
        self.checks: list[dict[str, list[tuple[str, str]]]] = []

    def setup(self) -> None:
        image = self.base().image
        for name in self.names:
            if name not in self.created:
                self.bench.veneer("create", name, "--from", image, "--network", "none")
                self.created.append(name)

    def _all(self, verb: str, *flags: str, timeout: float) -> None:
        env = self.bench.veneer_env()
        if self.one_process:
            argv = self.bench.veneer_argv(verb, *self.names, *flags)
            spawn_logged(argv, into=self.commands, log=self.bench.log_file(f"{verb}-all"), env=env)
        for name in self.names if not self.one_process else []:
            argv = self.bench.veneer_argv(verb, name, *flags)
            spawn_logged(argv, into=self.commands, log=self.bench.log_file(f"{verb}-{name}"), env=env)
        wait_all(self.commands, what=f"veneer {verb}", timeout=timeout)
        self.commands.clear()

    def start_all(self) -> None:
        self._all("start", "--wait", timeout=BOOT_TIMEOUT + 30)

    def stop_all(self) -> None:
        self._all("stop", timeout=STOP_TIMEOUT + 30)

    def console_socket(self, name: str) -> Path:
        return self.bench.runtime / "machines" / f"{name}.console"

    def keeper_tree(self, name: str) -> tuple[list[int], list[int]]:
        """The pids in the machine's console keeper: veneer's (the tmux server and all below it but nspawn),
        and nspawn's. The container's own processes, below nspawn, are in neither. On a systemd host: the
        console unit's processes, and its unit's outside the container (nspawn)."""
        if self.bench.systemd:
            return unit_pids(self.bench.layout, name)
        server = run(
            ["tmux", "-S", self.console_socket(name), "display-message", "-p", "#{pid}"], capture=True
        )
        ours, nspawns, todo = [], [], [int(server.stdout)]
        while todo:
            pid = todo.pop()
            if executable(pid) == "systemd-nspawn":
                nspawns.append(pid)
            else:
                ours.append(pid)
                todo += child_pids(pid)
        return ours, nspawns

    def before_stop(self) -> None:
        self.watched = {}
        for name in self.names:
            ours, nspawns = self.keeper_tree(name)
            below = [p for n in nspawns for p in [n, *descendants(n)]]
            for pid in ours + below:
                self.watched[pid] = (start_time(pid), f"{name}: {process_name(pid)}")

    def leftovers(self) -> list[tuple[str, str]]:
        """What is left of the stopped machines, as (kind, detail)."""
        found = [
            ("mount", point) for point in mounts_under(self.bench.store) + mounts_under(self.bench.runtime)
        ]
        found += [("cgroup", os.fspath(path)) for name in self.names for path in machine_cgroups(name)]
        processes = processes_using([self.bench.store, self.bench.runtime])
        processes |= {pid: what for pid, (started, what) in self.watched.items() if is_running(pid, started)}
        for pid, what in sorted(processes.items()):
            # The console keeper's pane-died hook, run when nspawn has exited: see README, `many`.
            kind = "veneer _reap" if " _reap " in what else what.split(":")[0]
            found.append((kind, f"pid {pid} {what}"))
        listed = json.loads(self.bench.veneer("list", "--json").stdout)
        found += [
            ("machine not stopped", f"{m['name']} {m['state']} (pid {m['pid']})")
            for m in listed
            if m["name"] in self.names and (m["state"] != "stopped" or m["pid"] is not None)
        ]
        return found

    def after_stop(self) -> None:
        right_after = self.leftovers()
        later = []
        if right_after:
            kinds = collections.Counter(kind for kind, _ in right_after)
            log(f"right after veneer stop, still there: {', '.join(f'{k} ({n})' for k, n in kinds.items())}")
            time.sleep(1.0)
            later = self.leftovers()
        self.checks.append({"right_after_stop": right_after, "one_second_later": later})

    def notes(self) -> list[str]:
        if not self.checks:
            return []
        counts = [
            collections.Counter(kind for kind, _ in check["right_after_stop"]) for check in self.checks
        ]
        kinds = sorted({kind for count in counts for kind in count})
        note = (
            f"after each of {len(self.checks)} rounds of {len(self.names)} concurrent stops (every"
            " round, warm-up included), checked as soon as the last had returned: "
        )
        checked = {
            "mount": "mounts under the store",
            "cgroup": "cgroups veneer*/NAME",
            "process": "console keeper (tmux, sh, head), nspawn or container processes",
            "machine not stopped": "machines not listed as stopped",
        }
        found = {kind if kind in checked else "process" for kind in kinds if kind != "veneer _reap"}
        note += "no " + ", no ".join(what for kind, what in checked.items() if kind not in found)
        for kind in kinds:
            rounds = sum(1 for count in counts if count[kind])
            note += f"; {kind}: in {rounds} rounds, up to {max(count[kind] for count in counts)} at once"
        if kinds:
            later = collections.Counter(
                kind for check in self.checks for kind, _ in check["one_second_later"]
            )
            note += "; one second later: " + (", ".join(f"{k} ({n})" for k, n in later.items()) or "nothing")
        return [note]

    def teardown(self) -> None:
        # veneer commands still in flight (a Ctrl-C during the timed part) finish or give up by themselves.
        for command in self.commands:
            if command.process.poll() is None:
                with contextlib.suppress(CommandFailed):
                    wait_all([command], what="finish", timeout=BOOT_TIMEOUT + 30)
                command.kill()
        self.commands.clear()
        if self.created:
            self.bench.veneer("stop", *self.created, check=False)  # all at once
            self.bench.veneer("rm", *self.created)
            self.created = []


class NspawnFleet(Fleet):
    """`count` plain systemd-nspawn --boot, each of its own copy of the busybox tree and in a cgroup of its
    own, all started at once. Started: each busybox init has a child; stopped: SIGTERM, all have exited."""

    def __init__(self, bench: Bench, bases: Bases, *, prefix: str, count: int) -> None:
        self.bench, self.bases = bench, bases
        self.dir = bench.scratch / "fleet"
        self.trees = [self.dir / f"{prefix}{n:02d}" for n in range(1, count + 1)]
        self.cgroups: dict[Path, list[Path]] = {}
        self.running: list[Background] = []

    @staticmethod
    def flags(tree: Path) -> list[str]:
        # --kill-signal: busybox init powers off on SIGUSR2 (nspawn's default for --boot is SIGRTMIN+3,
        # which busybox init ignores); veneer passes the same.
        return ["--quiet", "--register=no", "--keep-unit", f"--directory={tree}", "--boot",
                "--kill-signal=SIGUSR2", "--console=read-only"]  # fmt: skip

    def setup(self) -> None:
        if self.cgroups:
            return
        self.dir.mkdir(exist_ok=True)
        for tree in self.trees:
            run(["cp", "-a", self.bases.busybox().tree, tree], capture=True)
            self.cgroups[tree] = self.bench.nspawn_cgroups(tree.name)

    def start_all(self) -> None:
        for tree in self.trees:
            argv = self.bench.nspawn_argv(tree.name, *self.flags(tree))
            log = self.bench.log_file(tree.name)
            spawn_logged(argv, into=self.running, log=log, cgroups=self.cgroups[tree])
        wait_for_busybox(self.running, timeout=BOOT_TIMEOUT)

    def stop_all(self) -> None:
        for nspawn in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(nspawn.pid, signal.SIGTERM)
        wait_all(self.running, what="exit after SIGTERM", timeout=STOP_TIMEOUT)
        self.running.clear()

    def after_stop(self) -> None:
        for dirs in self.cgroups.values():
            prune_cgroups(dirs, keep_top=True)  # nspawn leaves payload/ and supervisor/ behind

    def teardown(self) -> None:
        end_nspawns(self.running)
        self.running.clear()
        for dirs in self.cgroups.values():
            prune_cgroups(dirs, keep_top=False)
        self.cgroups = {}
        for tree in self.trees:
            remove_nspawn_lock(tree)
        shutil.rmtree(self.dir, ignore_errors=True)


class FleetStart(Contender):
    """Timed: start the whole fleet; then (untimed) stop it."""

    def __init__(self, fleet: Fleet, name: str, command: str) -> None:
        self.fleet, self.name, self.command = fleet, name, command

    def setup(self) -> None:
        self.fleet.setup()

    def measure(self, i: int) -> None:
        self.fleet.start_all()

    def reset(self, i: int) -> None:
        self.fleet.before_stop()
        self.fleet.stop_all()
        self.fleet.after_stop()

    def teardown(self) -> None:
        self.fleet.teardown()


class FleetStop(FleetStart):
    """Untimed: start the whole fleet; timed: stop it."""

    def __init__(self, fleet: Fleet, name: str, command: str, *, reference: int) -> None:
        super().__init__(fleet, name, command)
        self.reference = reference

    def prepare(self, i: int) -> None:
        self.fleet.start_all()
        self.fleet.before_stop()

    def measure(self, i: int) -> None:
        self.fleet.stop_all()

    def reset(self, i: int) -> None:
        self.fleet.after_stop()

    def notes(self) -> list[str]:
        return self.fleet.notes()  # the stop rows report the checks of both contenders' stops


# ---------------------------------------------------------------------------------------------------------
# Surveys: measurements that are not timings, each with a table of its own.

MEMORY_MACHINES = 5
# A Python supervisor at its barest: the interpreter and the modules such a supervisor would need, asleep.
SUPERVISOR = "import os, select, socket, signal, time; time.sleep(60)"
SETTLE_SECONDS = 1.0


def memory_survey(bench: Bench, bases: Bases) -> dict[str, Any]:
    """What veneer keeps alive per running machine, beside nspawn's own cost and a Python supervisor's."""
    if bench.systemd:
        raise SystemExit("bench: on a systemd host, memory per machine is bench/supervisors.py's to measure")
    fleet = VeneerFleet(bench, bases, prefix="vbmem", count=MEMORY_MACHINES)
    command = [sys.executable, "-I", "-S", "-c", SUPERVISOR]
    supervisors: list[Background] = []
    processes: list[dict[str, Any]] = []
    try:
        fleet.setup()
        for name in fleet.names:
            # One after the other: `veneer start`s run at once race on the console keepers' shared config
            # file, and a keeper that read it half-written runs with tmux's defaults (see README).
            bench.veneer("start", name, "--wait")
        for n in range(MEMORY_MACHINES):
            spawn_logged(command, into=supervisors, log=bench.log_file(f"supervisor-{n}"))
        time.sleep(SETTLE_SECONDS)  # the supervisors have done their imports; the machines are idle
        for name in fleet.names:
            keeper, nspawns = fleet.keeper_tree(name)
            processes += [measure_process(pid, machine=name, kind="veneer") for pid in keeper]
            processes += [measure_process(pid, machine=name, kind="nspawn") for pid in nspawns]
        for supervisor in supervisors:
            if supervisor.process.poll() is not None:
                raise supervisor.failure(supervisor.process.returncode)
            processes.append(measure_process(supervisor.pid, machine="", kind="python"))
    finally:
        for supervisor in supervisors:
            supervisor.kill()
        fleet.teardown()
    ours = [p for p in processes if p["kind"] == "veneer"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for process in ours:
        by_name.setdefault(process["name"], []).append(process)
    names = ", ".join(by_name)
    rows = [
        memory_row(f"veneer: console keeper ({names})", ours, MEMORY_MACHINES),
        *(memory_row(f"veneer: {name}", group, MEMORY_MACHINES) for name, group in by_name.items()),
        memory_row("systemd-nspawn", [p for p in processes if p["kind"] == "nspawn"], MEMORY_MACHINES),
        memory_row(
            "Python supervisor (python3 -I -S, asleep)",
            [p for p in processes if p["kind"] == "python"],
            MEMORY_MACHINES,
        ),
    ]
    return {
        "name": "memory",
        "kind": "survey",
        "what": f"memory per running machine, {MEMORY_MACHINES} busybox machines started by veneer",
        "machines": MEMORY_MACHINES,
        "supervisor": shlex.join(command),
        "rows": rows,
        "processes": processes,
    }


# ---------------------------------------------------------------------------------------------------------
# Benchmarks: a list of contenders, the first being veneer's (the reference of the ratios).


@dataclass(frozen=True, kw_only=True)
class Benchmark:
    name: str
    what: str
    contenders: Callable[[Bench, Bases], list[Contender]]
    # Extra ratios worth a line of their own: (label, numerator contender, denominator contender).
    extra_ratios: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Survey:
    """A measurement that is not a timing: `measure` returns its result, rows for a table of its own."""

    name: str
    what: str
    measure: Callable[[Bench, Bases], dict[str, Any]]


def create_contenders(bench: Bench, bases: Bases) -> list[Contender]:
    big = "200 MB" if bench.quick else "2 GB"
    return [
        VeneerCreate(bench, bases.big, big),
        CopyTree(bench, bases.big),
        PodmanCreate(bench, bases.big, bases.big_tarball),
        VeneerCreate(bench, bases.busybox, "2 MB"),
    ]


def run_contenders(bench: Bench, bases: Bases) -> list[Contender]:
    return [
        VeneerRun(bench, bases, network="none"),
        NspawnRun(bench, bases, network="none"),
        VeneerRun(bench, bases, network="nat", reference=2),
        NspawnRun(bench, bases, network="veth", reference=2),
        NspawnRun(bench, bases, network=None),
        *([PodmanRun(bench, bases)] if bench.with_podman else []),
    ]


def boot_contenders(bench: Bench, bases: Bases) -> list[Contender]:
    return [
        VeneerBoot(bench, bases.debian, label="debian"),
        NspawnBoot(bench, bases.debian, isolated=False, systemd=True),
        NspawnBoot(bench, bases.debian, isolated=True, systemd=True),
    ]


def boot_busybox_contenders(bench: Bench, bases: Bases) -> list[Contender]:
    return [
        VeneerBoot(bench, bases.busybox, label="busybox"),
        NspawnBoot(bench, bases.busybox, isolated=False, systemd=False),
        NspawnBoot(bench, bases.busybox, isolated=True, systemd=False),
    ]


MANY_MACHINES = 20


def many_contenders(bench: Bench, bases: Bases) -> list[Contender]:
    n = bench.machines
    ours = VeneerFleet(bench, bases, prefix="vbmany", count=n)
    together = VeneerFleet(bench, bases, prefix="vbone", count=n, one_process=True)
    plain = NspawnFleet(bench, bases, prefix="vbplain", count=n)
    nspawn_start = f"{n} x systemd-nspawn --boot, until each init has a child"
    nspawn_stop = f"{n} x kill -TERM NSPAWN, until all exited"
    return [
        FleetStart(ours, f"veneer start --wait, {n} processes at once", f"{n} x veneer start M --wait"),
        FleetStart(
            together, f"veneer start --wait M1..M{n}, one process", f"veneer start M1 .. M{n} --wait"
        ),
        FleetStart(plain, f"systemd-nspawn --boot, {n} at once", nspawn_start),
        FleetStop(ours, f"veneer stop, {n} processes at once", f"{n} x veneer stop M", reference=3),
        FleetStop(together, f"veneer stop M1..M{n}, one process", f"veneer stop M1 .. M{n}", reference=3),
        FleetStop(plain, f"SIGTERM to systemd-nspawn, {n} at once", nspawn_stop, reference=3),
    ]


class VeneerListing(Contender):
    """`veneer list` or `veneer status M` of a store with one stopped busybox machine."""

    machine = "bstatus"

    def __init__(self, bench: Bench, bases: Bases, verb: str) -> None:
        self.bench, self.bases = bench, bases
        self.args = ["list"] if verb == "list" else ["status", self.machine]
        self.name = self.command = f"veneer {' '.join(self.args)}"
        self.created = False

    def setup(self) -> None:
        if self.args == ["status", self.machine]:
            self.bench.veneer(
                "create", self.machine, "--from", self.bases.busybox().image, "--network", "none"
            )
            self.created = True

    def measure(self, i: int) -> None:
        self.bench.veneer(*self.args)

    def teardown(self) -> None:
        if self.created:
            self.bench.veneer("rm", self.machine)


def startup_contenders(bench: Bench, bases: Bases) -> list[Contender]:
    return [
        Command("veneer --help", lambda: bench.veneer("--help")),
        VeneerListing(bench, bases, "list"),
        VeneerListing(bench, bases, "status"),
        Command("python3 -c pass", lambda: run([bench.python, "-c", "pass"], capture=True)),
    ]


BENCHMARKS: tuple[Benchmark | Survey, ...] = (
    Benchmark(
        name="create",
        what="make a child of a big base",
        contenders=create_contenders,
        extra_ratios=(
            ("veneer create: big base / 2 MB base", 0, 3),
            ("goal <= 0.50: veneer create / podman create (big)", 0, 2),
        ),
    ),
    Benchmark(
        name="run",
        what="run /bin/true in a busybox machine",
        contenders=run_contenders,
        extra_ratios=(
            ("veneer run, none / systemd-nspawn -U --private-network", 0, 1),
            ("veneer run, nat / systemd-nspawn -U --network-veth + address", 2, 3),
        ),
    ),
    Benchmark(
        name="boot",
        what="boot a Debian machine until systemd reports ready",
        contenders=boot_contenders,
        extra_ratios=(("goal <= 1.20: veneer / nspawn -U --private-network", 0, 2),),
    ),
    Benchmark(
        name="boot-bb",
        what="boot a busybox machine until its init has a child",
        contenders=boot_busybox_contenders,
        extra_ratios=(("goal <= 1.20: veneer / nspawn -U --private-network", 0, 2),),
    ),
    Benchmark(
        name="many",
        what=f"start busybox machines at once (--machines, default {MANY_MACHINES}), then stop them at once",
        contenders=many_contenders,
        extra_ratios=(
            ("goal <= 1.50: start, one veneer process / nspawn", 1, 2),
            ("start, a veneer process each / nspawn", 0, 2),
            ("goal <= 1.20: stop, one veneer process / SIGTERM", 4, 5),
            ("stop, a veneer process each / SIGTERM", 3, 5),
        ),
    ),
    Survey(
        name="memory",
        what="what veneer keeps alive per running machine (a table, not a timing)",
        measure=memory_survey,
    ),
    Benchmark(
        name="startup",
        what="context: how much of veneer's time is starting Python and its CLI",
        contenders=startup_contenders,
        extra_ratios=(
            ("veneer --help / python3 -c pass", 0, 3),
            ("veneer list / python3 -c pass", 1, 3),
            ("veneer status M / python3 -c pass", 2, 3),
        ),
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Reporting.


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of every contender, with its median's ratio to veneer's median (to veneer's stop,
    for the rows that stop), then a table per survey, then the notes."""
    lines = [
        "| benchmark | contender | median | min | median / veneer |",
        "|---|---|---:|---:|---:|",
    ]
    timings = [result for result in results if result["kind"] == "timing"]
    for result in timings:
        for row in result["contenders"]:
            lines.append(
                f"| {result['name']} | {row['name']} | {human_time(row['median_s'])} "
                f"| {human_time(row['min_s'])} | {row['ratio_to_veneer']:.2f}x |"
            )
        for extra in result["extra_ratios"]:
            lines.append(f"| {result['name']} | {extra['label']} | | | {extra['ratio']:.2f}x |")
    if not timings:
        lines = []
    for result in results:
        if result["kind"] == "survey":
            lines += ["", *format_survey(result)]
    notes = [
        f"- {result['name']}, {row['name']}: {note}"
        for result in timings
        for row in result["contenders"]
        for note in row["notes"]
    ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines).strip("\n")


def format_survey(result: dict[str, Any]) -> list[str]:
    """The memory survey's table: per machine (per supervisor), in MB of 2^20 bytes."""
    lines = [
        f"| {result['name']}: per machine, {result['machines']} running | processes | Pss | Private | Rss |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['label']} | {row['processes_per_machine']:g} | {row['pss_mb']:.2f} MB "
            f"| {row['private_mb']:.2f} MB | {row['rss_mb']:.2f} MB |"
        )
    return lines


def summarize(benchmark: Benchmark, samples: list[Samples]) -> dict[str, Any]:
    return {
        "name": benchmark.name,
        "kind": "timing",
        "what": benchmark.what,
        "contenders": [
            {
                "name": s.name,
                "command": s.command,
                "samples_s": s.seconds,
                "median_s": s.median,
                "min_s": s.min,
                "reference": samples[s.reference].name,
                "ratio_to_veneer": s.median / samples[s.reference].median,
                "notes": s.notes,
            }
            for s in samples
        ],
        "extra_ratios": [
            {"label": label, "ratio": samples[top].median / samples[bottom].median}
            for label, top, bottom in benchmark.extra_ratios
        ],
    }


def host_info(bench: Bench) -> dict[str, Any]:
    return {
        **machine_info(bench.scratch),
        "veneer_python": python_info(bench.python),
        "supervisor": "systemd" if bench.systemd else "standalone",
        "systemd_nspawn": first_line(["systemd-nspawn", "--version"]),
        "podman": first_line(["podman", "--version"]) if bench.with_podman else None,
        "podman_flags": dict(zip(("global", "run"), bench.podman_flags(), strict=True))
        if bench.with_podman
        else None,
        "runc": first_line(["runc", "--version"]) if which("runc") else None,
    }


# ---------------------------------------------------------------------------------------------------------
# Cleanup of the scratch directory: unmount first, so that deleting it cannot reach through a mount.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="veneer benchmarks (as root)")
    parser.add_argument("--quick", action="store_true", help="a ~200 MB big base instead of ~2 GB")
    names = [b.name for b in BENCHMARKS]
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        help=f"run these benchmarks, comma-separated ({', '.join(names)})",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per contender (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument(
        "--python",
        type=Path,
        default=Path(sys.executable),
        help="the interpreter that runs veneer and `python3 -c pass` (default: the one running this script)",
    )
    parser.add_argument(
        "--machines",
        type=int,
        default=MANY_MACHINES,
        help=f"machines `many` starts (default {MANY_MACHINES})",
    )
    parser.add_argument("--no-podman", action="store_true", help="leave podman's rows out (no `create`)")
    parser.add_argument(
        "--debian-from",
        type=Path,
        metavar="DIR",
        help="make the Debian base from this tree (`image create --from-dir`) instead of by debootstrap",
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="write the JSON here (default bench/results/TIME.json)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (overlay mounts, nspawn, rootful podman)", file=sys.stderr)
        return 2
    if args.repeat < 1 or args.machines < 1:
        print("bench: --repeat and --machines must be at least 1", file=sys.stderr)
        return 2
    if args.no_podman and (args.only is None or "create" in args.only):
        print("bench: `create` compares with podman: leave it out with --only", file=sys.stderr)
        return 2
    if not os.access(args.python, os.X_OK):
        print(f"bench: --python {args.python}: not an executable file", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    unknown = set(args.only or ()) - {b.name for b in BENCHMARKS}
    if unknown:
        print(f"bench: no benchmark named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    selected = [b for b in BENCHMARKS if args.only is None or b.name in args.only]
    started, load_at_start = time.time(), loadavg()
    with scratch_dir() as scratch, contextlib.ExitStack() as cleanups:
        bench = Bench(
            scratch=scratch,
            quick=args.quick,
            cleanups=cleanups,
            python=args.python,
            with_podman=not args.no_podman,
            debian_from=args.debian_from,
            machines=args.machines,
            systemd=on_systemd(),
        )
        # Registered first, so it runs last, once every machine of the run's store is gone.
        bench.defer(lambda: remove_store_cgroups(bench), "remove the store's cgroup group")
        bases = Bases(bench)
        results = []
        for benchmark in selected:
            log(f"benchmark '{benchmark.name}': {benchmark.what}")
            if isinstance(benchmark, Survey):
                results.append(benchmark.measure(bench, bases))
                continue
            samples = time_contenders(benchmark.contenders(bench, bases), args.repeat, args.warmup)
            results.append(summarize(benchmark, samples))
        report = {
            "version": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "arguments": {
                "quick": args.quick,
                "only": args.only,
                "repeat": args.repeat,
                "warmup": args.warmup,
                "python": os.fspath(args.python),
                "machines": args.machines,
                "no_podman": args.no_podman,
                "debian_from": os.fspath(args.debian_from) if args.debian_from else None,
            },
            "host": {**host_info(bench), "loadavg_at_start": load_at_start},
            "bases": bench.base_info,
            "setup_s": bench.setup_seconds,
            "benchmarks": results,
        }
    # The cleanups ran when the `with` ended: only now is it known whether all of them worked.
    report["cleanup_failures"] = bench.cleanup_failures
    table = format_table(results)
    print(table)
    save_report({**report, "table": table}, started, path=args.output)
    if bench.cleanup_failures:
        log(f"some cleanups failed (see above): {', '.join(bench.cleanup_failures)}")
        return 1
    return 0


if __name__ == "__main__":
    exit_with(main)
