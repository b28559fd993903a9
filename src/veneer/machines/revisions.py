"""New image revisions from a command or a machine: update, commit, squash; rollback and prune.

A layer made from a machine is its upper dir, copied, with ownership moved from the machine's uid range
back to real ids (layers hold real uids), overlayfs' private attributes other than opacity removed, and
the machine's identity (machine-id, host keys) left out. `update` runs its command in a throwaway machine
over the image's current revision, so it gets the same isolation and networking as any machine, and a
failed or interrupted update publishes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import DEFAULT_NETWORK, ImageName, MachineName, Network, parse_machine_name
from veneer.errors import ImageError, MachineNotFound
from veneer.images.identity import identifies_machine
from veneer.images.store import (
    ImageRecord,
    add_image_from_revision,
    add_revision,
    load_image,
    lower_dirs,
    prune_revisions,
    set_current,
)
from veneer.images.transfer import copy_tree
from veneer.machines.idshift import shift_ownership
from veneer.machines.lifecycle import create_machine, remove_machine
from veneer.machines.recovery import machine_lock, refuse_if_running
from veneer.machines.run import RunOptions, run_machine
from veneer.machines.snapshots import snapshot_revisions
from veneer.machines.state import list_machine_names, load_machine, process_start_time
from veneer.machines.upper import check_upper
from veneer.overlay.layers import OPAQUE_XATTR, OVERLAY_XATTR_PREFIX
from veneer.overlay.mount import mount_overlay, unmount
from veneer.rebase.journal import pinned_revisions
from veneer.util.fs import random_hex, remove_tree
from veneer.util.progress import QUIET, Progress

logger = logging.getLogger(__name__)


def layer_from_upper(upper: Path, tree: Path, *, uid_base: int | None) -> None:
    """Fill the empty layer `tree` with a machine's upper dir, in the image's terms (see module doc)."""
    copy_tree(upper, tree, allow_whiteouts=True)
    if uid_base is not None:
        shift_ownership(tree, uid_base, 0)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if identifies_machine(os.path.relpath(path, tree)):
                remove_tree(path)
                continue
            with contextlib.suppress(OSError):
                for attr in os.listxattr(path, follow_symlinks=False):
                    if attr.startswith(OVERLAY_XATTR_PREFIX) and attr != OPAQUE_XATTR:
                        os.removexattr(path, attr, follow_symlinks=False)
        dirnames[:] = [d for d in dirnames if Path(dirpath, d).is_dir()]


def update_image(
    layout: Layout,
    name: str,
    command: Sequence[str],
    *,
    network: Network = DEFAULT_NETWORK,
    options: RunOptions | None = None,
    progress: Progress = QUIET,
) -> ImageRecord:
    """Run `command` over the image's current revision and publish what it changed as the next revision."""
    image = load_image(layout, name)
    temp = parse_machine_name(f"upd-{random_hex(4)}")
    me = os.getpid()
    create_machine(
        layout,
        temp,
        image.name,
        revision=image.current,
        network=network,
        owner=(me, process_start_time(me) or 0),
    )
    try:
        status = run_machine(layout, temp, command, options or RunOptions())
        if status != 0:
            raise ImageError(
                f"Failed to update image '{name}': '{shlex.join(command)}' exited with status {status}",
                hint=f"Nothing changed: the image is still at revision {image.current}. Fix it and retry.",
            )
        record = load_machine(layout, temp)
        check_upper(layout, temp)
        progress.phase(f"Saving what '{shlex.join(command)}' changed as a new revision of '{name}'")
        return add_revision(
            layout,
            name,
            parent=record.revision,
            command=shlex.join(command),
            build=lambda tree, _scratch: layer_from_upper(
                layout.machine_upper(temp), tree, uid_base=record.uid_base
            ),
        )
    finally:
        with contextlib.suppress(MachineNotFound):
            remove_machine(layout, temp, retire_range=bool(options and options.binds))


def commit_machine(
    layout: Layout, name: MachineName, image_name: ImageName | None = None, *, as_revision: bool = False
) -> ImageRecord:
    """Turn what a stopped machine changed into a new image on top of its base revision, or (with
    `as_revision`) into the next revision of its own image. The machine itself is left as it is."""
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        check_upper(layout, name)
        record = load_machine(layout, name)
        command = f"commit of machine '{name}'"

        def build(tree: Path, _scratch: Path) -> None:
            layer_from_upper(layout.machine_upper(name), tree, uid_base=record.uid_base)

        if as_revision:
            return add_revision(layout, record.image, parent=record.revision, command=command, build=build)
        if image_name is None:
            raise ImageError("No name for the new image", hint="Name it: 'veneer commit MACHINE IMAGE'.")
        return add_image_from_revision(
            layout, image_name, source=record.image, parent=record.revision, command=command, build=build
        )


def squash_image(layout: Layout, name: str, *, progress: Progress = QUIET) -> ImageRecord:
    """Flatten the current revision's layers into one new layer, published as the next revision; a
    current revision of one layer is left as it is (squash is repeatable)."""
    image = load_image(layout, name)
    lowers = lower_dirs(layout, image, image.current)
    if len(lowers) == 1:
        return image
    progress.phase(f"Flattening the {len(lowers)} layers of revision {image.current} of '{name}'")

    def flatten(tree: Path, scratch: Path) -> None:
        # Read through the kernel's own overlay (no upper is written): whiteouts and opaque dirs are
        # resolved exactly as machines see them.
        root, upper, work = scratch / "root", scratch / "upper", scratch / "work"
        for path in (root, upper, work):
            path.mkdir()
        mount_overlay(lowers, root, upper=upper, work=work, uid_base=None, scratch=scratch / "idmap")
        try:
            copy_tree(root, tree)
        finally:
            unmount(root)

    return add_revision(
        layout,
        name,
        parent=image.current,
        command=f"squash of revision {image.current}",
        build=flatten,
        flatten=True,
    )


def rollback_image(layout: Layout, name: str, to: int | None = None) -> ImageRecord:
    """Make an earlier revision current: new machines and rebases get it; machines stay where they are."""
    image = load_image(layout, name)
    if to is None:
        below = [r.number for r in image.revisions if r.number < image.current]
        if not below:
            raise ImageError(
                f"Image '{name}' has no revision before {image.current}",
                hint=f"See its revisions with 'veneer image show {name}' and pass --to REV.",
            )
        to = max(below)
    return set_current(layout, name, to)


def revisions_in_use(layout: Layout) -> set[tuple[str, int]]:
    """(image, revision) pairs a machine stands on, that a machine's last rebase may go back to, or that
    a snapshot was taken on (its restore goes back to it)."""
    used = snapshot_revisions(layout)
    for machine in list_machine_names(layout):
        with contextlib.suppress(MachineNotFound):
            record = load_machine(layout, machine)
            used.add((record.image, record.revision))
            used |= pinned_revisions(layout.machine_dir(machine))
    return used


def prune_image(layout: Layout, name: str) -> list[int]:
    """Drop the revisions of an image that are not current and that no machine needs."""
    dropped = prune_revisions(layout, name, in_use=lambda: revisions_in_use(layout))
    if dropped:
        logger.info("Pruned revisions %s of image '%s'.", ", ".join(map(str, dropped)), name)
    return dropped
