"""The distributions veneer knows, behind one registry, and what every distribution module shares.

One module per distribution (`busybox`, `debian`, `arch`) holds how to bootstrap it into an empty
directory and how to provision it (packages, locale, users); `Distribution.installer()` maps the
registry to those modules and imports them lazily, as mkosi's `mkosi/distribution/__init__.py` does,
so they can import this package's base class without an import cycle.

Shared here: what runs a command inside a tree under construction (`CommandRunner`, in practice the
throwaway machine of `veneer.images.buildbox`: the tree's programs never run as host root), reading a
tree's os-release, and reaching files inside a tree without following a symlink out of it (an image may
hold `etc/ssh -> /etc/ssh`, which on the build host would be the host's own directory).

This package must not import `veneer.images.bootstrap` (which imports it) or the image store.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Protocol

from veneer.errors import ImageError, UsageError
from veneer.util.progress import QUIET, Progress

logger = logging.getLogger(__name__)

# Locales that glibc has built in (C.UTF-8 since 2.35): nothing to generate, no locale data needed.
BUILTIN_LOCALES = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8"})

_BIN_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin")


class Distribution(enum.StrEnum):
    """A distribution whose trees veneer can bootstrap and provision; values are os-release IDs."""

    BUSYBOX = "busybox"
    DEBIAN = "debian"
    ARCH = "arch"

    def installer(self) -> type[DistributionInstaller]:
        """The class that knows how to provision trees of this distribution."""
        # Imported here: the modules import this package for the base class.
        match self:
            case Distribution.BUSYBOX:
                from veneer.images.distros.busybox import BusyboxInstaller

                return BusyboxInstaller
            case Distribution.DEBIAN:
                from veneer.images.distros.debian import DebianInstaller

                return DebianInstaller
            case Distribution.ARCH:
                from veneer.images.distros.arch import ArchInstaller

                return ArchInstaller

    @classmethod
    def detect(cls, tree: Path) -> Distribution | None:
        """The distribution of the tree from its os-release ID, then ID_LIKE; None if unknown."""
        fields = read_os_release(tree)
        ids = [fields.get("ID", ""), *fields.get("ID_LIKE", "").split()]
        for os_id in ids:
            for distribution in cls:
                if os_id and os_id in distribution.installer().os_ids:
                    return distribution
        return None


class CommandRunner(Protocol):
    """Runs a command as root inside the tree under construction (`veneer.images.buildbox.BuildBox`)."""

    def __call__(
        self,
        command: Sequence[str],
        *,
        setenv: Mapping[str, str] | None = None,
        network: bool = False,
        on_line: Callable[[str], None] | None = None,
    ) -> None: ...


def installer_for(distribution: Distribution | None) -> type[DistributionInstaller]:
    """The installer of `distribution`, or the generic one for trees of an unknown distribution."""
    return distribution.installer() if distribution else DistributionInstaller


class DistributionInstaller:
    """What veneer can do inside a tree of one distribution. Class methods only, as mkosi's installers.

    The base class is the generic fallback for trees whose distribution veneer does not know: it adds
    users with the tree's own `useradd` and refuses what needs a package manager.
    """

    os_ids: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def pretty_name(cls) -> str:
        """The distribution's name in messages."""
        return "an unknown distribution"

    @classmethod
    def locale_packages(cls, locale: str) -> tuple[str, ...]:
        """Packages the tree needs before `locale` can be generated (installed at bootstrap if possible)."""
        return ()

    @classmethod
    def install_packages(
        cls, tree: Path, packages: Sequence[str], *, runner: CommandRunner, progress: Progress = QUIET
    ) -> None:
        """Install `packages` into the tree with its own package manager, reporting into `progress`."""
        raise ImageError(
            f"Cannot install packages into an image of {cls.pretty_name()}",
            hint="Install them with --run and the image's own package manager.",
        )

    @classmethod
    def setup_locale(
        cls, tree: Path, locale: str, *, runner: CommandRunner, progress: Progress = QUIET
    ) -> None:
        """Generate `locale` in the tree and make it the default."""
        raise ImageError(
            f"Cannot set the locale of an image of {cls.pretty_name()}",
            hint="Set it with --run and the image's own tools.",
        )

    @classmethod
    def add_user(
        cls, tree: Path, *, name: str, group: str | None, groups: Sequence[str], runner: CommandRunner
    ) -> None:
        """Add user `name` with primary `group` (else a group of its own) and supplementary `groups`.

        Groups the tree lacks are created first, so `--user kang:wheel` works on distributions without
        a wheel group.
        """
        if not has_command(tree, "useradd"):
            raise ImageError(
                f"Cannot add user '{name}': the image has no useradd",
                hint="Install the shadow utilities into the image (package 'passwd' or 'shadow').",
            )
        existing = group_names(read_tree_text(tree, "etc/group") or "")
        for missing in missing_groups(existing, group=group, groups=groups):
            logger.debug("Creating group '%s' in '%s'", missing, tree)
            runner(["groupadd", missing])
        runner(useradd_argv(name=name, group=group, groups=groups))


def has_command(tree: Path, name: str) -> bool:
    """Whether the tree has an executable `name` in one of the standard bin directories."""
    return any(os.path.lexists(tree / d / name) for d in _BIN_DIRS)


def has_systemd(tree: Path) -> bool:
    """Whether the tree has systemd as its service manager."""
    return any(os.path.lexists(tree / d / "systemd/systemd") for d in ("usr/lib", "lib"))


def tree_path(tree: Path, relative: str, *, create_parents: bool = False) -> Path:
    """`tree/relative`, refusing a path whose parents inside the tree are symlinks or not directories.

    The last component is not checked: callers lstat, unlink or replace it, never write through it.
    """
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or ".." in parts:
        raise ImageError(
            f"Path '{relative}' leaves the image", hint="Use a path relative to the image root."
        )
    path = tree
    for part in parts[:-1]:
        path = path / part
        if path.is_symlink():
            raise ImageError(
                f"Cannot change '{relative}' in '{tree}': '{path.relative_to(tree)}' is a symlink",
                hint="Replace the symlink by a directory in the image, or leave the setting out.",
            )
        if not os.path.lexists(path) and create_parents:
            path.mkdir(mode=0o755)
        elif not path.is_dir():
            raise ImageError(
                f"Cannot change '{relative}' in '{tree}': '{path.relative_to(tree)}' is not a directory"
            )
    return path / parts[-1]


def read_tree_text(tree: Path, relative: str) -> str | None:
    """The text of a regular file inside the tree, or None if it is missing or not a regular file."""
    try:
        path = tree_path(tree, relative)
    except ImageError:
        return None
    if path.is_symlink() or not path.is_file():
        return None
    return path.read_text(errors="surrogateescape")


def write_tree_text(tree: Path, relative: str, text: str, *, mode: int = 0o644) -> None:
    """Replace the file `relative` in the tree with `text`, never writing through a symlink."""
    path = tree_path(tree, relative, create_parents=True)
    if path.is_symlink() or path.exists():
        if path.is_dir() and not path.is_symlink():
            raise ImageError(f"Cannot write '{relative}' in '{tree}': it is a directory")
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", errors="surrogateescape") as f:
        f.write(text)
    os.chmod(path, mode)


def parse_os_release(text: str) -> dict[str, str]:
    """The KEY=VALUE assignments of an os-release file, with shell quoting removed."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        fields[key.strip()] = " ".join(words)
    return fields


def read_os_release(tree: Path) -> dict[str, str]:
    """The tree's os-release fields: etc/os-release first, else usr/lib/os-release (os-release(5))."""
    for relative in ("etc/os-release", "usr/lib/os-release"):
        path = tree / relative
        if path.is_symlink():
            # Resolve one level by hand, inside the tree (usually ../usr/lib/os-release).
            target = os.readlink(path)
            relative = os.path.normpath(
                target.lstrip("/")
                if target.startswith("/")
                else os.path.join(os.path.dirname(relative), target)
            )
            if relative.startswith(".."):
                continue
        text = read_tree_text(tree, relative)
        if text is not None:
            return parse_os_release(text)
    return {}


def group_names(group_text: str) -> set[str]:
    """The names of the groups in an /etc/group file."""
    return {line.split(":", 1)[0] for line in group_text.splitlines() if line and not line.startswith("#")}


def missing_groups(existing: set[str], *, group: str | None, groups: Sequence[str]) -> list[str]:
    """The groups of a new user that do not exist yet, in order, without duplicates."""
    wanted = [*([group] if group else []), *groups]
    return [g for i, g in enumerate(wanted) if g not in existing and g not in wanted[:i]]


def useradd_argv(*, name: str, group: str | None, groups: Sequence[str]) -> list[str]:
    """The `useradd` command (run inside the tree) that adds a user with a home directory."""
    argv = ["useradd", "--create-home"]
    if group:
        argv += ["--gid", group]
    if groups:
        argv += ["--groups", ",".join(groups)]
    return [*argv, "--", name]


def locale_gen_line(supported: str | None, locale: str) -> str:
    """The locale.gen line ("en_US.UTF-8 UTF-8") for `locale`, looked up in glibc's SUPPORTED list."""
    if supported is not None:
        for line in supported.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == locale:
                return line.strip()
        raise UsageError(
            f"Unknown locale '{locale}'",
            hint="Use a name from the image's /usr/share/i18n/SUPPORTED, such as en_US.UTF-8.",
        )
    _, dot, charset = locale.partition(".")
    if not dot:
        raise UsageError(f"Cannot tell the character set of locale '{locale}'", hint="Use e.g. en_US.UTF-8.")
    return f"{locale} {re.sub(r'(?i)^utf-?8$', 'UTF-8', charset.split('@')[0])}"


def enable_locale_gen(text: str, line: str) -> str:
    """locale.gen `text` with `line` enabled: uncommented where it is commented out, else appended."""
    wanted = line.split()
    lines = text.splitlines()
    for i, current in enumerate(lines):
        if current.split() == wanted:
            return text
        if current.startswith("#") and current.lstrip("#").split() == wanted:
            lines[i] = line
            return "\n".join(lines) + "\n"
    return "".join(f"{entry}\n" for entry in [*lines, line])


def generate_locale(tree: Path, locale: str, *, runner: CommandRunner) -> None:
    """Enable `locale` in the tree's /etc/locale.gen and run its glibc `locale-gen` (Debian and Arch)."""
    if locale in BUILTIN_LOCALES:
        return
    line = locale_gen_line(read_tree_text(tree, "usr/share/i18n/SUPPORTED"), locale)
    current = read_tree_text(tree, "etc/locale.gen") or ""
    write_tree_text(tree, "etc/locale.gen", enable_locale_gen(current, line))
    runner(["locale-gen"])
