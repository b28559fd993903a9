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
    read_tree_text,
    tree_path,
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
    progress: bool = False,
) -> None:
    """Fill the empty directory `tree` with Debian `suite`, plus the boot packages and `packages`.

    debootstrap's first stage runs on the host as root: it downloads the packages from the mirror, checks
    them against the suite's signed Release file and unpacks them, running none of their code. The second
    stage configures them, maintainer scripts and all, so it runs inside the tree through `runner` (a
    user-namespaced machine, no network: everything it needs was downloaded).

    With `progress` debootstrap's messages (on stderr) are shown; else they are kept for the error.
    """
    include = list(dict.fromkeys([*BOOT_PACKAGES, *packages]))
    argv = debootstrap_argv(tree, suite=suite, mirror=mirror, variant=variant, include=include)
    logger.info("Bootstrapping Debian %s into '%s'", suite, tree)
    try:
        run(argv, capture=not progress, passthrough=progress)
        proc = tree_path(tree, "proc")
        if proc.is_symlink():
            # The first stage links proc to the host's /proc; nspawn needs a directory to mount on (the
            # second stage would make the same one).
            proc.unlink()
            proc.mkdir(mode=0o555)
        logger.info("Configuring the packages of Debian %s in '%s'", suite, tree)
        # debootstrap checks the target with a test mknod, which no user namespace allows; in lxc mode it
        # skips that check and uses the devices it finds, which nspawn's /dev has.
        runner(["/debootstrap/debootstrap", "--second-stage"], setenv=SECOND_STAGE_ENV, progress=progress)
    except (CommandFailed, ImageError) as e:
        # The caller removes the staging tree, and debootstrap's log with it: keep its last lines.
        # Read without following symlinks: the second stage ran the packages' code in the tree.
        log = read_tree_text(tree, "debootstrap/debootstrap.log") or ""
        tail = log.strip().splitlines()[-5:]
        raise ImageError(
            f"debootstrap of '{suite}' failed: {e.message}" + "".join(f"\n  {line}" for line in tail),
            hint="Check the suite name, the mirror and the network.",
        ) from e
