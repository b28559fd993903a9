"""Debian images (and Ubuntu and other derivatives, through os-release ID_LIKE): debootstrap and apt.

`debootstrap` makes the tree; packages asked for at creation go into its `--include` list, so a new
image needs no second package manager run. Later installs (into imported trees) run apt-get inside
the tree, in the build's throwaway machine. No mirror is named here: without one, debootstrap uses its
own default.

Imports `veneer.images.distros` for the base class; must not import `veneer.images.bootstrap`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from veneer.errors import CommandFailed, ImageError, UsageError
from veneer.images.distros import (
    BUILTIN_LOCALES,
    CommandRunner,
    DistributionInstaller,
    generate_locale,
    has_command,
    read_tree_text,
    tree_path,
    write_tree_text,
)
from veneer.util.proc import run
from veneer.util.progress import QUIET, Progress, Unit

logger = logging.getLogger(__name__)

DEFAULT_VARIANT = "minbase"
# debootstrap's own variants, plus "standard": no --variant, Priority required and important.
VARIANTS = ("minbase", "buildd", "standard")

# Machines boot with `systemd-nspawn --boot`, so the image needs an init: minbase has none. dbus lets
# machinectl, hostnamectl and friends talk to the machine's systemd.
BOOT_PACKAGES = ("systemd", "systemd-sysv", "dbus")

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
SECOND_STAGE_ENV = {"container": "lxc"}


class DebianInstaller(DistributionInstaller):
    os_ids: ClassVar[tuple[str, ...]] = ("debian",)

    @classmethod
    def pretty_name(cls) -> str:
        return "Debian"

    @classmethod
    def locale_packages(cls, locale: str) -> tuple[str, ...]:
        return () if locale in BUILTIN_LOCALES else ("locales",)

    @classmethod
    def install_packages(
        cls, tree: Path, packages: Sequence[str], *, runner: CommandRunner, progress: Progress = QUIET
    ) -> None:
        text = f"Installing {', '.join(packages)}"
        progress.phase(text, unit=Unit.PACKAGES)
        for argv in install_argvs(packages):
            runner(argv, setenv=APT_ENV, network=True, on_line=AptProgress(progress, text))

    @classmethod
    def setup_locale(
        cls, tree: Path, locale: str, *, runner: CommandRunner, progress: Progress = QUIET
    ) -> None:
        missing = cls.locale_packages(locale)
        if missing and not has_command(tree, "locale-gen"):
            cls.install_packages(tree, missing, runner=runner, progress=progress)
        progress.phase(f"Generating locale {locale}")
        generate_locale(tree, locale, runner=runner)
        # Debian's systemd and pam_env read /etc/default/locale rather than /etc/locale.conf.
        write_tree_text(tree, "etc/default/locale", f"LANG={locale}\n")


def install_argvs(packages: Sequence[str]) -> list[list[str]]:
    """The apt-get commands, run inside the tree, that install `packages` and drop what they downloaded."""
    return [
        ["apt-get", "update"],
        ["apt-get", "install", "--yes", "--no-install-recommends", "--", *packages],
        ["apt-get", "clean"],
    ]


def check_variant(variant: str) -> None:
    """Refuse a debootstrap variant veneer does not build."""
    if variant not in VARIANTS:
        raise UsageError(
            f"Unknown debootstrap variant '{variant}'", hint=f"Use one of: {', '.join(VARIANTS)}."
        )


def debootstrap_argv(
    tree: Path, *, suite: str, mirror: str | None, variant: str | None, include: Sequence[str]
) -> list[str]:
    """The debootstrap command line that makes a Debian tree of `suite` in `tree`."""
    variant = variant or DEFAULT_VARIANT
    check_variant(variant)
    # The first stage only: download, check and unpack; the second, which runs the packages' maintainer
    # scripts, runs inside the tree in the build's throwaway machine (see `bootstrap`).
    argv = ["debootstrap", "--foreign"]
    if variant != "standard":
        argv.append(f"--variant={variant}")
    if include:
        argv.append(f"--include={','.join(include)}")
    argv += [suite, os.fspath(tree)]
    if mirror:
        argv.append(mirror)
    return argv


def bootstrap(
    tree: Path,
    *,
    suite: str,
    mirror: str | None,
    variant: str | None,
    packages: Sequence[str],
    runner: CommandRunner,
    progress: Progress = QUIET,
) -> None:
    """Fill the empty directory `tree` with Debian `suite`, plus the boot packages and `packages`.

    debootstrap's first stage runs on the host as root: it downloads the packages from the mirror, checks
    them against the suite's signed Release file and unpacks them, running none of their code. The second
    stage configures them, maintainer scripts and all, so it runs inside the tree through `runner` (a
    user-namespaced machine, no network: everything it needs was downloaded).

    debootstrap's `I:` lines become `progress` reports; the last of them are kept for the error.
    """
    include = list(dict.fromkeys([*BOOT_PACKAGES, *packages]))
    argv = debootstrap_argv(tree, suite=suite, mirror=mirror, variant=variant, include=include)
    logger.debug("Bootstrapping Debian %s into '%s'", suite, tree)
    progress.phase(f"Bootstrapping Debian {suite}", unit=Unit.PACKAGES)
    lines = DebootstrapProgress(progress, tree)
    try:
        run(argv, on_line=lines)
        proc = tree_path(tree, "proc")
        if proc.is_symlink():
            # The first stage links proc to the host's /proc; nspawn needs a directory to mount on (the
            # second stage would make the same one).
            proc.unlink()
            proc.mkdir(mode=0o555)
        # debootstrap checks the target with a test mknod, which no user namespace allows; in lxc mode it
        # skips that check and uses the devices it finds, which nspawn's /dev has.
        runner(["/debootstrap/debootstrap", "--second-stage"], setenv=SECOND_STAGE_ENV, on_line=lines)
    except (CommandFailed, ImageError) as e:
        # The caller removes the staging tree, and debootstrap's log with it: keep its last lines.
        # Read without following symlinks: the second stage ran the packages' code in the tree.
        log = read_tree_text(tree, "debootstrap/debootstrap.log") or ""
        tail = log.strip().splitlines()[-5:]
        raise ImageError(
            f"debootstrap of '{suite}' failed: {e.message}" + "".join(f"\n  {line}" for line in tail),
            hint="Check the suite name, the mirror and the network.",
        ) from e


# debootstrap's per-package lines: "I: Retrieving bash 5.2.15-2" (a version; "I: Retrieving Packages"
# has none), "I: Extracting bash...", and in the second stage "I: Unpacking libc6:amd64...", "I:
# Configuring bash...". Its other lines ("I: Unpacking the base system...") name steps, not packages.
_DEBOOTSTRAP_RETRIEVED = re.compile(r"I: (Retrieving) ([^\s:]+) \S+")
_DEBOOTSTRAP_PACKAGE = re.compile(r"I: (Extracting|Unpacking|Configuring) ([^\s:]+)\S*\.\.\.")


class DebootstrapProgress:
    """debootstrap's output lines, both stages, as phases and package counts.

    debootstrap names no total before it downloads. Then it writes the lists of the packages it
    extracts (`debootstrap/required`) and of those the second stage unpacks and configures too
    (`debootstrap/base`) into the tree: the totals of the later phases. The second stage unpacks and
    configures the required packages, then the rest: each action keeps its count across the switches.
    """

    def __init__(self, progress: Progress, tree: Path) -> None:
        self._progress = progress
        self._tree = tree
        self._action = ""
        self._done: dict[str, int] = {}

    def _listed(self, *lists: str) -> int | None:
        # Read without following symlinks: in the second stage the packages' code has run in the tree.
        names = {word for name in lists for word in (read_tree_text(self._tree, name) or "").split()}
        return len(names) or None

    def __call__(self, line: str) -> None:
        logger.debug("%s", line)
        line = line.strip()
        match = _DEBOOTSTRAP_RETRIEVED.fullmatch(line) or _DEBOOTSTRAP_PACKAGE.fullmatch(line)
        if match is None:
            return
        action, package = match.groups()
        if action != self._action:
            self._action = action
            if action == "Retrieving":
                total = None
            elif action == "Extracting":
                total = self._listed("debootstrap/required")
            else:
                total = self._listed("debootstrap/required", "debootstrap/base")
            self._progress.phase(f"{action} packages", total=total, unit=Unit.PACKAGES)
        self._done[action] = done = self._done.get(action, 0) + 1
        self._progress.advance(done, item=package)


# apt-get's lines: "0 upgraded, 5 newly installed, ..." names the total; "Setting up hello (2.10-3) ..."
# ends each package.
_APT_TOTAL = re.compile(r"\d+ upgraded, (\d+) newly installed")
_APT_DONE = re.compile(r"Setting up (\S+) ")


class AptProgress:
    """apt-get's output lines as a package count under the phase `text`."""

    def __init__(self, progress: Progress, text: str) -> None:
        self._progress = progress
        self._text = text
        self._done = 0

    def __call__(self, line: str) -> None:
        logger.debug("%s", line)
        if total := _APT_TOTAL.match(line):
            self._progress.phase(self._text, total=int(total.group(1)) or None, unit=Unit.PACKAGES)
        elif done := _APT_DONE.match(line):
            self._done += 1
            self._progress.advance(self._done, item=done.group(1))
