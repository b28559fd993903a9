"""Arch Linux images (and derivatives, through os-release ID_LIKE): pacstrap and pacman.

`pacstrap -c` makes the tree, as the how-to does, with the host's package cache. The how-to's `-d`
(allow a non-mountpoint) is gone from arch-install-scripts: pacstrap no longer checks for a mountpoint
and rejects the flag. pacstrap mounts /proc, /sys, /dev, /run and /tmp inside the tree and unmounts them
from an EXIT trap, which does not run if it is killed; so it runs in a private mount namespace of its
own (`unshare --mount`), where its mounts die with it and never reach the host's.

Imports `veneer.images.distros` for the base class; must not import `veneer.images.bootstrap`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from veneer.errors import CommandFailed, ImageError
from veneer.images.distros import CommandRunner, DistributionInstaller, generate_locale, write_tree_text
from veneer.util.proc import run
from veneer.util.progress import QUIET, Progress, Unit

logger = logging.getLogger(__name__)

DEFAULT_PACKAGES = ("base",)
HOST_MIRRORLIST = Path("/etc/pacman.d/mirrorlist")


class ArchInstaller(DistributionInstaller):
    os_ids: ClassVar[tuple[str, ...]] = ("arch", "archlinux")

    @classmethod
    def pretty_name(cls) -> str:
        return "Arch Linux"

    @classmethod
    def install_packages(
        cls, tree: Path, packages: Sequence[str], *, runner: CommandRunner, progress: Progress = QUIET
    ) -> None:
        text = f"Installing {', '.join(packages)}"
        progress.phase(text, unit=Unit.PACKAGES)
        runner(install_argv(packages), network=True, on_line=PacmanProgress(progress, text))

    @classmethod
    def setup_locale(
        cls, tree: Path, locale: str, *, runner: CommandRunner, progress: Progress = QUIET
    ) -> None:
        progress.phase(f"Generating locale {locale}")
        generate_locale(tree, locale, runner=runner)
        write_tree_text(tree, "etc/locale.conf", f"LANG={locale}\n")


def install_argv(packages: Sequence[str]) -> list[str]:
    """The pacman command, run inside the tree, that installs `packages` after refreshing its databases."""
    return ["pacman", "--sync", "--refresh", "--needed", "--noconfirm", "--", *packages]


def pacstrap_argv(
    tree: Path, *, packages: Sequence[str], pacman_conf: Path | None, copy_mirrorlist: bool
) -> list[str]:
    """The pacstrap command line that installs `packages` (default: base) into `tree`."""
    argv = ["unshare", "--mount", "--propagation=private", "pacstrap", "-c"]
    if not copy_mirrorlist:
        # pacstrap copies the host's mirrorlist into the tree unless told not to; hosts that are not Arch
        # have none, and cp would complain.
        argv.append("-M")
    if pacman_conf is not None:
        argv += ["-C", os.fspath(pacman_conf)]
    return [*argv, os.fspath(tree), *(packages or DEFAULT_PACKAGES)]


def bootstrap(
    tree: Path, *, packages: Sequence[str], pacman_conf: Path | None, progress: Progress = QUIET
) -> None:
    """Fill the empty directory `tree` with `packages` from the repositories of `pacman_conf`.

    pacman's "(3/130) installing bash" lines become `progress` reports; its last lines are kept for
    the error.
    """
    if pacman_conf is not None and not pacman_conf.is_file():
        raise ImageError(f"No pacman configuration at '{pacman_conf}'", hint="Pass an existing pacman.conf.")
    argv = pacstrap_argv(
        tree, packages=packages, pacman_conf=pacman_conf, copy_mirrorlist=HOST_MIRRORLIST.is_file()
    )
    logger.debug("Bootstrapping Arch Linux into '%s'", tree)
    text = "Bootstrapping Arch Linux"
    progress.phase(text, unit=Unit.PACKAGES)
    try:
        run(argv, on_line=PacmanProgress(progress, text))
    except CommandFailed as e:
        raise ImageError(
            f"pacstrap failed: {e.message}",
            hint="Check the package names, and the repositories and SigLevel of the pacman.conf "
            "(signed packages need a pacman keyring: pacman-key --init, then pacman-key --populate).",
        ) from e


# pacman's "(  3/130) installing bash" (or "upgrading", "reinstalling") counts its packages out of a total.
_PACMAN_STEP = re.compile(r"\(\s*(\d+)/(\d+)\) (?:installing|upgrading|reinstalling) (\S+)")


class PacmanProgress:
    """pacman's output lines as a package count under the phase `text`."""

    def __init__(self, progress: Progress, text: str) -> None:
        self._progress = progress
        self._text = text
        self._total = 0

    def __call__(self, line: str) -> None:
        logger.debug("%s", line)
        if step := _PACMAN_STEP.match(line.strip()):
            done, total, package = int(step.group(1)), int(step.group(2)), step.group(3)
            if total != self._total:
                self._total = total
                self._progress.phase(self._text, total=total, unit=Unit.PACKAGES)
            self._progress.advance(done, item=package.rstrip("."))
