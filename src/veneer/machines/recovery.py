"""Recovery: take a machine's lock, find out whether it still runs, and finish or forget what a crash cut
short (a boot or a run whose processes died, a rebase or its undo that was killed halfway).

Every verb calls this first, so what it reports and changes starts from the truth. Whatever ends a booted
machine (its own poweroff, `stop`, `kill`, or a kill -9 of nspawn or the console keeper), `end_boot` undoes
the start: it kills what is left in the machine's cgroups, removes them, unmounts the overlay and records
the exit status. It runs from the supervisor when nspawn ends (`veneer _reap`), from `stop`, and from
the next command that finds the machine dead (`recover_machine`).

This module builds on records (`machines.state`, `machines.uids`), network setup, cgroups, the
supervisor, the overlay, the rebase journal, the restore steps and the freezer only; it never imports the
verbs (lifecycle, run, boot, rebase, snapshots), which import it. The journal is loaded only when a
rebase is to be finished: every verb passes through here, and almost never finds one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import Error, MachineBusy, RebaseError
from veneer.images.store import load_image, lower_dirs
from veneer.machines import restoring
from veneer.machines.freeze import thaw_abandoned
from veneer.machines.netsetup import detach_machine
from veneer.machines.restoring import restore_interrupted
from veneer.machines.state import (
    ExitRecord,
    MachineRecord,
    RuntimeMode,
    RuntimeRecord,
    is_alive,
    load_machine,
    load_runtime,
    rebase_interrupted,
    remove_runtime,
    save_exit,
    save_machine,
)
from veneer.machines.uids import release_uid_range
from veneer.overlay.mount import is_mounted, mount_overlay, unmount
from veneer.runtime import cgroups
from veneer.runtime.supervisor import supervisor_for
from veneer.util.fs import locked, remove_tree
from veneer.util.staging import trash

if TYPE_CHECKING:
    from veneer.rebase.journal import Target

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def machine_lock(layout: Layout, name: MachineName) -> Iterator[None]:
    """Hold the machine's lock; if it is taken, say whether the machine is running or just busy."""
    load_machine(layout, name)
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(
                    locked(layout.machine_dir(name), what=f"Machine '{name}'", directory=True)
                )
            except FileNotFoundError:
                load_machine(layout, name)  # removed meanwhile: raises MachineNotFound
                raise
            load_machine(layout, name)  # still there now that it is ours
            if rebase_interrupted(layout.machine_dir(name)):
                resume_rebase(layout, name)
            if restore_interrupted(layout, name):
                resume_restore(layout, name)
            thaw_abandoned(layout, name)
            yield
    except MachineBusy:
        runtime = load_runtime(layout, name)
        if runtime is not None and is_alive(runtime):
            raise MachineBusy(
                f"Machine '{name}' is running (pid {runtime.pid})", hint=_running_hint(name, runtime)
            ) from None
        raise


def _running_hint(name: MachineName, runtime: RuntimeRecord) -> str:
    if runtime.mode is RuntimeMode.BOOT:
        # What a newcomer tries `run` for on a started machine is what `exec` does.
        return f"Stop it first ('veneer stop {name}'), or run a command in it: 'veneer exec {name} -- CMD'."
    return f"Stop it first ('veneer stop {name}'), or wait for its command to finish."


def refuse_if_running(layout: Layout, name: MachineName) -> None:
    recover_machine(layout, name)
    runtime = load_runtime(layout, name)
    if runtime is not None:
        raise MachineBusy(
            f"Machine '{name}' is running (pid {runtime.pid})", hint=_running_hint(name, runtime)
        )


def refuse_if_mounted(layout: Layout, name: MachineName) -> None:
    if is_mounted(layout.machine_root(name)):
        raise MachineBusy(
            f"Machine '{name}' is mounted at {layout.machine_root(name)}",
            hint=f"Unmount it first: 'veneer umount {name}'.",
        )


def recover_machine(layout: Layout, name: MachineName) -> None:
    """Clean up after a run whose processes died without cleaning up (kill -9): record and mount."""
    runtime = load_runtime(layout, name)
    if runtime is None or is_alive(runtime):
        return
    if runtime.mode is RuntimeMode.BOOT:
        logger.info("Machine '%s' ended without being cleaned up; cleaning up.", name)
        end_boot(layout, name, requested=False)
        return
    logger.info("Machine '%s' was left behind by a run that died; cleaning up.", name)
    end_run(layout, name, owns_mount=runtime.owns_mount)


def end_run(layout: Layout, name: MachineName, *, owns_mount: bool) -> None:
    """After a run: what nspawn left in the machine's cgroups (all of it, if nspawn was killed), the
    cgroups, the overlay if the run mounted it, the runtime record."""
    supervisor = supervisor_for(layout)
    cgroups.kill_cgroups(supervisor.cgroup(name))
    supervisor.remove_cgroups(name)
    detach_machine(layout, name)
    if owns_mount and is_mounted(layout.machine_root(name)):
        unmount(layout.machine_root(name))
    remove_runtime(layout, name)


def end_boot(layout: Layout, name: MachineName, *, requested: bool) -> None:
    """Undo a start: processes, cgroups, console session, overlay, runtime record; record the exit."""
    runtime = load_runtime(layout, name)
    if runtime is not None and is_alive(runtime) and runtime.pid != os.getpid():
        with contextlib.suppress(ProcessLookupError):
            os.kill(runtime.pid, signal.SIGKILL)
    supervisor = supervisor_for(layout)
    status = supervisor.exit_status(name)
    cgroups.kill_cgroups(supervisor.cgroup(name))
    supervisor.remove_cgroups(name)
    failure: Error | None = None
    try:
        detach_machine(layout, name)
    except Error as e:  # the network of the others; the machine itself must still be cleaned up
        logger.warning("Failed to take '%s' off its network: %s", name, e.message)
        failure = e
    root = layout.machine_root(name)
    if (runtime is None or runtime.owns_mount) and is_mounted(root):
        unmount(root)
    if runtime is not None and runtime.mode is RuntimeMode.BOOT and runtime.pid != os.getpid():
        asked = requested or runtime.stopping
        # No status: nspawn or the console keeper was killed; that is a failure unless veneer did it.
        save_exit(layout, name, ExitRecord(status=255 if status is None else status, requested=asked,
                                           ended=time.time()))  # fmt: skip
    remove_runtime(layout, name)
    # Last: the standalone keeper exits with its session, and takes `veneer _reap` (its child) with it.
    supervisor.release(name)
    # After the release: until the console keeper is gone, the boot script looks for it (see `stop`).
    layout.stop_request(name).unlink(missing_ok=True)
    if failure is not None:
        raise failure


def mount_overlay_of(layout: Layout, record: MachineRecord) -> None:
    """Mount the machine's overlay (its image revision's layers, idmapped, under its upper dir)."""
    image = load_image(layout, record.image)
    mount_overlay(
        lower_dirs(layout, image, record.revision),
        layout.machine_root(record.name),
        upper=layout.machine_upper(record.name),
        work=layout.machine_work(record.name),
        uid_base=record.uid_base,
        scratch=layout.idmap_dir(record.name),
    )


def discard_machine(layout: Layout, name: MachineName, *, retire_range: bool = True) -> None:
    """Delete a stopped machine and everything it wrote; the caller holds its lock. Its uid range is
    retired (see `machines.uids`) unless `retire_range` is False."""
    base = load_machine(layout, name).uid_base
    if is_mounted(layout.machine_root(name)):
        unmount(layout.machine_root(name))
    with locked(layout.lock, what="The veneer store", wait=True):
        gone = trash(layout.machine_dir(name), layout.staging)
        if base is not None:
            release_uid_range(layout, name, base, retire=retire_range)
    remove_runtime(layout, name)
    remove_tree(gone)


def resume_restore(layout: Layout, name: MachineName) -> None:
    """Finish a restore that was killed after its commit; forget one killed before."""
    restoring.discard_pending(layout, name)
    if layout.restore_dir(name).exists():
        snapshot = restoring.finish_restore(layout, name)
        logger.info("Finished the interrupted restore of '%s' from snapshot '%s'.", name, snapshot)


def trasher(layout: Layout) -> Callable[[Path], Path]:
    """Move a path of the store out of the way, into its staging dir, for deletion later."""
    return lambda path: trash(path, layout.staging)


def resume_rebase(layout: Layout, name: MachineName) -> None:
    """Finish what a killed rebase or undo started; the caller holds the machine's lock."""
    from veneer.rebase import journal  # loaded when there is a rebase to finish (see the module doc)

    machine_dir = layout.machine_dir(name)
    current = journal.state(machine_dir)
    try:
        if current is None:
            logger.info("Discarding a rebase of '%s' that was interrupted before it began.", name)
            journal.discard(machine_dir, trash=trasher(layout))  # only rebase.new is there
        elif current == journal.APPLYING:
            logger.info("Finishing the interrupted rebase of '%s'.", name)
            finish_rebase(layout, name)
        elif current == journal.UNDOING:
            logger.info("Finishing the interrupted undo of the rebase of '%s'.", name)
            finish_undo(layout, name)
    except OSError as e:
        raise RebaseError(
            f"Failed to finish the interrupted rebase of '{name}': {e}",
            hint=f"Nothing is lost: '{journal.journal_dir(machine_dir)}' holds all it moved. Fix the "
            "cause (disk space, permissions) and run any veneer command on the machine again.",
        ) from e


def finish_rebase(layout: Layout, name: MachineName) -> None:
    """Apply a prepared rebase journal to the upper dir and point the record at its target."""
    from veneer.rebase import journal  # loaded when there is a rebase to finish (see the module doc)

    machine_dir = layout.machine_dir(name)
    journal.apply(machine_dir, layout.machine_upper(name))
    target = _move_record(layout, name, "to")
    journal.finish(machine_dir)
    logger.info("Machine '%s' is on image '%s' revision %d.", name, target.image, target.revision)


def finish_undo(layout: Layout, name: MachineName) -> Target:
    """Put the upper dir back as the journal saved it and point the record at the rebase's source."""
    from veneer.rebase import journal  # loaded when there is a rebase to finish (see the module doc)

    machine_dir = layout.machine_dir(name)
    journal.undo(machine_dir, layout.machine_upper(name), trash=trasher(layout))
    source = _move_record(layout, name, "from")
    journal.discard(machine_dir, trash=trasher(layout))
    return source


def _move_record(layout: Layout, name: MachineName, end: str) -> Target:
    """Point the machine record at the journal's source or target revision."""
    from veneer.rebase import journal
    from veneer.rebase.journal import Target

    where = Target.from_json(journal.load_report(layout.machine_dir(name), head=True)[end])
    record = replace(load_machine(layout, name), image=where.image, revision=where.revision)
    save_machine(layout.machine_record(name), record)
    return where
