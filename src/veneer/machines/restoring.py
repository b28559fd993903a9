"""The steps of a restore, each one rename that checks the filesystem first, so that a restore killed at
any moment is finished by the next command that takes the machine's lock (`machines.recovery`).

    machines/NAME/restore.tmp/   the snapshot's upper dir being copied, and restore.json (the new record);
                                 a leftover is removed: the restore had not begun
    machines/NAME/restore/       renamed from restore.tmp once complete: from here the restore will finish
        upper -> ../upper        step 1 moves the machine's upper dir to restore/old, step 2 this copy into
        old                      its place; then the record is saved, the last rebase's undo (which applied
                                 to the replaced upper dir) dropped, and restore/ removed

Imports records and the rebase journal only; the verb is `machines.snapshots.restore_snapshot`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import StateCorrupt
from veneer.machines.state import MachineRecord, save_machine
from veneer.util.fs import fsync_dir, remove_tree, save_json
from veneer.util.staging import trash

RECORD = "restore.json"


def pending_dir(layout: Layout, name: MachineName) -> Path:
    return layout.machine_dir(name) / "restore.tmp"


def restore_interrupted(layout: Layout, name: MachineName) -> bool:
    """Whether a restore was cut short (two stats in the usual case)."""
    return layout.restore_dir(name).exists() or pending_dir(layout, name).exists()


def commit_restore(layout: Layout, name: MachineName, record: MachineRecord, snapshot: str) -> None:
    """Publish a prepared restore (`pending_dir` holds the copy as `upper`): from here it will finish."""
    pending = pending_dir(layout, name)
    save_json(pending / RECORD, {"version": 1, "snapshot": snapshot, "record": record.to_json()})
    fsync_dir(pending)
    os.rename(pending, layout.restore_dir(name))
    fsync_dir(layout.machine_dir(name))


def finish_restore(layout: Layout, name: MachineName) -> str:
    """Carry out (or on) a committed restore; the caller holds the machine's lock. Returns the snapshot."""
    restore, upper = layout.restore_dir(name), layout.machine_upper(name)
    data = _load(restore / RECORD)
    new, old = restore / "upper", restore / "old"
    if new.exists() and upper.exists() and not old.exists():
        os.rename(upper, old)
        fsync_dir(restore)
    if new.exists() and not upper.exists():
        os.rename(new, upper)
        fsync_dir(layout.machine_dir(name))
    if not new.exists():
        record = MachineRecord.from_json(data["record"])
        save_machine(layout.machine_record(name), record)
        # The last rebase's undo would put back files of the upper dir that was just replaced.
        from veneer.rebase import journal  # not for `restore_interrupted`, which every listing asks

        journal.discard(layout.machine_dir(name), trash=lambda path: trash(path, layout.staging))
        remove_tree(trash(restore, layout.staging))
    return str(data["snapshot"])


def discard_pending(layout: Layout, name: MachineName) -> None:
    """Remove what a restore killed before its commit left behind."""
    pending = pending_dir(layout, name)
    if os.path.lexists(pending):
        remove_tree(trash(pending, layout.staging))


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != 1 or "record" not in data:
            raise ValueError("not a version 1 restore record")
    except (OSError, ValueError) as e:
        raise StateCorrupt(
            f"Cannot read the interrupted restore '{path}': {e}",
            hint=f"'{path.parent}' holds the copy of the snapshot (upper) and the machine's own (old).",
        ) from e
    return data
