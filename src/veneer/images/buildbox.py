"""A throwaway user-namespaced machine over an image tree under construction, where provisioning runs the
image's own programs (`useradd`, `apt-get`, `locale-gen`, `--run` commands).

An image from a tarball, a directory or a registry is untrusted input, and so are its programs: like the
command of `image update`, they run under systemd-nspawn in a private user namespace, never as host root.
Container root is a host uid range reserved for this build alone in the host-wide registry
(`reserve_uid_range`), so its processes share ids with no machine and no other build of any store. The
tree is neither copied nor chowned: nspawn sees it through a writable idmapped mount (ids 0..65535 on disk
shown as the range), so what the programs write lands in the tree with real ids 0..65535, as every layer
holds them. That mount is attached only in a mount namespace of nspawn's own, made between fork and exec,
so it goes when nspawn goes, killed or not.

Network: steps that only change files (users, locales) run with a private network of their own (loopback
only). Package installs and `--run` commands get the host's network: the package manager needs the
mirror, and veneer's nat network is made for machines (an address of the pool, the bridge, dnsmasq, all
recorded per machine), which a tree under construction is not yet. Root in a private user namespace
cannot reconfigure the host's network, but it can reach services listening on the host's loopback; the
README's "Security model" says so and points untrusted commands to `image update` (nat by default).

The nspawn command line is the machines' own (`veneer.runtime.nspawn.nspawn_argv`). This module does not
touch the image store; it takes its uid range where machines take theirs (`veneer.machines.uids`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from veneer.config.layout import Layout
from veneer.config.settings import MachineName, Network, NetworkMode
from veneer.errors import CommandFailed, ImageError
from veneer.images.distros import tree_path
from veneer.machines.uids import allocate_uid_range, release_uid_range
from veneer.overlay import idmap
from veneer.runtime.base import RunSpec
from veneer.runtime.nspawn import (
    NSPAWN_ENV,
    NSPAWN_STATE_DIR,
    enter_private_mount_namespace,
    needs_private_state_dir,
    nspawn_argv,
    state_dir_argv,
)
from veneer.util.fs import random_hex
from veneer.util.proc import run

logger = logging.getLogger(__name__)


def _log_line(line: str) -> None:
    logger.debug("%s", line)


# nspawn makes the base directories, the /usr-merge symlinks, its mount points and bind-mount targets as
# host root, before it enters the user namespace; host root owns nothing in the idmapped tree (EOVERFLOW),
# so they are made here first, as real root. The list follows systemd's src/shared/base-filesystem.c.
BASE_DIRS = (("usr", 0o755), ("var", 0o755), ("etc", 0o755), ("root", 0o700), ("proc", 0o555),
             ("sys", 0o555), ("dev", 0o755), ("run", 0o755), ("tmp", 0o1777))  # fmt: skip
# (link, candidate targets, a file the target must hold): made only where a target exists.
BASE_LINKS = (
    ("bin", ("usr/bin",), None),
    ("lib", ("usr/lib",), None),
    ("sbin", ("usr/sbin",), None),
    ("lib64", ("usr/lib/x86_64-linux-gnu", "usr/lib64"), "ld-linux-x86-64.so.2"),
)
BASE_FILES = ("etc/resolv.conf", "etc/localtime", "etc/machine-id")


def make_base_filesystem(tree: Path) -> None:
    """Make what nspawn would otherwise make in the tree (see BASE_DIRS), never through a symlink."""
    for relative, mode in BASE_DIRS:
        path = tree_path(tree, relative)
        if not os.path.lexists(path):
            path.mkdir()
            path.chmod(mode)
    for link, targets, check in BASE_LINKS:
        path = tree_path(tree, link)
        if os.path.lexists(path):
            continue
        for target in targets:
            try:
                found = tree_path(tree, target)
            except ImageError:
                continue  # a parent is missing or a symlink: not this one
            if (
                found.is_dir()
                and not found.is_symlink()
                and (check is None or os.path.lexists(found / check))
            ):
                path.symlink_to(target)
                break
    for relative in BASE_FILES:
        path = tree_path(tree, relative)
        if not os.path.lexists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))


def build_spec(
    root: Path,
    uid_base: int,
    command: Sequence[str],
    *,
    setenv: Mapping[str, str] | None = None,
    network: bool = False,
) -> RunSpec:
    """What nspawn runs for one command of a build: container root is host uid `uid_base`, the network
    the host's (`network`) or loopback only."""
    return RunSpec(
        name=f"build-{uid_base:x}",
        root=root,
        machine_id=random_hex(16),
        uid_base=uid_base,
        command=tuple(command),
        network=Network(mode=NetworkMode.HOST if network else NetworkMode.NONE),
        env=tuple(sorted((setenv or {}).items())),
        # Packages (tzdata) replace /etc/localtime, which a bind mount would keep busy.
        bind_timezone=False,
    )


@contextlib.contextmanager
def reserve_uid_range(layout: Layout) -> Iterator[int]:
    """A host uid range for one build, from the host-wide registry that machines of every store take
    theirs from; freed when the build ends. A build killed on the way leaves its range retired: it is
    handed out again only when every other range is taken."""
    name = MachineName(f".build-{random_hex(8)}")  # a dot: never a machine's name
    base = allocate_uid_range(layout, name)
    try:
        yield base
    finally:
        release_uid_range(layout, name, base, retire=False)


def _remove_empty_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


class BuildBox:
    """Runs commands inside one tree under construction (see the module doc). Use it as a context
    manager: the uid range is reserved at the first command and released on exit."""

    def __init__(self, layout: Layout, tree: Path) -> None:
        self.layout = layout
        self.tree = tree
        self._stack = contextlib.ExitStack()
        self._uid_base: int | None = None

    def __enter__(self) -> BuildBox:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()

    def _reserve(self) -> int:
        if self._uid_base is None:
            self._uid_base = self._stack.enter_context(reserve_uid_range(self.layout))
            mount_point = self._mount_point()
            mount_point.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Empty on the host: the tree is attached there only in nspawn's own mount namespace.
            self._stack.callback(_remove_empty_dir, mount_point)
            make_base_filesystem(self.tree)
        return self._uid_base

    def _mount_point(self) -> Path:
        assert self._uid_base is not None
        return self.layout.run / "builds" / f"{self._uid_base:x}"

    def __call__(
        self,
        command: Sequence[str],
        *,
        setenv: Mapping[str, str] | None = None,
        network: bool = False,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """Run `command` as root of the box; `network`: the host's network, else loopback only.

        Output goes line by line to `on_line` (a progress parser), else it is logged at debug level; its
        last lines are kept for errors.
        """
        uid_base = self._reserve()
        logger.debug("In '%s' (uids %#x+): %s", self.tree, uid_base, shlex.join(command))
        mount_point = self._mount_point()
        spec = build_spec(mount_point, uid_base, command, setenv=setenv, network=network)
        tree_fd = self._open_idmapped_tree(uid_base)
        try:
            private_state = needs_private_state_dir()
            if private_state:
                NSPAWN_STATE_DIR.mkdir(parents=True, exist_ok=True)

            def before_exec() -> None:
                # In nspawn's child, in this order: a mount namespace of its own (a slave of the host's),
                # then the tree attached there, where it lives exactly as long as nspawn.
                enter_private_mount_namespace()
                idmap.move_mount(tree_fd, mount_point)

            # In that namespace: nspawn's private state dir, where it needs one (see runtime.nspawn).
            argv = state_dir_argv(nspawn_argv(spec)) if private_state else nspawn_argv(spec)
            run(argv, env=NSPAWN_ENV, before_exec=before_exec, on_line=on_line or _log_line)
        except CommandFailed as e:
            # nspawn passes the command's exit status on; its own failures are in the stderr tail.
            tail = "".join(f"\n  {line}" for line in e.stderr.strip().splitlines()[-5:])
            raise ImageError(
                f"Command failed in the image (exit status {e.returncode}): {shlex.join(command)}{tail}",
                hint="Nothing was published. Fix the command or the image, then create it again.",
            ) from e
        finally:
            os.close(tree_fd)

    def _open_idmapped_tree(self, uid_base: int) -> int:
        """A detached, writable, idmapped clone of the tree's mount, as an fd."""
        try:
            userns = idmap.open_userns(uid_base=uid_base)
            try:
                return idmap.open_idmapped_tree(self.tree, userns_fd=userns, readonly=False)
            finally:
                os.close(userns)
        except OSError as e:
            raise ImageError(
                f"Cannot map '{self.tree}' into a user namespace: {e.strerror or e}",
                hint="Provisioning needs idmapped mounts (Linux 5.12+, on ext4, xfs, btrfs or tmpfs).",
            ) from e
