"""Building a base image's root filesystem in a staging directory: bootstrap, provision, scrub.

`build_tree()` fills an empty directory the caller made; the image store publishes it afterwards. This
module never touches the store, its locks or layers. What differs between distributions lives in
`veneer.images.distros` (one module per distribution behind a registry); here are the steps every
image goes through, in order, and the settings that ask for them (`BuildSpec`, `Provisioning`), which
are validated when they are made, so the CLI reports a bad value before any work starts.

The image's own programs (useradd, package managers, `--run` commands) run in a throwaway machine with
a private user namespace (`veneer.images.buildbox`), never as host root: a tarball, directory or
registry image is untrusted input. Nothing is mounted on the host, so a failed or killed build leaves
nothing behind but the staging directory. debootstrap's second stage (the packages' maintainer scripts)
runs in that machine too; pacstrap runs its packages' install scripts as host root, with packages from
the repositories the host's pacman.conf trusts: see the README's "Security model".
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from veneer.config.layout import Layout
from veneer.errors import ImageError, UsageError
from veneer.images import transfer
from veneer.images.buildbox import BuildBox
from veneer.images.distros import (
    CommandRunner,
    Distribution,
    arch,
    busybox,
    debian,
    has_systemd,
    installer_for,
    tree_path,
    write_tree_text,
)
from veneer.util.proc import run
from veneer.util.progress import QUIET, Progress

logger = logging.getLogger(__name__)

# Empty regular files every image has where it has nothing else, so that systemd-nspawn can bind-mount
# the host's file (or its own) over them without creating them in a machine's upper dir.
PLACEHOLDERS: Final = ("etc/resolv.conf", "etc/localtime")

# Files that identify one machine: an image never carries the build host's (PRODUCT.md, Identity).
IDENTITY_FILES: Final = (
    "etc/hostname",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret",
)
IDENTITY_GLOBS: Final = (("etc/ssh", "ssh_host_*"),)
# What package managers downloaded: stale the day after, and tens of MiB. `apt-get update` and
# `pacman -Sy` fetch them again.
CACHE_GLOBS: Final = (
    ("var/lib/apt/lists", "*"),
    ("var/cache/apt", "*.bin"),
    ("var/cache/apt/archives", "*.deb"),
    ("var/cache/pacman/pkg", "*"),
    ("var/lib/pacman/sync", "*"),
)

_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LOCALE_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)?(@[A-Za-z0-9_]+)?")
_TIMEZONE_RE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
_UNIT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9:_.@\\-]*")
_PACKAGE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9@+._:=~<>/-]*")
_SUITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class SourceKind(enum.StrEnum):
    """Where an image's root filesystem comes from; the values are the CLI spellings."""

    BUSYBOX = "busybox"
    DEBOOTSTRAP = "debootstrap"
    PACSTRAP = "pacstrap"
    DIR = "from-dir"
    TAR = "from-tar"

    def distribution(self) -> Distribution | None:
        """The distribution this source makes; None when it is read from the tree's os-release."""
        return {
            SourceKind.BUSYBOX: Distribution.BUSYBOX,
            SourceKind.DEBOOTSTRAP: Distribution.DEBIAN,
            SourceKind.PACSTRAP: Distribution.ARCH,
        }.get(self)

    def takes_path(self) -> bool:
        """Whether the source is an existing directory or archive."""
        return self in (SourceKind.DIR, SourceKind.TAR)

    def installs_packages(self) -> bool:
        """Whether the bootstrap itself installs the packages asked for, with no later step."""
        return self in (SourceKind.DEBOOTSTRAP, SourceKind.PACSTRAP)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserSpec:
    """A user to add: `NAME[:GROUP[,GROUP...]]`; the first group is the primary one."""

    name: str
    group: str | None = None
    groups: tuple[str, ...] = ()


def parse_user(text: str) -> UserSpec:
    """Parse `NAME[:GROUP,...]` as `useradd -m -g GROUP -G REST NAME` understands it."""
    name, colon, group_list = text.partition(":")
    groups = group_list.split(",") if colon else []
    for value in [name, *groups]:
        if not _NAME_RE.fullmatch(value):
            raise UsageError(
                f"Invalid user '{text}'",
                hint="Use NAME or NAME:GROUP[,GROUP...] with lowercase names (e.g. kang:wheel,audio).",
            )
    return UserSpec(name=name, group=groups[0] if groups else None, groups=tuple(groups[1:]))


def _check_values(what: str, values: Sequence[str], pattern: re.Pattern[str], example: str) -> None:
    for value in values:
        if not pattern.fullmatch(value):
            raise UsageError(f"Invalid {what} '{value}'", hint=f"Use a name such as {example}.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Provisioning:
    """What to set up in a tree after the bootstrap, in this order: packages, locale, time zone, users,
    enabled units, then commands (each run as `/bin/sh -c COMMAND` inside the tree)."""

    users: tuple[str, ...] = ()
    locale: str | None = None
    timezone: str | None = None
    enable: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    run: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for user in self.users:
            parse_user(user)
        if self.locale is not None:
            _check_values("locale", [self.locale], _LOCALE_RE, "en_US.UTF-8")
        if self.timezone is not None:
            _check_values("time zone", [self.timezone], _TIMEZONE_RE, "UTC or Europe/Paris")
        _check_values("unit", self.enable, _UNIT_RE, "systemd-networkd")
        _check_values("package", self.packages, _PACKAGE_RE, "vim")
        if any(not command.strip() for command in self.run):
            raise UsageError("Empty command to run in the image", hint="Pass a shell command line.")

    def describe(self) -> str:
        """The settings in one line ("" if there are none)."""
        parts = []
        if self.packages:
            parts.append(f"packages {','.join(self.packages)}")
        if self.locale:
            parts.append(f"locale {self.locale}")
        if self.timezone:
            parts.append(f"timezone {self.timezone}")
        if self.users:
            parts.append(f"users {' '.join(self.users)}")
        if self.enable:
            parts.append(f"enable {','.join(self.enable)}")
        if self.run:
            parts.append(f"run {len(self.run)} command{'s' if len(self.run) > 1 else ''}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildSpec:
    """How to make an image's root filesystem.

    Attributes:
        suite, mirror, variant: debootstrap only (variant: minbase (default), buildd or standard).
        packages: pacstrap only, the packages to bootstrap (default: base).
        path: from-dir and from-tar only, the directory or archive.
        pacman_conf: pacstrap only, the pacman.conf naming the repositories (default: the host's).
    """

    source: SourceKind
    suite: str | None = None
    mirror: str | None = None
    variant: str | None = None
    packages: tuple[str, ...] = ()
    path: Path | None = None
    pacman_conf: Path | None = None
    provisioning: Provisioning = dataclasses.field(default_factory=Provisioning)

    def __post_init__(self) -> None:
        src = self.source
        if src is SourceKind.DEBOOTSTRAP:
            if not self.suite:
                raise UsageError("debootstrap needs a suite", hint="Name one, e.g. --debootstrap bookworm.")
            _check_values("suite", [self.suite], _SUITE_RE, "bookworm")
            if self.mirror is not None and (
                "://" not in self.mirror
                or self.mirror.startswith("-")
                or any(c.isspace() for c in self.mirror)
            ):
                raise UsageError(f"Invalid mirror '{self.mirror}'", hint="Pass the URL of a Debian mirror.")
            debian.check_variant(self.variant or debian.DEFAULT_VARIANT)
        else:
            for option, value in (("suite", self.suite), ("mirror", self.mirror), ("variant", self.variant)):
                if value is not None:
                    raise UsageError(f"{src} takes no {option}", hint="Only debootstrap takes one.")
        if src is SourceKind.PACSTRAP:
            _check_values("package", self.packages, _PACKAGE_RE, "base")
        elif self.packages or self.pacman_conf is not None:
            raise UsageError(
                f"{src} takes no pacstrap packages or pacman.conf",
                hint="Use --packages to add packages to the image.",
            )
        if src.takes_path() != (self.path is not None):
            raise UsageError(
                f"{src} needs a path" if src.takes_path() else f"{src} takes no path",
                hint="Pass the directory or archive that holds the root filesystem.",
            )
        if src is SourceKind.BUSYBOX:
            prov = self.provisioning
            for asked, what in (
                (prov.packages, "packages"),
                (prov.locale, "a locale"),
                (prov.timezone, "a time zone"),
                (prov.enable, "systemd units"),
            ):
                if asked:
                    raise UsageError(
                        f"Busybox images cannot have {what}",
                        hint="Build the image with --debootstrap or --pacstrap instead.",
                    )

    def describe(self) -> str:
        """One line recorded as the origin of the image's first layer."""
        match self.source:
            case SourceKind.BUSYBOX:
                text = "busybox"
            case SourceKind.DEBOOTSTRAP:
                text = f"debootstrap {self.suite} ({self.variant or debian.DEFAULT_VARIANT})"
                if self.mirror:
                    text += f" from {self.mirror}"
            case SourceKind.PACSTRAP:
                text = f"pacstrap {' '.join(self.packages or arch.DEFAULT_PACKAGES)}"
                if self.pacman_conf:
                    text += f" (pacman.conf {self.pacman_conf})"
            case SourceKind.DIR | SourceKind.TAR:
                text = f"{self.source} {self.path}"
        provisioning = self.provisioning.describe()
        return f"{text} + {provisioning}" if provisioning else text


def build_tree(spec: BuildSpec, tree: Path, *, layout: Layout, progress: Progress = QUIET) -> None:
    """Fill the empty directory `tree` with the root filesystem `spec` describes.

    Bootstrap, provision, then scrub the build host's identity. On failure `tree` is left as it is:
    the caller removes its staging directory.

    Args:
        layout: the store whose runtime dir holds the build's uid range reservation.
        progress: where the phases of the build and the package managers' counts are reported; the
            output of the commands run is logged at debug level and its end kept for error messages.
    """
    if not tree.is_dir() or any(tree.iterdir()):
        raise ImageError(f"Cannot build an image in '{tree}': not an empty directory")
    provisioning = spec.provisioning
    with BuildBox(layout, tree) as box:
        bootstrap_tree(spec, tree, runner=box, progress=progress)
        if spec.source.installs_packages():
            provisioning = dataclasses.replace(provisioning, packages=())
        distribution = spec.source.distribution() or Distribution.detect(tree)
        logger.debug("Provisioning '%s' as %s", tree, distribution or "an unknown distribution")
        provision_tree(tree, provisioning, distribution=distribution, runner=box, progress=progress)
    scrub_identity(tree)


def bootstrap_tree(
    spec: BuildSpec, tree: Path, *, runner: CommandRunner, progress: Progress = QUIET
) -> None:
    """Make the bare root filesystem of `spec` in the empty directory `tree`.

    Debootstrap and pacstrap also install the packages the provisioning asks for, and those its locale
    needs, so that no second package manager run is needed. debootstrap's second stage, which runs the
    packages' maintainer scripts, runs through `runner`.
    """
    prov = spec.provisioning
    extra = [*prov.packages]
    if prov.locale and (distribution := spec.source.distribution()):
        extra += distribution.installer().locale_packages(prov.locale)
    match spec.source:
        case SourceKind.BUSYBOX:
            busybox.bootstrap(tree, progress=progress)
        case SourceKind.DEBOOTSTRAP:
            assert spec.suite is not None
            debian.bootstrap(
                tree,
                suite=spec.suite,
                mirror=spec.mirror,
                variant=spec.variant,
                packages=extra,
                runner=runner,
                progress=progress,
            )
        case SourceKind.PACSTRAP:
            packages = list(dict.fromkeys([*(spec.packages or arch.DEFAULT_PACKAGES), *extra]))
            arch.bootstrap(tree, packages=packages, pacman_conf=spec.pacman_conf, progress=progress)
        case SourceKind.DIR:
            assert spec.path is not None
            if spec.path.is_dir():  # else copy_tree says what is wrong, alone
                progress.phase(f"Copying '{spec.path.name}'")
            transfer.copy_tree(spec.path, tree)
        case SourceKind.TAR:
            assert spec.path is not None
            transfer.extract_tar(spec.path, tree, progress=progress)


def provision_tree(
    tree: Path,
    provisioning: Provisioning,
    *,
    distribution: Distribution | None,
    runner: CommandRunner,
    progress: Progress = QUIET,
) -> None:
    """Apply `provisioning` to the tree of `distribution` (None: unknown, only generic steps work); the
    tree's own programs run through `runner`."""
    installer = installer_for(distribution)
    if provisioning.packages:
        installer.install_packages(tree, provisioning.packages, runner=runner, progress=progress)
    if provisioning.locale:
        installer.setup_locale(tree, provisioning.locale, runner=runner, progress=progress)
    if provisioning.timezone:
        set_timezone(tree, provisioning.timezone)
    for text in provisioning.users:
        user = parse_user(text)
        progress.phase(f"Adding user '{user.name}'")
        installer.add_user(tree, name=user.name, group=user.group, groups=user.groups, runner=runner)
    if provisioning.enable:
        progress.phase(f"Enabling {', '.join(provisioning.enable)}")
        enable_units(tree, provisioning.enable)
    for command in provisioning.run:
        progress.phase(f"Running '{command}' in the image")
        # The host's network: commands like these install packages (see veneer.images.buildbox).
        runner(["/bin/sh", "-c", command], network=True)


def set_timezone(tree: Path, timezone: str) -> None:
    """Point /etc/localtime at the tree's zoneinfo file for `timezone` (which must exist)."""
    zone = tree / "usr/share/zoneinfo" / timezone
    if not zone.is_file():
        raise ImageError(
            f"Time zone '{timezone}' is not in the image",
            hint="Use a name from the image's /usr/share/zoneinfo (package tzdata), such as UTC.",
        )
    localtime = tree_path(tree, "etc/localtime", create_parents=True)
    if os.path.lexists(localtime):
        localtime.unlink()
    localtime.symlink_to(f"../usr/share/zoneinfo/{timezone}")
    if (tree / "etc/timezone").is_file():
        # Debian's tzdata still reads /etc/timezone; keep the two in agreement.
        write_tree_text(tree, "etc/timezone", f"{timezone}\n")


def systemctl_enable_argv(tree: Path, units: Sequence[str]) -> list[str]:
    """The host's `systemctl` enabling `units` in the tree: it only makes symlinks, offline."""
    return ["systemctl", f"--root={os.fspath(tree)}", "enable", "--", *units]


def enable_units(tree: Path, units: Sequence[str]) -> None:
    """Enable systemd `units` in the tree."""
    if not has_systemd(tree):
        raise ImageError(
            f"Cannot enable {', '.join(units)}: the image has no systemd", hint="Leave out --enable."
        )
    run(systemctl_enable_argv(tree, units), capture=True)


def _real_dir(tree: Path, relative: str) -> Path | None:
    """`tree/relative` if it and every parent in the tree are directories and not symlinks, else None."""
    path = tree
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path


def _remove_matching(directory: Path, pattern: str) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            if fnmatch.fnmatchcase(entry.name, pattern) and not entry.is_dir(follow_symlinks=False):
                logger.debug("Removing '%s'", entry.path)
                os.unlink(entry.path)


def _make_empty(path: Path, *, mode: int) -> None:
    """Make `path` an empty regular file with `mode`, replacing whatever (not a directory) is there."""
    if os.path.lexists(path):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    os.close(fd)
    os.chmod(path, mode)


def scrub_identity(tree: Path) -> None:
    """Remove what identifies the build host or one machine from the tree, and the package caches.

    Nothing is followed through a symlink: a tree may hold links that point into the host when seen
    from outside (`etc/ssh -> /etc/ssh`).
    """
    etc = _real_dir(tree, "etc")
    if etc is None:
        if os.path.lexists(tree / "etc"):
            logger.warning("'%s/etc' is not a directory, not scrubbing it, ignoring.", tree)
            return
        etc = tree / "etc"
        etc.mkdir(mode=0o755)
    for relative in IDENTITY_FILES:
        parent = _real_dir(tree, os.path.dirname(relative))
        path = tree / relative
        if parent is not None and os.path.lexists(path) and not (path.is_dir() and not path.is_symlink()):
            logger.debug("Removing '%s'", path)
            path.unlink()
    for relative, pattern in (*IDENTITY_GLOBS, *CACHE_GLOBS):
        directory = _real_dir(tree, relative)
        if directory is not None:
            _remove_matching(directory, pattern)
    # Empty, not missing: systemd and nspawn treat an empty machine-id as "not set yet" and give each
    # machine its own at first boot, and the file stays there for a read-only bind mount.
    machine_id = etc / "machine-id"
    if os.path.lexists(machine_id) and machine_id.is_dir() and not machine_id.is_symlink():
        raise ImageError(f"'{machine_id}' is a directory", hint="Remove it from the image.")
    _make_empty(machine_id, mode=0o444)
    dbus = _real_dir(tree, "var/lib/dbus")
    if dbus is not None and not os.path.lexists(dbus / "machine-id"):
        # D-Bus reads /etc/machine-id first; the link keeps old readers of its own copy in agreement.
        (dbus / "machine-id").symlink_to("/etc/machine-id")
    resolv = etc / "resolv.conf"
    if os.path.lexists(resolv) and not resolv.is_symlink() and resolv.is_file():
        # debootstrap and nspawn copy the host's; a symlink (into /run) carries nothing of the host.
        _make_empty(resolv, mode=0o644)
    for relative in PLACEHOLDERS:
        parent = _real_dir(tree, os.path.dirname(relative))
        if parent is not None and not os.path.lexists(tree / relative):
            _make_empty(tree / relative, mode=0o644)
