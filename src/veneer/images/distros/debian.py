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
    write_tree_text,
)
from veneer.util.proc import run

logger = logging.getLogger(__name__)

DEFAULT_VARIANT = "minbase"
# debootstrap's own variants, plus "standard": no --variant, Priority required and important.
VARIANTS = ("minbase", "buildd", "standard")

# Machines boot with `systemd-nspawn --boot`, so the image needs an init: minbase has none. dbus lets
# machinectl, hostnamectl and friends talk to the machine's systemd.
BOOT_PACKAGES = ("systemd", "systemd-sysv", "dbus")

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


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
        cls, tree: Path, packages: Sequence[str], *, runner: CommandRunner, progress: bool = False
    ) -> None:
        logger.info("Installing %s", ", ".join(packages))
        for argv in install_argvs(packages):
            runner(argv, setenv=APT_ENV, network=True, progress=progress)

    @classmethod
    def setup_locale(cls, tree: Path, locale: str, *, runner: CommandRunner, progress: bool = False) -> None:
        missing = cls.locale_packages(locale)
        if missing and not has_command(tree, "locale-gen"):
            cls.install_packages(tree, missing, runner=runner, progress=progress)
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
    argv = ["debootstrap"]
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
    progress: bool = False,
) -> None:
    """Fill the empty directory `tree` with Debian `suite`, plus the boot packages and `packages`.

    With `progress` debootstrap's messages (on stderr) are shown; else they are kept for the error.
    """
    include = list(dict.fromkeys([*BOOT_PACKAGES, *packages]))
    argv = debootstrap_argv(tree, suite=suite, mirror=mirror, variant=variant, include=include)
    logger.info("Bootstrapping Debian %s into '%s'", suite, tree)
    try:
        run(argv, capture=not progress, passthrough=progress)
    except CommandFailed as e:
        # The caller removes the staging tree, and debootstrap's log with it: keep its last lines.
        log = tree / "debootstrap/debootstrap.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
        raise ImageError(
            f"debootstrap of '{suite}' failed: {e.message}" + "".join(f"\n  {line}" for line in tail),
            hint="Check the suite name, the mirror and the network.",
        ) from e
