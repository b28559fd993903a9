"""The benchmarks' harness: scratch space with a veneer store of its own and cleanups, commands in the
background, processes found in /proc, the contender protocol and its timing loop, and the report.

Each benchmark script (run.py, network.py, rebase.py, pull.py) imports what it needs from here and holds
only its own benchmark. Importing this module puts the checkout's src/ on sys.path.

Each contender is a small class: `setup()` once (untimed), then per repetition `prepare(i)` (untimed),
`measure(i)` (the only timed call, wall clock with time.perf_counter) and `reset(i)` (untimed), and
`teardown()` once. The contenders of a benchmark take turns within each repetition, in an order that
rotates, so drift in the machine's state hits them alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Protocol, TypeVar

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from veneer.config.layout import Layout  # noqa: E402
from veneer.errors import CommandFailed  # noqa: E402
from veneer.runtime.supervisor import SupervisorKind, detect_supervisor  # noqa: E402
from veneer.runtime.systemd_unit import SLICE, console_unit_name, unit_name  # noqa: E402
from veneer.util.proc import Completed, Process, run, spawn, which  # noqa: E402

# Podman lowers its own RLIMIT_NPROC to this before starting the OCI runtime (it is podman's default).
PODMAN_NPROC = 32768


CAP_SYS_RESOURCE = 24


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass(kw_only=True)
class Scratch:
    """Scratch space of one run, with its own veneer store; `cleanups` undo, in reverse, what the run
    made. Each benchmark script's `Bench` adds its own settings."""

    scratch: Path
    cleanups: contextlib.ExitStack
    # The interpreter that runs veneer (and the `python3 -c pass` it is compared with): the harness's own
    # unless a script takes `--python` (README, "startup": site hooks differ between installations).
    python: Path = Path(sys.executable)
    setup_seconds: dict[str, float] = field(default_factory=dict)
    cleanup_failures: list[str] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.scratch / "store"

    @property
    def runtime(self) -> Path:
        return self.scratch / "run"

    @property
    def layout(self) -> Layout:
        """The run's store as veneer sees it (its machines' unit and cgroup names)."""
        return Layout(root=self.store, run=self.runtime, uids=self.scratch / "uids")

    def veneer_argv(self, *args: str) -> list[str]:
        return [os.fspath(self.python), "-m", "veneer", *args]

    def veneer_env(self) -> dict[str, str]:
        """The checkout's veneer, against the run's own store."""
        return {
            "PYTHONPATH": os.fspath(REPO / "src"),
            "VENEER_ROOT": os.fspath(self.store),
            "VENEER_RUN": os.fspath(self.runtime),
            # Its own registry of uid ranges too: the scratch store goes away with all its machines.
            "VENEER_UIDS": os.fspath(self.scratch / "uids"),
        }

    def veneer(self, *args: str, check: bool = True) -> Completed:
        """Run the checkout's veneer CLI against the run's own store."""
        return run(self.veneer_argv(*args), capture=True, env=self.veneer_env(), check=check)

    def log_file(self, name: str) -> Path:
        """Where a command run in the background writes its output (in the scratch dir)."""
        logs = self.scratch / "logs"
        logs.mkdir(exist_ok=True)
        return logs / f"{name}.log"

    def defer(self, step: Callable[[], object], what: str) -> None:
        """Run `step` at the end of the run; a failure is reported, and the other cleanups still run."""

        def guarded() -> None:
            try:
                step()
            except CommandFailed as e:
                log(f"cleanup failed: {what}: {e.message}: {e.stderr.strip()[-500:]}")
                self.cleanup_failures.append(what)
            except OSError as e:
                log(f"cleanup failed: {what}: {e}")
                self.cleanup_failures.append(what)

        self.cleanups.callback(guarded)

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


# How often the harness looks whether background commands have exited, or plain nspawn's busybox init has
# started its first child: it notices within this. (veneer's own `start --wait` looks every 50 ms.)
POLL_INTERVAL = 0.01


@dataclass(kw_only=True)
class Background:
    """A command running in the background in a session of its own, its output going to a log file."""

    argv: list[str]
    process: Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def failure(self, status: int) -> CommandFailed:
        return CommandFailed(self.argv, status, self.log.read_text(errors="replace"))

    def timed_out(self, what: str, timeout: float) -> CommandFailed:
        error = self.failure(-1)
        error.message = f"Command '{self.argv[0]}' (pid {self.pid}) did not {what} within {timeout:.0f} s"
        return error

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float) -> bool:
        """Until it has exited (noticed within POLL_INTERVAL); False if it still runs after `timeout`."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def stop(self, patience: float) -> None:
        """SIGTERM, then SIGKILL if it lingers for `patience` seconds; reaped either way."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.running():
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            if self.wait(patience):
                return

    def kill(self) -> None:
        """SIGKILL it by pid and reap it (cleanup only)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.process.wait()


# Held off while a background command starts, so that it is in its list for the cleanups before a Ctrl-C
# or SIGTERM unwinds the run.
DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def spawn_logged(
    argv: Sequence[str],
    *,
    log: Path,
    into: list[Background] | None = None,
    env: Mapping[str, str] | None = None,
    cgroups: Sequence[Path] = (),
) -> Background:
    """Start argv in the background (and append it to `into`): stdin from /dev/null, stdout and stderr
    appended to `log`, in the given cgroups from its first instruction on."""
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    procs = [os.fspath(d / "cgroup.procs") for d in cgroups]

    def before_exec() -> None:
        # Between fork and exec: stdlib calls only. The blocked signals would stay blocked in the command:
        # unblock them. A session of its own, so that a Ctrl-C at the terminal reaches the harness alone,
        # whose cleanups then stop the command in order.
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.setsid()
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        for path in procs:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
    try:
        background = Background(
            argv=list(argv), process=spawn(argv, env=env, before_exec=before_exec), log=log
        )
        if into is not None:
            into.append(background)
    finally:
        os.close(out)
        os.close(null)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal held off is handled here
    return background


def wait_all(jobs: Sequence[Background], *, what: str, timeout: float) -> None:
    """Until every job has exited (noticed within POLL_INTERVAL); raise for the first that failed."""
    deadline = time.monotonic() + timeout
    pending = list(jobs)
    while pending := [job for job in pending if job.process.poll() is None]:
        if time.monotonic() > deadline:
            raise pending[0].timed_out(what, timeout)
        time.sleep(POLL_INTERVAL)
    for job in jobs:
        if job.process.returncode != 0:
            raise job.failure(job.process.returncode)


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
    return children


def on_systemd() -> bool:
    """Whether veneer supervises machines with systemd units on this host (systemd is PID 1)."""
    return detect_supervisor().kind is SupervisorKind.SYSTEMD


def cgroup_pids(cgroup: Path, *, skip: str = "") -> list[int]:
    """The processes in `cgroup` and the cgroups below it, but its child `skip` and what is below that."""
    found = []
    for directory, subdirs, _ in os.walk(cgroup):
        subdirs[:] = [d for d in subdirs if not (directory == os.fspath(cgroup) and d == skip)]
        with contextlib.suppress(FileNotFoundError):
            found += [int(p) for p in Path(directory, "cgroup.procs").read_text().split()]
    return found


def unit_pids(layout: Layout, name: str) -> tuple[list[int], list[int]]:
    """On a systemd host, a running machine's processes outside its container: its console unit's (the
    tmux keeper), and its unit's but those of the unit's `payload` (nspawn alone)."""
    units = Path("/sys/fs/cgroup") / SLICE
    return (
        cgroup_pids(units / console_unit_name(layout, name)),
        cgroup_pids(units / unit_name(layout, name), skip="payload"),
    )


def descendants(pid: int) -> list[int]:
    found, todo = [], child_pids(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += child_pids(child)
    return found


def process_name(pid: int) -> str:
    """The process's name as ps shows it (`tmux: server`, `sh`, `head`), or "" once it is gone."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def executable(pid: int) -> str:
    with contextlib.suppress(OSError):
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    return ""


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [0] is the state, [19] the start time; [] once it is gone."""
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()
    return []


def smaps_rollup(pid: int) -> dict[str, int]:
    """The process's memory totals in kB: Rss, Pss, Private_Clean, Private_Dirty and the others."""
    totals: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value, *_ = line.split()
        totals[key.rstrip(":")] = int(value)
    return totals


def memory_row(label: str, processes: list[dict[str, Any]], per: int) -> dict[str, Any]:
    """Totals of `processes` divided by `per` (machines or supervisors), in MB."""
    return {
        "label": label,
        "processes_per_machine": len(processes) / per,
        **{
            f"{key}_mb": sum(p[f"{key}_kb"] for p in processes) / 1024 / per
            for key in ("pss", "private", "rss")
        },
    }


def measure_process(pid: int, **labels: str) -> dict[str, Any]:
    totals = smaps_rollup(pid)
    return {
        **labels,
        "pid": pid,
        "name": process_name(pid),
        "rss_kb": totals["Rss"],
        "pss_kb": totals["Pss"],
        "private_kb": totals["Private_Clean"] + totals["Private_Dirty"],
    }


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def is_running(pid: int, started: int | None) -> bool:
    """Whether the process that had this start time still runs; a zombie has ended (on this host PID 1
    takes seconds to reap the orphans it inherits)."""
    fields = stat_fields(pid)
    return bool(fields) and started is not None and int(fields[19]) == started and fields[0] != "Z"


class Contender:
    """One way of doing the benchmark's task. Only `measure()` is timed."""

    name = ""
    command = ""  # what `measure()` runs, for the table
    reference = 0  # the contender (by index in its benchmark) whose median is this one's ratio's denominator

    def setup(self) -> None:
        """Untimed, once, before the first repetition."""

    def prepare(self, i: int) -> None:
        """Untimed, before each repetition: make what `measure(i)` needs (machines to stop)."""

    def measure(self, i: int) -> None:
        """The timed task of repetition `i` (negative: warm-up)."""
        raise NotImplementedError

    def reset(self, i: int) -> None:
        """Untimed, after each repetition: undo what `measure(i)` made."""

    def teardown(self) -> None:
        """Untimed, once; also runs after a failed `setup()`, so it must cope with partial state."""

    def notes(self) -> list[str]:
        """What the contender observed besides time (checks after each repetition), for the report."""
        return []


@dataclass(kw_only=True)
class Samples:
    name: str
    command: str
    seconds: list[float]
    reference: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)


class Turn(Protocol):
    """What `take_turns` asks of a contender (both contender classes of bench/ have it)."""

    def setup(self) -> None: ...
    def prepare(self, i: int) -> None: ...
    def reset(self, i: int) -> None: ...
    def teardown(self) -> None: ...


TurnT = TypeVar("TurnT", bound=Turn)
Result = TypeVar("Result")


def take_turns(
    contenders: Sequence[TurnT], repeat: int, warmup: int, measure: Callable[[TurnT, int], Result]
) -> list[list[Result]]:
    """Set all up, then `measure` each in turn, repetition by repetition; tear all down whatever happens.
    Returns, per contender, what `measure` returned for each timed repetition."""
    results: list[list[Result]] = [[] for _ in contenders]
    with contextlib.ExitStack() as stack:
        for contender in contenders:
            stack.callback(contender.teardown)
            contender.setup()
        pairs = list(zip(contenders, results, strict=True))
        for i in range(-warmup, repeat):
            # The order rotates, so that no contender always follows the one that leaves the most behind
            # (2 GB of freed blocks after `cp -a`), and each goes first as often as the others.
            shift = i % len(pairs)
            for contender, series in pairs[shift:] + pairs[:shift]:
                contender.prepare(i)
                result = measure(contender, i)
                contender.reset(i)
                # Dirty pages of one contender must not be written back during the next one's turn.
                os.sync()
                if i >= 0:
                    series.append(result)
            log(f"repetition {i + 1}/{repeat} done" if i >= 0 else "warm-up done")
    return results


def time_contenders(contenders: Sequence[Contender], repeat: int, warmup: int) -> list[Samples]:
    """Time each contender's `measure()` in turns (`take_turns`); the notes are taken once all are done."""

    def timed(contender: Contender, i: int) -> float:
        start = time.perf_counter()
        contender.measure(i)
        return time.perf_counter() - start

    seconds = take_turns(contenders, repeat, warmup, timed)
    return [
        Samples(name=c.name, command=c.command, seconds=s, reference=c.reference, notes=c.notes())
        for c, s in zip(contenders, seconds, strict=True)
    ]


def human_time(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def first_line(argv: Sequence[str]) -> str:
    try:
        return run(argv, capture=True).stdout.strip().splitlines()[0]
    except (CommandFailed, IndexError):
        return "unknown"


def python_info(python: Path) -> dict[str, Any]:
    """The interpreter that ran veneer: its version and the site hooks (`.pth` files) that each start of
    it runs, which `python3 -c pass` pays as well (README, "startup")."""
    code = (
        "import glob, site, sys; print(sys.version.split()[0]); "
        "print(*sorted(p for d in site.getsitepackages() for p in glob.glob(d + '/*.pth')))"
    )
    version, hooks = (run([python, "-c", code], capture=True).stdout.splitlines() + ["", ""])[:2]
    return {"path": os.fspath(python), "version": version, "site_hooks": hooks.split()}


def fs_type(path: Path) -> str:
    best, kind = "", "unknown"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount_point, fstype, *_ = line.split()
        if os.fspath(path).startswith(mount_point) and len(mount_point) >= len(best):
            best, kind = mount_point, fstype
    return kind


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def machine_info(scratch: Path) -> dict[str, Any]:
    """What every benchmark reports about the host and the checkout."""
    describe: list[str | Path] = ["git", "-C", REPO, "describe", "--always", "--dirty"]
    # A VM's guest (bench/vm.py) has no git: the host's run says which commit.
    git = run(describe, capture=True, check=False) if which("git") else None
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        # Other work on the host adds noise to every contender alike (they take turns); worth knowing.
        "loadavg_at_end": loadavg(),
        "scratch_fs": fs_type(scratch),
        "python": platform.python_version(),  # the harness's; see "veneer_python" where scripts record it
        "veneer_git": (git.stdout.strip() if git else "") or "unknown",
    }


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
def scratch_dir(prefix: str = "veneer-bench-") -> Iterator[Path]:
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield scratch
    finally:
        remove_scratch(scratch)


def raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: every cleanup runs


def save_report(
    report: Mapping[str, Any], started: float, *, prefix: str = "", path: Path | None = None
) -> Path:
    """Write a run's report to `path`, by default bench/results/<prefix><UTC time it started>.json, and say
    where."""
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / (prefix + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + ".json")
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nWrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


def exit_with(main: Callable[[], int]) -> NoReturn:
    """Run a benchmark script's main(); a failed command or an interrupt ends it with one line, after the
    cleanups have run."""
    try:
        sys.exit(main())
    except CommandFailed as e:
        log(f"failed: {shlex.join(e.argv)}: {e.message}")
        log("cleaned up (a cleanup that failed is reported above)")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted; cleaned up (a cleanup that failed is reported above)")
        sys.exit(130)
