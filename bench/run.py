"""Benchmarks: veneer against the tools a user would run instead, side by side in one run, as ratios.

Run as root from a checkout: `python3 bench/run.py [--quick] [--only NAME] [--repeat N]`. Everything the
run makes (a store, copies, podman images and containers, mounts) lives in one scratch directory or is
named `veneer-bench-*`, and is removed on the way out, also after a failure or Ctrl-C.

Each contender is a small class: `setup()` once (untimed), then per repetition `measure(i)` (the only
timed call, wall clock with time.perf_counter) and `reset(i)` (untimed), and `teardown()` once. The
contenders of a benchmark take turns within each repetition, in an order that rotates, so drift in the
machine's state hits them alike. bench/README.md says what each benchmark measures and why it is fair.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from veneer.errors import CommandFailed  # noqa: E402
from veneer.util.proc import Completed, run, which  # noqa: E402

MB = 1024 * 1024
GB = 1024 * MB
# Real trees copied into the big base until it is large enough: realistic file counts and sizes.
FILLER_SOURCES = (Path("/usr/share"), Path("/usr/lib"))
PODMAN_PREFIX = "veneer-bench"
# Podman lowers its own RLIMIT_NPROC to this before starting the OCI runtime (it is podman's default).
PODMAN_NPROC = 32768
CAP_SYS_RESOURCE = 24


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# The run's environment: scratch space, the veneer store in it, and how to call veneer and podman.


@dataclass(kw_only=True)
class Bench:
    """Settings and scratch space of one run; `cleanups` undo, in reverse, what the run made."""

    scratch: Path
    quick: bool
    cleanups: contextlib.ExitStack
    setup_seconds: dict[str, float] = field(default_factory=dict)
    base_info: dict[str, dict[str, int]] = field(default_factory=dict)
    cleanup_failures: list[str] = field(default_factory=list)
    _podman_flags: tuple[list[str], list[str]] | None = None

    @property
    def store(self) -> Path:
        return self.scratch / "store"

    @property
    def runtime(self) -> Path:
        return self.scratch / "run"

    def veneer(self, *args: str) -> Completed:
        """Run the checkout's veneer CLI against the run's own store."""
        env = {
            "PYTHONPATH": os.fspath(REPO / "src"),
            "VENEER_ROOT": os.fspath(self.store),
            "VENEER_RUN": os.fspath(self.runtime),
        }
        return run([sys.executable, "-m", "veneer", *args], capture=True, env=env)

    def podman_flags(self) -> tuple[list[str], list[str]]:
        """Podman's global flags and `run` flags that work on this host (see README, "Podman flags")."""
        if self._podman_flags is None:
            self._podman_flags = podman_flags()
        return self._podman_flags

    def podman(self, *args: str, check: bool = True) -> Completed:
        global_flags, _ = self.podman_flags()
        return run(["podman", *global_flags, *args], capture=True, check=check)

    def defer(self, step: Callable[[], object], what: str) -> None:
        """Run `step` at the end of the run; a failure is reported, and the other cleanups still run."""

        def guarded() -> None:
            try:
                step()
            except CommandFailed as e:
                log(f"cleanup failed: {what}: {e.message}: {e.stderr.strip()[-500:]}")
                self.cleanup_failures.append(what)

        self.cleanups.callback(guarded)

    def podman_import(self, tree: Path, image: str) -> None:
        """Import a tree as a podman image (tar, then `podman import`); removed at the end of the run."""
        tarball = self.scratch / f"{image}.tar"
        run(["tar", "-C", tree, "-cf", tarball, "."], capture=True)
        self.defer(lambda: self.podman("rmi", "--force", image), f"podman rmi {image}")
        self.podman("import", os.fspath(tarball), image)
        tarball.unlink()

    def timed_setup(self, what: str, step: Callable[[], None]) -> None:
        """Run an untimed setup step, but note how long it took (reported in the JSON and on stderr)."""
        log(f"setup: {what} ...")
        start = time.perf_counter()
        step()
        self.setup_seconds[what] = time.perf_counter() - start
        log(f"setup: {what}: {self.setup_seconds[what]:.1f} s")


def has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def podman_flags() -> tuple[list[str], list[str]]:
    """The podman flags this host needs, each only when its reason applies."""
    global_flags: list[str] = []
    run_flags = ["--network=none"]  # veneer machines have no network by default either
    controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if controllers.exists() and controllers.read_text().strip():
        # Hybrid cgroups with controllers on the v2 side: crun refuses ("cgroups in hybrid mode not
        # supported"), runc copes.
        if which("runc") is None:
            raise SystemExit("bench: podman needs runc on this host (hybrid cgroups): apt-get install runc")
        global_flags.append("--runtime=runc")
    if not Path("/run/systemd/system").is_dir():
        # No systemd as PID 1: no systemd cgroup manager and no journal for podman's events.
        global_flags += ["--cgroup-manager=cgroupfs", "--events-backend=file"]
    if not has_capability(CAP_SYS_RESOURCE):
        # Without CAP_SYS_RESOURCE the OCI runtime cannot raise limits to podman's defaults (nofile
        # 1048576; nproc is what podman set for itself): ask for what this process already has.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], PODMAN_NPROC)
        run_flags += [f"--ulimit=nofile={nofile}:{nofile}", f"--ulimit=nproc={nproc}:{nproc}"]
    return global_flags, run_flags


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
    return bench.store / "layers" / str(info["revisions"][0]["layer"]) / "tree"


class Bases:
    """The busybox base (~2 MB) and the big base (~2 GB, ~200 MB with --quick), made on first use."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self._busybox: Base | None = None
        self._big: Base | None = None

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
        if self._big is None:
            budget = 200 * MB if self.bench.quick else 2 * GB
            source = self.bench.scratch / "big-source"
            self.bench.timed_setup(
                f"fill a {budget // MB} MB tree", lambda: make_big_tree(source, self.busybox().tree, budget)
            )
            self.bench.defer(lambda: self.bench.veneer("image", "rm", "big"), "veneer image rm big")
            self.bench.timed_setup("veneer image create big --from-dir", lambda: self._create_big(source))
            shutil.rmtree(source)
            self._big = self._register("big")
        return self._big

    def _create_big(self, source: Path) -> None:
        self.bench.veneer("image", "create", "big", "--from-dir", os.fspath(source))


def make_big_tree(dest: Path, skeleton: Path, budget: int) -> None:
    """A root filesystem: the busybox skeleton plus whole subtrees of real trees until `budget` bytes."""
    run(["cp", "-a", skeleton, dest], capture=True)
    total = tree_stats(dest)[0]
    for copy in range(100):
        added = False
        for source in FILLER_SOURCES:
            for entry in sorted(source.iterdir()):
                if entry.is_symlink() or not entry.is_dir():
                    continue
                size = tree_stats(entry)[0]
                if size == 0 or total + size > budget:
                    continue
                target = dest / "usr" / "share" / "bench-filler" / f"{copy}" / source.name
                target.mkdir(parents=True, exist_ok=True)
                run(["cp", "-a", entry, target / entry.name], capture=True)
                total += size
                added = True
        if total > budget * 0.95 or not added:
            return


# ---------------------------------------------------------------------------------------------------------
# Contenders.


class Contender:
    """One way of doing the benchmark's task. Only `measure()` is timed."""

    name = ""
    command = ""  # what `measure()` runs, for the table

    def setup(self) -> None:
        """Untimed, once, before the first repetition."""

    def measure(self, i: int) -> None:
        """The timed task of repetition `i` (negative: warm-up)."""
        raise NotImplementedError

    def reset(self, i: int) -> None:
        """Untimed, after each repetition: undo what `measure(i)` made."""

    def teardown(self) -> None:
        """Untimed, once; also runs after a failed `setup()`, so it must cope with partial state."""


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

    def __init__(self, bench: Bench, base: Callable[[], Base]) -> None:
        self.bench, self.base = bench, base
        self.image = f"{PODMAN_PREFIX}-big"
        self.containers: dict[int, str] = {}

    def setup(self) -> None:
        tree = self.base().tree
        self.bench.timed_setup(f"podman import of the big tree as {self.image}", lambda: self._import(tree))

    def _import(self, tree: Path) -> None:
        self.bench.podman_import(tree, self.image)

    def measure(self, i: int) -> None:
        self.containers[i] = self.bench.podman("create", self.image, "true").stdout.strip()

    def reset(self, i: int) -> None:
        self.bench.podman("rm", self.containers.pop(i))

    def teardown(self) -> None:
        for container in self.containers.values():
            self.bench.podman("rm", "--force", container, check=False)


class VeneerRun(Contender):
    name = "veneer run"
    command = "veneer run M -- /bin/true"
    machine = "bench-run"

    def __init__(self, bench: Bench, bases: Bases) -> None:
        self.bench, self.bases = bench, bases
        self.created = False

    def setup(self) -> None:
        self.bench.veneer("create", self.machine, "--from", self.bases.busybox().image)
        self.created = True

    def measure(self, i: int) -> None:
        self.bench.veneer("run", self.machine, "--", "/bin/true")

    def teardown(self) -> None:
        if self.created:
            self.bench.veneer("rm", self.machine)


class NspawnRun(Contender):
    """systemd-nspawn on a plain copy of the busybox tree; `isolated` adds what veneer sets up too."""

    def __init__(self, bench: Bench, bases: Bases, *, isolated: bool) -> None:
        self.bench, self.bases, self.isolated = bench, bases, isolated
        self.tree = bench.scratch / ("nspawn-isolated" if isolated else "nspawn")
        self.flags = ["--quiet", "--register=no", "--keep-unit", f"--directory={self.tree}", "--pipe"]
        if isolated:
            # veneer's defaults: a user namespace and no network.
            self.flags += ["--private-users=pick", "--private-network"]
        self.name = "systemd-nspawn -U --private-network" if isolated else "systemd-nspawn"
        self.command = "systemd-nspawn " + " ".join(f for f in self.flags if not f.startswith("--dir"))
        self.command += " -D TREE -- /bin/true"

    def setup(self) -> None:
        run(["cp", "-a", self.bases.busybox().tree, self.tree], capture=True)
        if self.isolated:
            self.measure(-1)  # --private-users=pick chowns the copy on its first run: not part of the task

    def measure(self, i: int) -> None:
        run(["systemd-nspawn", *self.flags, "--", "/bin/true"], capture=True)

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


# ---------------------------------------------------------------------------------------------------------
# Benchmarks: a list of contenders, the first being veneer's (the reference of the ratios).


@dataclass(frozen=True, kw_only=True)
class Benchmark:
    name: str
    what: str
    contenders: Callable[[Bench, Bases], list[Contender]]
    # Extra ratios worth a line of their own: (label, numerator contender, denominator contender).
    extra_ratios: tuple[tuple[str, int, int], ...] = ()


def create_contenders(bench: Bench, bases: Bases) -> list[Contender]:
    big = "200 MB" if bench.quick else "2 GB"
    return [
        VeneerCreate(bench, bases.big, big),
        CopyTree(bench, bases.big),
        PodmanCreate(bench, bases.big),
        VeneerCreate(bench, bases.busybox, "2 MB"),
    ]


def run_contenders(bench: Bench, bases: Bases) -> list[Contender]:
    return [
        VeneerRun(bench, bases),
        NspawnRun(bench, bases, isolated=False),
        NspawnRun(bench, bases, isolated=True),
        PodmanRun(bench, bases),
    ]


def startup_contenders(bench: Bench, bases: Bases) -> list[Contender]:
    return [
        Command("veneer --help", lambda: bench.veneer("--help")),
        Command("python3 -c pass", lambda: run([sys.executable, "-c", "pass"], capture=True)),
    ]


BENCHMARKS = (
    Benchmark(
        name="create",
        what="make a child of a big base",
        contenders=create_contenders,
        extra_ratios=(("veneer create: big base / 2 MB base", 0, 3),),
    ),
    Benchmark(name="run", what="run /bin/true in a busybox machine", contenders=run_contenders),
    Benchmark(
        name="startup",
        what="context: how much of veneer's time is starting Python and its CLI",
        contenders=startup_contenders,
    ),
)


@dataclass(kw_only=True)
class Samples:
    name: str
    command: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)


def time_contenders(contenders: Sequence[Contender], repeat: int, warmup: int) -> list[Samples]:
    """Set all up, then time each in turn, repetition by repetition; tear all down whatever happens."""
    samples = [Samples(name=c.name, command=c.command, seconds=[]) for c in contenders]
    with contextlib.ExitStack() as stack:
        for contender in contenders:
            stack.callback(contender.teardown)
            contender.setup()
        pairs = list(zip(contenders, samples, strict=True))
        for i in range(-warmup, repeat):
            # The order rotates, so that no contender always follows the one that leaves the most behind
            # (2 GB of freed blocks after `cp -a`), and each goes first as often as the others.
            shift = i % len(pairs)
            for contender, sample in pairs[shift:] + pairs[:shift]:
                start = time.perf_counter()
                contender.measure(i)
                elapsed = time.perf_counter() - start
                contender.reset(i)
                # Dirty pages of one contender must not be written back during the next one's turn.
                os.sync()
                if i >= 0:
                    sample.seconds.append(elapsed)
            log(f"repetition {i + 1}/{repeat} done" if i >= 0 else "warm-up done")
    return samples


# ---------------------------------------------------------------------------------------------------------
# Reporting.


def human_time(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of every contender, with its median's ratio to veneer's median."""
    lines = [
        "| benchmark | contender | median | min | median / veneer |",
        "|---|---|---:|---:|---:|",
    ]
    for result in results:
        for row in result["contenders"]:
            lines.append(
                f"| {result['name']} | {row['name']} | {human_time(row['median_s'])} "
                f"| {human_time(row['min_s'])} | {row['ratio_to_veneer']:.2f}x |"
            )
        for extra in result["extra_ratios"]:
            lines.append(f"| {result['name']} | {extra['label']} | | | {extra['ratio']:.2f}x |")
    return "\n".join(lines)


def summarize(benchmark: Benchmark, samples: list[Samples]) -> dict[str, Any]:
    reference = samples[0]
    return {
        "name": benchmark.name,
        "what": benchmark.what,
        "contenders": [
            {
                "name": s.name,
                "command": s.command,
                "samples_s": s.seconds,
                "median_s": s.median,
                "min_s": s.min,
                "ratio_to_veneer": s.median / reference.median,
            }
            for s in samples
        ],
        "extra_ratios": [
            {"label": label, "ratio": samples[top].median / samples[bottom].median}
            for label, top, bottom in benchmark.extra_ratios
        ],
    }


def first_line(argv: Sequence[str]) -> str:
    try:
        return run(argv, capture=True).stdout.strip().splitlines()[0]
    except (CommandFailed, IndexError):
        return "unknown"


def fs_type(path: Path) -> str:
    best, kind = "", "unknown"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount_point, fstype, *_ = line.split()
        if os.fspath(path).startswith(mount_point) and len(mount_point) >= len(best):
            best, kind = mount_point, fstype
    return kind


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def host_info(bench: Bench) -> dict[str, Any]:
    git = run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture=True, check=False)
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        # Other work on the host adds noise to every contender alike (they take turns); worth knowing.
        "loadavg_at_end": loadavg(),
        "scratch_fs": fs_type(bench.scratch),
        "python": platform.python_version(),
        "veneer_git": git.stdout.strip() or "unknown",
        "systemd_nspawn": first_line(["systemd-nspawn", "--version"]),
        "podman": first_line(["podman", "--version"]),
        "podman_flags": {"global": bench.podman_flags()[0], "run": bench.podman_flags()[1]},
        "runc": first_line(["runc", "--version"]) if which("runc") else None,
    }


# ---------------------------------------------------------------------------------------------------------
# Cleanup of the scratch directory: unmount first, so that deleting it cannot reach through a mount.


def mounts_under(path: Path) -> list[str]:
    prefix = os.fspath(path) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_scratch(scratch: Path) -> None:
    for point in mounts_under(scratch):
        log(f"unmounting leftover {point}")
        run(["umount", point], check=False, capture=True)
    left = mounts_under(scratch)
    if left:
        log(f"NOT removing {scratch}: still mounted: {', '.join(left)}")
        return
    run(["rm", "-rf", "--one-file-system", scratch], check=False, capture=True)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    scratch = Path(tempfile.mkdtemp(prefix="veneer-bench-"))
    try:
        yield scratch
    finally:
        remove_scratch(scratch)


def raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: every cleanup runs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="veneer benchmarks (as root)")
    parser.add_argument("--quick", action="store_true", help="a ~200 MB big base instead of ~2 GB")
    parser.add_argument("--only", choices=[b.name for b in BENCHMARKS], help="run one benchmark")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per contender (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (overlay mounts, nspawn, rootful podman)", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("bench: --repeat must be at least 1", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    selected = [b for b in BENCHMARKS if args.only in (None, b.name)]
    started, load_at_start = time.time(), loadavg()
    with scratch_dir() as scratch, contextlib.ExitStack() as cleanups:
        bench = Bench(scratch=scratch, quick=args.quick, cleanups=cleanups)
        bases = Bases(bench)
        results = []
        for benchmark in selected:
            log(f"benchmark '{benchmark.name}': {benchmark.what}")
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + ".json")
    path.write_text(json.dumps({**report, "table": table}, indent=2) + "\n")
    print(f"\nWrote {path.relative_to(REPO)}")
    if bench.cleanup_failures:
        log(f"some cleanups failed (see above): {', '.join(bench.cleanup_failures)}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CommandFailed as e:
        log(f"failed: {shlex.join(e.argv)}: {e.message}")
        log("cleaned up (a cleanup that failed is reported above)")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted; cleaned up (a cleanup that failed is reported above)")
        sys.exit(130)
