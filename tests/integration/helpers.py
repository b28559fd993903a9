"""A private veneer store per test, driven through the real command line, and cleaned up afterwards."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from veneer.util import proc

SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Store:
    """A veneer state root and runtime root of the test's own."""

    root: Path
    run: Path
    uids: Path  # the registry of uid ranges: host-wide by default, the test's own here

    def env(self) -> dict[str, str]:
        return {
            "VENEER_ROOT": str(self.root),
            "VENEER_RUN": str(self.run),
            "VENEER_UIDS": str(self.uids),
            "PYTHONPATH": str(SRC),
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "veneer", *args]

    def veneer(
        self,
        *args: str,
        ok: Sequence[int] = (0,),
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> proc.Completed:
        """Run the CLI to completion; fail the test unless its exit status is in `ok`."""
        result = proc.run(
            self.argv(*args), capture=True, check=False, input=input, env={**self.env(), **(env or {})}
        )
        assert result.returncode in ok, (
            f"veneer {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        return result

    def spawn(self, *args: str) -> proc.Process:
        """Start the CLI in the background (the caller waits for or kills it)."""
        return proc.spawn(self.argv(*args), env=self.env())

    def upper(self, machine: str) -> Path:
        return self.root / "machines" / machine / "upper"

    def layer_tree(self, image: str) -> Path:
        import json

        record = json.loads((self.root / "images" / image / "image.json").read_text())
        return self.root / "layers" / str(record["layers"][0]["id"]) / "tree"

    def machine_json(self, machine: str) -> dict[str, object]:
        import json

        data: dict[str, object] = json.loads((self.root / "machines" / machine / "machine.json").read_text())
        return data


def mounts_under(*paths: Path) -> list[str]:
    """Mount points below any of `paths`, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == str(p) or point.startswith(f"{p}/") for p in paths):
            found.append(point)
    return sorted(found, key=len, reverse=True)


@contextlib.contextmanager
def private_store(tmp: Path) -> Iterator[Store]:
    """A store under `tmp`; on the way out its mounts are detached and its files removed."""
    store = Store(root=tmp / "state", run=tmp / "run", uids=tmp / "uids")
    try:
        yield store
    finally:
        for point in mounts_under(store.root, store.run):
            proc.run(["umount", "--lazy", point], check=False)
        for path in (store.root, store.run, store.uids):
            proc.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


Snapshot = dict[str, tuple[object, ...]]


def tree_snapshot(root: Path, *, times: bool = True) -> Snapshot:
    """Everything that makes a tree what it is, per path: type and mode, owner, contents, link target,
    device number (whiteouts), every xattr (trusted.overlay.* too) and, with `times`, the mtime. `root`
    itself is ".", and may be a file."""
    import os

    entries: Snapshot = {".": entry_snapshot(root, times=times)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            entries[os.path.relpath(path, root)] = entry_snapshot(path, times=times)
    return entries


def entry_snapshot(path: Path, *, times: bool = True) -> tuple[object, ...]:
    import hashlib
    import os
    import stat

    st = os.lstat(path)
    xattrs = tuple(
        sorted(
            (x, os.getxattr(path, x, follow_symlinks=False))
            for x in os.listxattr(path, follow_symlinks=False)
        )
    )
    data: object = None
    if stat.S_ISREG(st.st_mode):
        data = hashlib.sha256(path.read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        data = os.readlink(path)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_rdev, data, xattrs) + (
        (st.st_mtime_ns,) if times and not stat.S_ISLNK(st.st_mode) else ()
    )


@contextlib.contextmanager
def overlay_view(target: Path, lowers: list[Path], upper: Path | None = None) -> Iterator[Path]:
    """A real overlay mount (lowers bottom first), read-only without `upper`, with veneer's options."""
    if upper is None and len(lowers) == 1:
        yield lowers[0]  # overlayfs wants two lowers at least; one is its own view
        return
    target.mkdir(parents=True, exist_ok=True)
    options = "lowerdir=" + ":".join(str(p) for p in reversed(lowers))
    if upper is not None:
        work = upper.parent / (upper.name + ".work")
        work.mkdir(exist_ok=True)
        options += f",upperdir={upper},workdir={work}"
    options += ",index=off,metacopy=off,redirect_dir=off,xino=off"
    proc.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)])
    try:
        yield target
    finally:
        proc.run(["umount", str(target)])


def view(root: Path) -> dict[str, tuple[object, ...]]:
    """What a machine sees: per path, type, mode and contents (all is owned by root here)."""
    import os
    import stat

    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st_ = os.lstat(path)
            data = path.read_bytes() if stat.S_ISREG(st_.st_mode) else None
            seen[os.path.relpath(path, root)] = (st_.st_mode, data)
    return seen


# Runs the CLI and kills itself (SIGKILL, as `kill -9` would) just before its Nth rename or replace: the
# steps that move entries in and out of the upper dir and the journal, and every atomic write of state.
KILL_AT = """
import os, signal, sys
from veneer.cli import main

left = int(sys.argv[1])

def fatal(real):
    def call(*args, **kwargs):
        global left
        left -= 1
        if left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call

os.rename, os.replace = fatal(os.rename), fatal(os.replace)
sys.exit(main(sys.argv[2:]))
"""


def killed_at(store: Store, step: int, *args: str) -> bool:
    """Run `veneer ARGS` killed at `step`; whether it was (False: it finished first)."""
    argv = [sys.executable, "-c", KILL_AT, str(step), *args]
    result = proc.run(argv, capture=True, check=False, env=store.env())
    assert result.returncode in (0, -signal.SIGKILL), result.stderr
    return result.returncode != 0


def run_in_pty(argv: Sequence[str], env: dict[str, str], *, input: bytes = b"") -> tuple[int, str]:
    """Run argv on a new pseudo-terminal, as in an interactive shell: (exit status, what it printed)."""
    import os
    import pty

    pid, master = pty.fork()
    if pid == 0:  # the child: the pty is its stdin, stdout, stderr and controlling terminal
        os.execve(argv[0], list(argv), {**env, "TERM": "dumb"})
    if input:
        os.write(master, input)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child and everything it started closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace").replace("\r\n", "\n")


@dataclass
class Started:
    """A command started in the background with its output going to a file (or a pty)."""

    pid: int
    output: Path

    def wait(self) -> tuple[int, str]:
        """Its exit status and everything it printed."""
        import os

        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status), self.output.read_text(errors="replace")


def start_in_background(
    argv: Sequence[str], env: dict[str, str], output: Path, *, terminal: bool
) -> Started:
    """Start argv with stdin from /dev/null and stdout and stderr into `output`; with `terminal`, on a new
    pseudo-terminal (whose output a thread copies into `output`) as an interactive shell would."""
    import os
    import pty
    import threading

    if terminal:
        pid, master = pty.fork()
        if pid == 0:
            os.execve(argv[0], list(argv), {**env, "TERM": "dumb"})

        def copy() -> None:
            with open(output, "wb") as out:
                while True:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:  # EIO: everything that had the terminal open is gone
                        break
                    if not chunk:
                        break
                    out.write(chunk)
                    out.flush()
            os.close(master)

        output.touch()
        threading.Thread(target=copy, daemon=True).start()
        return Started(pid=pid, output=output)
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.execve(argv[0], list(argv), env)
    return Started(pid=pid, output=output)
