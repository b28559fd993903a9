"""Per-machine cgroups: one place to find, limit and kill everything a machine runs.

Each machine gets a cgroup (`veneer/<name>` for the default store, see `Layout.cgroup`) in the unified (v2)
hierarchy, where nspawn sets up the container's own
cgroup tree, and, on v1 and hybrid hosts, in the v1 memory, cpu and pids hierarchies where the limits are
enforced. When the v2 hierarchy holds those controllers (a pure v2 host), the limits are set there.
A command joins them through `join_argv`: a shell moves itself in and execs the command, so nspawn (or
`exec`'s nsenter) and everything below it start inside the machine's cgroups.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from veneer.config.settings import Limits
from veneer.errors import ConfigError
from veneer.util.mountinfo import MountInfo, load_mountinfo

CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Hierarchies:
    """Where the cgroup hierarchies are mounted on this host."""

    unified: Path | None  # the v2 hierarchy: /sys/fs/cgroup (v2 hosts) or /sys/fs/cgroup/unified (hybrid)
    v1: dict[str, Path]  # v1 hierarchy by controller: memory, cpu, pids, blkio, and name=systemd

    @classmethod
    def detect(cls, mounts: Sequence[MountInfo] | None = None) -> Hierarchies:
        unified: Path | None = None
        v1: dict[str, Path] = {}
        for mount in load_mountinfo() if mounts is None else mounts:
            point, fstype, options = mount.mount_point, mount.fstype, mount.super_options.split(",")
            if fstype == "cgroup2":
                unified = Path(point)
            elif fstype == "cgroup":
                # blkio: for `stats` only (block I/O of hybrid hosts is accounted there).
                for controller in ("memory", "cpu", "pids", "blkio"):
                    if controller in options:
                        v1[controller] = Path(point)
                if "name=systemd" in options:
                    # nspawn mirrors the container's tree here on hybrid hosts; it must go with the machine.
                    v1["name=systemd"] = Path(point)
        return cls(unified=unified, v1=v1)

    def v2_controllers(self) -> set[str]:
        if self.unified is None:
            return set()
        with contextlib.suppress(OSError):
            return set((self.unified / "cgroup.controllers").read_text().split())
        return set()

    def machine_dirs(self, cgroup: str) -> list[Path]:
        """Every cgroup directory of the machine, the unified one first."""
        dirs = [self.unified / cgroup] if self.unified else []
        dirs += [path / cgroup for path in dict.fromkeys(self.v1.values())]
        return dirs


def limit_files(hierarchies: Hierarchies, cgroup: str, limits: Limits) -> list[tuple[Path, str]]:
    """(file, value) pairs that apply `limits` to the machine's cgroups; pure."""
    v2 = hierarchies.v2_controllers()
    unified = hierarchies.unified / cgroup if hierarchies.unified else None
    writes: list[tuple[Path, str]] = []
    quota = "max" if limits.cpus is None else str(int(limits.cpus * CPU_PERIOD_US))

    def pick(controller: str, v2_file: str, v2_value: str, v1_file: str, v1_value: str) -> None:
        if unified is not None and controller in v2:
            writes.append((unified / v2_file, v2_value))
        elif controller in hierarchies.v1:
            writes.append((hierarchies.v1[controller] / cgroup / v1_file, v1_value))

    memory = limits.memory
    pick("memory", "memory.max", "max" if memory is None else str(memory),
         "memory.limit_in_bytes", "-1" if memory is None else str(memory))  # fmt: skip
    pick("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}",
         "cpu.cfs_quota_us", "-1" if limits.cpus is None else quota)  # fmt: skip
    pick("pids", "pids.max", "max" if limits.pids is None else str(limits.pids),
         "pids.max", "max" if limits.pids is None else str(limits.pids))  # fmt: skip
    return writes


def setup_cgroups(cgroup: str, limits: Limits) -> list[Path]:
    """Create the machine's cgroups and set its limits; returns the dirs to join."""
    hierarchies = Hierarchies.detect()
    if hierarchies.unified is None and not hierarchies.v1:
        raise ConfigError("No cgroup hierarchy is mounted", hint="Mount cgroup2 on /sys/fs/cgroup.")
    v2 = hierarchies.v2_controllers() & {"memory", "cpu", "pids"}
    if hierarchies.unified is not None and v2:
        # Controllers must be enabled on every level above a cgroup that uses them.
        group = hierarchies.unified / Path(cgroup).parent
        group.mkdir(exist_ok=True)
        for parent in (hierarchies.unified, group):
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(v2)))
    dirs = hierarchies.machine_dirs(cgroup)
    for path in dirs:
        path.mkdir(parents=True, exist_ok=True)
    for file, value in limit_files(hierarchies, cgroup, limits):
        file.write_text(value)
    return dirs


def join_argv(dirs: Sequence[Path], argv: Sequence[str], *, required: bool = True) -> list[str]:
    """`argv`, run by a shell that first moves itself into `dirs` and then execs it; pure. How veneer
    puts a command it starts into a machine's cgroups: the command starts there, and so does all it
    starts. (`exec` and `shell` join by themselves before entering: see `runtime/enter.py`.)

    `required=False`: a cgroup that cannot be joined is skipped (it may be gone, or not writable)."""
    quiet = "" if required else " 2>/dev/null"
    writes = [f"echo $$ > {shlex.quote(os.fspath(d / 'cgroup.procs'))}{quiet}" for d in dirs]
    script = (" && " if required else "; ").join([*writes, 'exec "$@"'])
    return ["sh", "-c", script, "sh", *argv]


def cgroup_pids(cgroup: str) -> set[int]:
    """Every process left in any of the machine's cgroups, nested ones included."""
    pids: set[int] = set()
    for top in Hierarchies.detect().machine_dirs(cgroup):
        for dirpath, _dirnames, _filenames in os.walk(top):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def kill_cgroups(cgroup: str, *, timeout: float = 5.0) -> None:
    """SIGKILL everything in the machine's cgroups until they are empty."""
    deadline = time.monotonic() + timeout
    while pids := cgroup_pids(cgroup):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def set_frozen(directory: Path, frozen: bool, *, timeout: float = 10.0) -> None:
    """Freeze (or thaw) everything in a cgroup v2 directory and its children, and wait until the kernel
    says it is done (`cgroup.events`: a task in an uninterruptible sleep is frozen when it leaves it)."""
    (directory / "cgroup.freeze").write_text("1" if frozen else "0")
    want = f"frozen {int(frozen)}"
    deadline = time.monotonic() + timeout
    while want not in (directory / "cgroup.events").read_text().splitlines():
        if time.monotonic() > deadline:
            raise OSError(errno.ETIME, f"cgroup '{directory}' is not {'frozen' if frozen else 'thawed'}")
        time.sleep(0.01)


def remove_cgroups(cgroup: str) -> None:
    """Remove the machine's (empty) cgroups, innermost first; missing ones are fine."""
    for top in Hierarchies.detect().machine_dirs(cgroup):
        if not top.exists():
            continue
        for dirpath, _dirnames, _filenames in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError as e:
                if e.errno not in (errno.ENOENT,):
                    raise
        # The store's group goes with its last machine; another machine of the store may still be in it.
        with contextlib.suppress(OSError):
            top.parent.rmdir()
