"""Exporting a stopped machine: its merged tree (its image revision plus its own writes) as a rootfs
tarball, or its layers and upper dir as a systemd `.mstack` directory.

The tar, overlay and mstack mechanics are `images.export`'s and `images.mstack`'s; this module adds the
machine's lock and uid range.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import MachineBusy
from veneer.images.export import merged_view, replacing, write_rootfs_tar
from veneer.images.mstack import MstackOwner, write_mstack
from veneer.images.store import load_image, lower_dirs
from veneer.machines.recovery import machine_lock
from veneer.machines.state import load_machine
from veneer.machines.upper import check_upper
from veneer.overlay.mount import is_mounted
from veneer.util.progress import QUIET, Progress

logger = logging.getLogger(__name__)


class MachineExportFormat(StrEnum):
    """What `veneer export --format` writes."""

    TAR = "tar"
    MSTACK = "mstack"


def export_machine(
    layout: Layout,
    name: MachineName,
    dest: Path,
    *,
    fmt: MachineExportFormat = MachineExportFormat.TAR,
    owner: MstackOwner = MstackOwner.FOREIGN,
    progress: Progress = QUIET,
) -> None:
    """A stopped machine's merged tree (its image revision plus its own changes) as a rootfs tarball, or
    its image layers and upper dir as an mstack directory owned as `owner` says."""
    # The machine's lock keeps it from starting while its upper dir serves as a lower layer here.
    with machine_lock(layout, name):
        record = load_machine(layout, name)
        if is_mounted(layout.machine_root(name)):
            raise MachineBusy(
                f"Machine '{name}' is mounted or running",
                hint=f"Stop it first ('veneer stop {name}'), or unmount it ('veneer umount {name}').",
            )
        check_upper(layout, name)  # tar walks it all
        image = load_image(layout, record.image)
        layers = lower_dirs(layout, image, record.revision)
        upper = layout.machine_upper(name)
        if fmt is MachineExportFormat.MSTACK:
            with replacing(dest.absolute(), directory=True) as tmp:
                write_mstack(layers, upper, tmp, uid_base=record.uid_base, owner=owner)
        else:
            with merged_view(layout, [*layers, upper], f"machine '{name}'") as root:
                write_rootfs_tar(root, dest.absolute(), uid_base=record.uid_base, progress=progress)
    logger.debug("Exported machine '%s' to '%s' (%s).", name, dest, fmt)
