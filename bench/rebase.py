"""Rebase planning: how fast veneer's planner finds what to do with a child's upper dir when its base is
updated, against the full comparisons a user would run instead (`diff -r`, `rsync -n --checksum`) of the
same trees, side by side in one run, warm and cold page cache, as ratios to veneer.

Run as root from a checkout: `python3 bench/rebase.py [--repeat-warm N] [--repeat-cold N] [--profile N]`.
The trees are synthetic and made once per run (untimed) in a scratch dir under /var/tmp (`--dir`), on the
filesystem of veneer's store: a base layer of about 70,000 files, an update layer touching about 1,500
paths (changed and new files, whiteouts, an opaque directory), a squashed copy of the two, and a child's
upper dir of 10,000 files. The child's merged view for the other tools is a read-only overlay mount made
with mount(8). Everything is unmounted and removed on the way out, also after a failure, Ctrl-C or SIGTERM.

The timing loop, the contender protocol and the cleanup of the scratch dir are bench/run.py's, imported.
veneer's planner is called in this process (`make_plan`), the other tools run as commands; cold runs drop
the page, dentry and inode caches before each measurement. bench/README.md ("Rebase planning") says what
is measured and why it is fair.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import math
import os
import pstats
import random
import shutil
import signal
import stat
import string
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The harness (bench/ is on sys.path when a script in it runs); importing it puts src/ on sys.path.
from harness import (
    Contender,
    Samples,
    exit_with,
    first_line,
    human_time,
    loadavg,
    log,
    machine_info,
    mounts_under,
    raise_on_sigterm,
    remove_scratch,
    save_report,
    time_contenders,
)

from veneer.config.layout import Layout
from veneer.overlay.layers import OPAQUE_XATTR
from veneer.rebase.actions import Plan
from veneer.rebase.merge import Prefer
from veneer.rebase.plan import make_plan, shared_prefix
from veneer.util.proc import Completed, run

BASE_FILES = 70_000  # regular files and symlinks of the base layer, about
UPDATE_PATHS = 1_500  # files the update layer writes, adds or whites out, about
UPPER_FILES = 10_000  # non-directories of the child's upper dir, exactly
UPPER_COPIES = 500  # base files copied up unchanged (a chmod, a touch, an editor that saved without change)
UPPER_CHANGED = 200  # base files the child changed; half of them the update changed too
UPPER_WHITEOUTS = 20  # base files the child deleted; half of them the update changed
HOME_FILES = 1_500  # the child's own files outside the package trees, about
SEED = 20261129
DEFAULT_DIR = Path("/var/tmp")
RSYNC = ("rsync", "-n", "-a", "--itemize-changes", "--checksum", "--delete")
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
LANGUAGES = tuple(
    "af am ar as ast be bg bn br bs ca cs cy da de el en_GB eo es et eu fa fi fr ga gl gu he hi hr hu id is "
    "it ja ka kk km kn ko lt lv mk ml mr ms nb ne nl nn oc pa pl pt pt_BR ro ru si sk sl sq sr sv ta te th "
    "tr uk vi zh_CN zh_TW".split()
)
LIB_ROOTS = ("usr/lib/python3/dist-packages", "usr/lib", "usr/share")
SUFFIXES = (".py", ".so", ".h", ".json", ".txt", ".xml", ".conf", ".png", ".pl", ".rb", ".js", "")


# ---------------------------------------------------------------------------------------------------------
# Synthetic trees: a base, an update of it, a squashed copy of both, a child's upper dir.


class Writer:
    """Makes files of realistic sizes (a few hundred bytes to a few KB, some tens of KB) and text, each
    different, deterministically from one seed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = [
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(4000)
        ]
        lines = (" ".join(rng.choices(self.words, k=rng.randint(4, 14))) for _ in range(80_000))
        self.text = "\n".join(lines).encode()
        self.made: set[Path] = set()

    def size(self) -> int:
        if self.rng.random() < 0.03:
            return self.rng.randint(8_192, 65_536)
        return int(math.exp(self.rng.uniform(math.log(200), math.log(4_096))))

    def contents(self, rel: str, size: int | None = None) -> bytes:
        size = self.size() if size is None else size
        start = self.rng.randrange(len(self.text) - size)
        return (f"{rel}\n".encode() + self.text[start : start + size])[:size]

    def changed(self, data: bytes, rel: str) -> bytes:
        """New contents for a file: half the time of the same size (only the bytes tell), else not."""
        if self.rng.random() < 0.5 and len(data) > 16:
            at = self.rng.randrange(len(data) - 8)
            return data[:at] + b"v2.0.1-1" + data[at + 8 :]
        return self.contents(rel, max(16, len(data) + self.rng.randint(-200, 400)))

    def name(self) -> str:
        return self.rng.choice(self.words)

    def parent(self, path: Path) -> None:
        if path.parent not in self.made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.made.add(path.parent)

    def write(self, root: Path, rel: str, data: bytes, *, mode: int = 0o644) -> None:
        path = root / rel
        self.parent(path)
        path.write_bytes(data)
        if mode != 0o644:
            os.chmod(path, mode)

    def symlink(self, root: Path, rel: str, target: str) -> None:
        path = root / rel
        self.parent(path)
        os.symlink(target, path)

    def whiteout(self, root: Path, rel: str) -> None:
        path = root / rel
        self.parent(path)
        # What overlayfs itself makes when a lower file is deleted: a character device 0/0, mode 0.
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def passwd(users: Sequence[str]) -> bytes:
    lines = ["root:x:0:0:root:/root:/bin/bash", "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin"]
    lines += [f"{u}:x:{1000 + i}:{1000 + i}::/home/{u}:/bin/sh" for i, u in enumerate(users)]
    return ("\n".join(lines) + "\n").encode()


def group(users: Sequence[str]) -> bytes:
    lines = ["root:x:0:", "daemon:x:1:"] + [f"{u}:x:{1000 + i}:" for i, u in enumerate(users)]
    return ("\n".join(lines) + "\n").encode()


@dataclass(kw_only=True)
class Package:
    name: str
    files: list[str] = field(default_factory=list)  # regular files
    links: list[str] = field(default_factory=list)  # symlinks
    lib: str = ""  # its own directory of modules and data


def write_package(w: Writer, root: Path, name: str, *, languages: Sequence[str]) -> Package:
    """The files a Debian package of a typical shape installs: docs, man pages, a tree of modules or data
    in a directory of its own, sometimes a program, translations, a shared library, a config file."""
    rng = w.rng
    package = Package(name=name, lib=f"{rng.choice(LIB_ROOTS)}/{name}")

    def add(rel: str, *, mode: int = 0o644) -> None:
        w.write(root, rel, w.contents(rel), mode=mode)
        package.files.append(rel)

    add(f"usr/share/doc/{name}/copyright")
    add(f"usr/share/doc/{name}/changelog.Debian.gz")
    for j in range(rng.choice((0, 0, 1, 1, 2, 3))):
        section = rng.choice((1, 5, 8))
        add(f"usr/share/man/man{section}/{name}-{j}.{section}.gz")
    if rng.random() < 0.5:
        add(f"usr/bin/{name}", mode=0o755)
    count = min(200, int(rng.lognormvariate(3.0, 0.9)))
    subdirs = [package.lib]
    for _ in range(count // 16):
        subdirs.append(f"{rng.choice(subdirs)}/{w.name()}")
    for j in range(count):
        add(f"{rng.choice(subdirs)}/{w.name()}{j}{rng.choice(SUFFIXES)}")
    if rng.random() < 0.25:
        for language in rng.sample(list(languages), rng.randint(10, len(languages))):
            add(f"usr/share/locale/{language}/LC_MESSAGES/{name}.mo")
    if rng.random() < 0.3:
        add(f"usr/lib/x86_64-linux-gnu/lib{name}.so.1.0.0")
        w.symlink(root, f"usr/lib/x86_64-linux-gnu/lib{name}.so.1", f"lib{name}.so.1.0.0")
        package.links.append(f"usr/lib/x86_64-linux-gnu/lib{name}.so.1")
    if rng.random() < 0.2:
        add(f"etc/{name}/{name}.conf")
    return package


@dataclass(kw_only=True)
class Trees:
    scratch: Path
    base: Path
    update: Path
    squashed: Path
    upper: Path
    merged: Path  # where the child's merged view (upper over update over base) is mounted
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    made: dict[str, int] = field(default_factory=dict)  # what the update and the child did, by kind


def make_base(w: Writer, root: Path) -> list[Package]:
    w.write(root, "etc/passwd", passwd([]))
    w.write(root, "etc/group", group([]))
    w.write(root, "etc/machine-id", b"")
    (root / "var/log").mkdir(parents=True)
    packages: list[Package] = []
    files = 0
    while files < BASE_FILES:
        package = write_package(w, root, f"{w.name()}-{len(packages)}", languages=LANGUAGES)
        packages.append(package)
        files += len(package.files) + len(package.links)
    return packages


def make_update(
    w: Writer, base: Path, root: Path, packages: list[Package], made: dict[str, int]
) -> set[str]:
    """An upgrade: the files of some packages rewritten (most changed, some byte for byte the same),
    some files added and some removed (whiteouts), one package's directory replaced (opaque), a user added.
    Returns the files of the base it changed, kept or removed (the touched ones the child may copy)."""
    rng = w.rng
    touched: set[str] = set()
    w.write(root, "etc/passwd", passwd(["updater"]))
    w.write(root, "etc/group", group(["updater"]))
    order = rng.sample(packages, len(packages))
    # One package's directory replaced as a whole: an opaque directory with new contents.
    replaced = next(p for p in order if sum(f.startswith(p.lib + "/") for f in p.files) >= 10)
    order.remove(replaced)
    opaque = root / replaced.lib
    opaque.mkdir(parents=True)
    os.setxattr(opaque, OPAQUE_XATTR, b"y")
    for j in range(12):
        rel = f"{replaced.lib}/{w.name()}{j}.py"
        w.write(root, rel, w.contents(rel))
    touched.update(f for f in replaced.files if f.startswith(replaced.lib + "/"))
    made.update(opaque_dirs=1, changed=0, identical=0, added=12, whiteouts=0)
    writes = 13
    for package in order:
        if writes >= UPDATE_PATHS:
            break
        made["upgraded_packages"] = made.get("upgraded_packages", 0) + 1
        removed = rng.choice(package.files) if rng.random() < 0.3 else None
        if removed is not None:
            w.whiteout(root, removed)
            touched.add(removed)
            made["whiteouts"] += 1
            writes += 1
        for rel in package.files:
            if rel == removed:
                continue
            data = (base / rel).read_bytes()
            same = rng.random() < 0.2
            w.write(
                root, rel, data if same else w.changed(data, rel), mode=(base / rel).stat().st_mode & 0o7777
            )
            made["identical" if same else "changed"] += 1
            touched.add(rel)
            writes += 1
        if rng.random() < 0.3:
            for j in range(rng.randint(1, 3)):
                rel = f"{package.lib}/{w.name()}-new{j}.py"
                w.write(root, rel, w.contents(rel))
                made["added"] += 1
                writes += 1
    return touched


def make_upper(
    w: Writer, base: Path, root: Path, packages: list[Package], touched: set[str], made: dict[str, int]
) -> None:
    """A child that installed packages of its own, has a home with a project in it, copied some base files
    up unchanged, changed and deleted some (some of which the update changed too), edited the user
    database, and has its own identity and logs: exactly UPPER_FILES non-directories."""
    rng = w.rng
    files = 0

    def add(rel: str, data: bytes, *, mode: int = 0o644) -> None:
        nonlocal files
        w.write(root, rel, data, mode=mode)
        files += 1

    add("etc/machine-id", b"0123456789abcdef0123456789abcdef\n")
    add("etc/hostname", b"child\n")
    add("etc/passwd", passwd(["alice"]))  # the update added "updater" as uid 1000: a record conflict
    add("etc/group", group(["alice"]))
    for j in range(30):
        add(f"var/log/app/{w.name()}{j}.log", w.contents("log"))
    own = {rel for p in packages for rel in p.files} - touched
    untouched = sorted(f for f in own if not f.startswith("etc/"))
    updated = sorted(f for f in touched if (base / f).exists())
    # Disjoint picks: copies, changes and deletions, half of each among the files the update touched.
    picks_touched = rng.sample(updated, UPPER_COPIES // 5 + UPPER_CHANGED // 2 + UPPER_WHITEOUTS // 2)
    picks_own = rng.sample(untouched, UPPER_COPIES * 4 // 5 + UPPER_CHANGED // 2 + UPPER_WHITEOUTS // 2)
    copies = picks_touched[: UPPER_COPIES // 5] + picks_own[: UPPER_COPIES * 4 // 5]
    rest_touched, rest_own = picks_touched[UPPER_COPIES // 5 :], picks_own[UPPER_COPIES * 4 // 5 :]
    changes = rest_touched[: UPPER_CHANGED // 2] + rest_own[: UPPER_CHANGED // 2]
    deletions = rest_touched[UPPER_CHANGED // 2 :] + rest_own[UPPER_CHANGED // 2 :]
    for rel in copies:
        add(rel, (base / rel).read_bytes(), mode=(base / rel).stat().st_mode & 0o7777)
    for rel in changes:
        add(rel, w.changed((base / rel).read_bytes(), rel), mode=(base / rel).stat().st_mode & 0o7777)
    for rel in deletions:
        w.whiteout(root, rel)
        files += 1
    made.update(copies=len(copies), child_changed=len(changes), child_deleted=len(deletions))
    # Packages the child installed (pip and apt): new directories beside the base's, new translations
    # in the base's locale directories.
    installed, before = 0, files
    while files < UPPER_FILES - HOME_FILES:
        package = write_package(w, root, f"local-{w.name()}-{installed}", languages=LANGUAGES[:20])
        files += len(package.files) + len(package.links)
        installed += 1
    made.update(child_packages=installed, child_package_files=files - before, home_files=UPPER_FILES - files)
    project = "home/alice/src/project"
    dirs = [project]
    while files < UPPER_FILES:
        if rng.random() < 0.08:
            dirs.append(f"{rng.choice(dirs)}/{w.name()}")
        rel = f"{rng.choice(dirs)}/{w.name()}{files}{rng.choice(SUFFIXES)}"
        add(rel, w.contents(rel))


def count_entries(root: Path) -> dict[str, int]:
    """Directories, other entries and bytes (apparent size of the non-directories) below `root`."""
    dirs = others = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirs += len(dirnames)
        others += len(filenames)
        size += sum(os.lstat(os.path.join(dirpath, name)).st_size for name in filenames)
    return {"dirs": dirs, "files": others, "entries": dirs + others, "bytes": size}


def mount_overlay_ro(lowers_top_first: Sequence[Path], target: Path) -> None:
    """A read-only overlay of lower layers only, with mount(8), as a user would make it."""
    lowerdir = ":".join(os.fspath(p) for p in lowers_top_first)
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}", target], capture=True)


def make_trees(scratch: Path, stack: contextlib.ExitStack) -> Trees:
    """Every tree of the run; the child's merged view stays mounted until `stack` closes."""
    trees = Trees(
        scratch=scratch,
        base=scratch / "base",
        update=scratch / "update",
        squashed=scratch / "squashed",
        upper=scratch / "upper",
        merged=scratch / "merged",
    )
    w = Writer(random.Random(SEED))
    for path in (trees.base, trees.update, trees.upper):
        path.mkdir()
    log("setup: the base layer ...")
    packages = make_base(w, trees.base)
    trees.made["base_packages"] = len(packages)
    log("setup: the update layer ...")
    touched = make_update(w, trees.base, trees.update, packages, trees.made)
    log("setup: the child's upper dir ...")
    make_upper(w, trees.base, trees.upper, packages, touched, trees.made)
    log("setup: the squashed new base (cp -a of an overlay of update over base) ...")
    view = scratch / "new-view"
    mount_overlay_ro([trees.update, trees.base], view)
    try:
        run(["cp", "-a", os.fspath(view) + "/.", trees.squashed], capture=True)
    finally:
        run(["umount", view], capture=True)
    stack.callback(run, ["umount", trees.merged], capture=True)
    mount_overlay_ro([trees.upper, trees.update, trees.base], trees.merged)
    for name in ("base", "update", "squashed", "upper", "merged"):
        trees.counts[name] = count_entries(getattr(trees, name))
        log(f"setup: {name}: {trees.counts[name]}")
    return trees


# ---------------------------------------------------------------------------------------------------------
# Contenders.


def drop_caches() -> None:
    """Write back, then drop the page cache and the dentry and inode caches."""
    os.sync()
    DROP_CACHES.write_text("3\n")


class PlanCase(Contender):
    """veneer's planner, called in this process as `veneer rebase` calls it."""

    def __init__(self, name: str, trees: Trees, new: list[Path], *, cold: bool) -> None:
        self.name = name
        self.command = f"make_plan(upper, [base], [{', '.join(p.name for p in new)}])"
        self.trees, self.old, self.new, self.cold = trees, [trees.base], new, cold
        self.plan: Plan | None = None
        # The planner lists the layers the two revisions do not share, whole, to find what is touched.
        shared = shared_prefix(self.old, self.new)
        self.layer_entries = sum(
            trees.counts[p.name]["entries"] for p in [*self.old[shared:], *new[shared:]]
        )

    def prepare(self, i: int) -> None:
        if self.cold:
            drop_caches()

    def measure(self, i: int) -> None:
        self.plan = make_plan(self.trees.upper, self.old, self.new, uid_base=None, prefer=Prefer.CHILD)

    def examined(self) -> int:
        """Entries of the upper dir the planner read, and of the layers it listed."""
        assert self.plan is not None
        return self.plan.examined + self.layer_entries

    def notes(self) -> list[str]:
        if self.plan is None:
            return []
        return [
            f"read {self.plan.examined:,} entries of the upper dir, listed {self.layer_entries:,} of the "
            f"layers; plan: {self.plan.summary()}"
        ]


class ToolCase(Contender):
    """A full comparison of the child's merged view with the new base by a tool a user has."""

    def __init__(self, name: str, argv: list[str], trees: Trees, *, cold: bool) -> None:
        self.name, self.argv, self.trees, self.cold = name, argv, trees, cold
        self.command = " ".join(argv).replace(os.fspath(trees.scratch) + "/", "")
        self.result: Completed | None = None

    def prepare(self, i: int) -> None:
        if self.cold:
            drop_caches()

    def measure(self, i: int) -> None:
        # diff exits with 1 when the trees differ.
        self.result = run(self.argv, capture=True, ok_returncodes=(0, 1))

    def examined(self) -> int:
        return self.trees.counts["merged"]["entries"] + self.trees.counts["squashed"]["entries"]

    def notes(self) -> list[str]:
        if self.result is None:
            return []
        return [
            f"{len(self.result.stdout.splitlines())} lines of output, exit status {self.result.returncode}"
        ]


def contenders(trees: Trees, *, cold: bool) -> list[PlanCase | ToolCase]:
    merged, squashed = os.fspath(trees.merged), os.fspath(trees.squashed)
    # diff follows symlinks unless told not to, and fails (status 2) at a dangling one (the child deleted a
    # library a symlink points at); veneer and rsync -a compare links as links. --itemize-changes only
    # makes rsync say what it found; it reads the same either way.
    return [
        PlanCase("veneer plan (entries the update touched)", trees, [trees.base, trees.update], cold=cold),
        PlanCase("veneer plan (all entries touched)", trees, [trees.squashed], cold=cold),
        ToolCase(
            "diff -r --no-dereference",
            ["diff", "-r", "--no-dereference", merged, squashed],
            trees,
            cold=cold,
        ),
        ToolCase(
            "rsync -n -a --checksum --delete", [*RSYNC, merged + "/", squashed + "/"], trees, cold=cold
        ),
    ]


# ---------------------------------------------------------------------------------------------------------
# Reporting.


def summarize(
    cache: str, cases: Sequence[PlanCase | ToolCase], samples: list[Samples], upper: int
) -> dict[str, Any]:
    rows = []
    for case, sample in zip(cases, samples, strict=True):
        examined = case.examined()
        rows.append(
            {
                "name": sample.name,
                "command": sample.command,
                "examined": examined,
                "samples_s": sample.seconds,
                "median_s": sample.median,
                "min_s": sample.min,
                "examined_per_s": examined / sample.median,
                "upper_entries_per_s": upper / sample.median,
                "ratio_to_veneer": sample.median / samples[0].median,
                "ratio_to_veneer_all": sample.median / samples[1].median,
                "notes": sample.notes,
            }
        )
    return {"cache": cache, "rows": rows}


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| cache | case | entries examined | median | examined/s | upper entries/s "
        "| / veneer | / veneer (all) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for row in result["rows"]:
            lines.append(
                f"| {result['cache']} | {row['name']} | {row['examined']:,} | {human_time(row['median_s'])} "
                f"| {row['examined_per_s']:,.0f} | {row['upper_entries_per_s']:,.0f} "
                f"| {row['ratio_to_veneer']:.2f}x | {row['ratio_to_veneer_all']:.2f}x |"
            )
    notes = [
        f"- {result['cache']}, {row['name']}: {note}"
        for result in results
        for row in result["rows"]
        for note in row["notes"]
    ]
    return "\n".join([*lines, "", *notes]) if notes else "\n".join(lines)


def profile(trees: Trees, top: int) -> str:
    """cProfile of each planner case (warm cache, after one untimed call), top functions by own time."""
    out = io.StringIO()
    for label, new in (
        ("entries the update touched", [trees.base, trees.update]),
        ("all entries touched", [trees.squashed]),
    ):
        make_plan(trees.upper, [trees.base], new, uid_base=None, prefer=Prefer.CHILD)
        profiler = cProfile.Profile()
        profiler.enable()
        make_plan(trees.upper, [trees.base], new, uid_base=None, prefer=Prefer.CHILD)
        profiler.disable()
        out.write(f"\n== veneer plan ({label}), by own time ==\n")
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def host_info(scratch: Path) -> dict[str, Any]:
    return {
        **machine_info(scratch),
        "diff": first_line(["diff", "--version"]),
        "rsync": first_line(["rsync", "--version"]),
    }


# ---------------------------------------------------------------------------------------------------------
# Main.


def existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


@contextlib.contextmanager
def scratch_in(parent: Path) -> Iterator[Path]:
    scratch = Path(tempfile.mkdtemp(prefix="veneer-bench-rebase-", dir=parent))
    try:
        yield scratch
    finally:
        remove_scratch(scratch)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="veneer benchmark: rebase planning (as root)")
    parser.add_argument("--repeat-warm", type=int, default=5, help="timed runs, warm cache (default 5)")
    parser.add_argument("--repeat-cold", type=int, default=3, help="timed runs, cold cache (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--only", choices=("warm", "cold"), help="one cache state")
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="where the scratch dir goes (/var/tmp)"
    )
    parser.add_argument("--profile", type=int, metavar="N", default=0, help="print cProfile's top N too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (overlay mounts, dropping caches, trusted.* xattrs)", file=sys.stderr)
        return 2
    if min(args.repeat_warm, args.repeat_cold) < 1:
        print("bench: --repeat-warm and --repeat-cold must be at least 1", file=sys.stderr)
        return 2
    for tool in ("diff", "rsync", "cp", "mount"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing", file=sys.stderr)
            return 2
    store = Layout.from_env().root
    if os.stat(existing(store)).st_dev != os.stat(args.dir).st_dev:
        log(f"note: {args.dir} is not on the filesystem of the store {store}")
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    os.umask(0o022)
    started, load_at_start = time.time(), loadavg()
    with scratch_in(args.dir) as scratch, contextlib.ExitStack() as stack:
        start = time.perf_counter()
        trees = make_trees(scratch, stack)
        setup_s = time.perf_counter() - start
        log(f"setup: {setup_s:.1f} s")
        upper = trees.counts["upper"]["entries"]
        results = []
        for cache, repeat in (("warm", args.repeat_warm), ("cold", args.repeat_cold)):
            if args.only not in (None, cache):
                continue
            log(f"benchmark: rebase planning, {cache} cache")
            cases = contenders(trees, cold=cache == "cold")
            samples = time_contenders(cases, repeat, args.warmup)
            results.append(summarize(cache, cases, samples, upper))
        profiled = profile(trees, args.profile) if args.profile else ""
        if mounts_under(scratch) != [os.fspath(trees.merged)]:
            log(f"unexpected mounts under the scratch dir: {mounts_under(scratch)}")
        report = {
            "version": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "arguments": {k: os.fspath(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "host": {**host_info(scratch), "loadavg_at_start": load_at_start},
            "trees": trees.counts,
            "made": trees.made,
            "setup_s": setup_s,
            "benchmarks": results,
        }
    table = format_table(results)
    print(table)
    if profiled:
        print(profiled, file=sys.stderr)
    save_report({**report, "table": table, "profile": profiled}, started, prefix="rebase-")
    return 0


if __name__ == "__main__":
    exit_with(main)
