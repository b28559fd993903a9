"""A freshly debootstrapped Debian 12 root standing in for a new machine, to prove that `tools/setup`
installs everything the code and the tests run (a tool this host happens to have must not make CI pass).

The root is a plain `debootstrap --variant=minbase bookworm`, plus only what every machine of this workplace
is given before any project code runs: its extra CA certificates (the package mirrors are reached through a
TLS proxy) and the package clients' settings passed in the environment. Commands run in it through `chroot`
inside a mount namespace of their own, so /proc, /sys, /dev and /run go away with the namespace.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from veneer.util import proc

CHECKOUT = Path(__file__).resolve().parents[2]
# Where the checkout is copied to inside the root.
INSIDE = Path("/veneer")
SUITE = "bookworm"
_SOURCES = f"""\
deb http://deb.debian.org/debian {SUITE} main
deb http://deb.debian.org/debian {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
"""

# Commands that run a command named by a later argument: the census looks past their options.
_WRAPPERS = frozenset({"setpriv", "env", "timeout", "stdbuf", "unshare", "nsenter", "chroot", "setsid"})
# Names that stand first in an argv literal but run inside a machine or an image, never on the host, or that
# are not commands at all; a host tool with one of these names is not needed by veneer or its tests.
_NOT_HOST_COMMANDS = frozenset(
    {
        "apt-get",  # images/distros/debian.py: inside the image being provisioned
        "arch",  # a distribution's name
        "groupadd",  # provisioning, inside the image
        "hostname",  # provisioning tests: inside the image
        "init",  # an init's name: a machine's, or PID 1's in the supervisor tests
        "journalctl",  # run inside the machine (`veneer journal`)
        "less",  # a package name in provisioning tests
        "link",  # `ip link ...` split across literals
        "locale-gen",  # provisioning, inside the image
        "passwd",  # a file name in the rebase merger
        "systemctl",  # provisioning (inside the image) and unit files (on systemd hosts only)
        "systemd",  # a package name and an init's name
        "tty",  # run inside a machine
        "useradd",  # provisioning, inside the image
        "vim",  # a package name in provisioning tests
        "write",  # a step name in the rebase property tests
        "veneer",  # the command under test: installed by `pip install -e` in tools/setup
        "python3",  # installed by tools/setup (Debian's python3 when the machine has none)
        "ldd",  # libc-bin: essential on every Debian root
        "time",  # a namespace's name (runtime/enter.py)
    }
)
_COMMAND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._+-]*\Z")
# Environment that a machine of this workplace gives every process: the package clients' settings.
_PASSED_ENV = re.compile(r"PIP_\w+|SSL_CERT_\w+|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|https?_proxy|HTTPS?_PROXY")


def _string(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _argv_commands(node: ast.List | ast.Tuple) -> Iterator[str]:
    """The command an argv literal runs, and the command after each wrapper's options (`setpriv ... X`)."""
    items = [_string(e) for e in node.elts]
    i = 0
    while i < len(items) and (name := items[i]) is not None and _COMMAND_NAME.match(name):
        yield name
        if name not in _WRAPPERS:
            return
        i += 1
        while i < len(items) and (arg := items[i]) is not None and (arg[:1] == "-" or "=" in arg):
            i += 1


def census(roots: Sequence[Path]) -> dict[str, Path]:
    """Every command that an argv literal or a `which("X")` under `roots` names and that this host has,
    with its path here: what a fresh machine must have once `tools/setup` has run."""
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=os.fspath(path))):
                names: list[str] = []
                if isinstance(node, ast.List | ast.Tuple):
                    names += _argv_commands(node)
                elif isinstance(node, ast.Call) and node.args:
                    called = getattr(node.func, "id", getattr(node.func, "attr", None))
                    if called == "which" and (name := _string(node.args[0])) is not None:
                        names.append(name)
                for name in names:
                    if name not in _NOT_HOST_COMMANDS and (where := shutil.which(name)) is not None:
                        found[name] = Path(where)
    return found


def make_fresh_root(root: Path) -> None:
    """Debootstrap a minbase Debian 12 with its updates into the empty directory `root`; copy the checkout
    to /veneer."""
    proc.run(["debootstrap", "--variant=minbase", SUITE, root], capture=True)
    # As the installer leaves a Debian 12 machine: updates and security updates applied (the tar reader
    # relies on tarfile fixes that bookworm's python3.11 got only through them).
    (root / "etc/apt/sources.list").write_text(_SOURCES)
    extra_cas = Path("/usr/local/share/ca-certificates")
    if extra_cas.is_dir():
        shutil.copytree(extra_cas, root / extra_cas.relative_to("/"), dirs_exist_ok=True)
    files = proc.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=CHECKOUT, capture=True
    ).stdout.split("\0")
    for name in filter(None, files):
        source, target = CHECKOUT / name, root / INSIDE.relative_to("/") / name
        if source.is_symlink() or source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    run_in_root(root, ["sh", "-c", "apt-get update -qq && apt-get full-upgrade -y -qq >/dev/null"])


def run_in_root(root: Path, argv: Sequence[str], *, check: bool = True) -> proc.Completed:
    """Run `argv` as root in `root`, in /veneer, with /proc, /sys, /dev and /run in a mount namespace of its
    own; the venv that tools/setup makes there (Debian's python3) comes first on PATH."""
    mounts = (
        'mount --bind "$R" "$R" && mount -t proc proc "$R/proc" && mount --rbind /sys "$R/sys" && '
        'mount --rbind /dev "$R/dev" && mount -t tmpfs tmpfs "$R/run" && '
        'cp /etc/resolv.conf "$R/etc/resolv.conf" && mkdir -p "$R/.host" && cd "$R" && '
        # pivot_root, not just chroot: the kernel refuses new user namespaces to a chrooted process, and
        # nspawn needs / to be a mount point.
        'pivot_root . .host && exec chroot . sh -c \'umount -l /.host && cd "$0" && exec "$@"\' "$D" "$@"'
    )
    env = {k: v for k, v in os.environ.items() if _PASSED_ENV.fullmatch(k)}
    env |= {"R": os.fspath(root), "D": os.fspath(INSIDE), "HOME": "/root", "TERM": "dumb"}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    env["PATH"] = f"{INSIDE}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["PYTHONPATH"] = f"{INSIDE}/src"
    return proc.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts, "sh", *argv],
        env=env,
        capture=True,
        check=check,
    )
