"""A brief freeze of a running machine (the cgroup freezer, through its supervisor), so that a copy of its
upper dir is one moment of it, and the thaw of a machine whose freezer was killed (kill -9) before it thawed.

Who froze a machine is recorded (`Layout.freeze_record`: pid and start time) before the freeze and removed
after the thaw; `thaw_abandoned` (called by every verb through `machines.recovery`) thaws a machine whose
recorded freezer is gone. Imports records and the supervisor only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import Error, MachineError
from veneer.machines.state import process_start_time
from veneer.runtime.supervisor import supervisor_for
from veneer.util.fs import atomic_write

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def frozen(layout: Layout, name: MachineName) -> Iterator[None]:
    """Keep every process of the running machine frozen for the block; thawed whatever happens."""
    record = layout.freeze_record(name)
    me = os.getpid()
    atomic_write(record, json.dumps({"version": 1, "pid": me, "start_time": process_start_time(me)}) + "\n")
    supervisor = supervisor_for(layout)
    try:
        try:
            supervisor.set_frozen(name, True)
        except (OSError, Error) as e:
            raise MachineError(
                f"Failed to freeze machine '{name}': {e}",
                hint=f"Stop it ('veneer stop {name}') and take the snapshot of the stopped machine.",
            ) from e
        yield
    finally:
        try:
            supervisor.set_frozen(name, False)
        except (OSError, Error) as e:
            # The record stays: the next command on the machine tries again (`thaw_abandoned`).
            raise MachineError(
                f"Failed to thaw machine '{name}': {e}",
                hint=f"Run 'veneer status {name}' to try again; 'veneer kill {name}' ends it frozen or not.",
            ) from e
        record.unlink(missing_ok=True)


def thaw_abandoned(layout: Layout, name: MachineName) -> None:
    """Thaw the machine if a command that froze it died before it thawed it (one stat if none did)."""
    record = layout.freeze_record(name)
    try:
        data = json.loads(record.read_text())
    except FileNotFoundError:
        return
    except ValueError:
        data = {}
    pid, start = data.get("pid"), data.get("start_time")
    if isinstance(pid, int) and start is not None and process_start_time(pid) == start:
        return  # still copying: it thaws the machine itself
    logger.info("Machine '%s' was left frozen by a snapshot that was killed; thawing it.", name)
    with contextlib.suppress(OSError, Error):
        supervisor_for(layout).set_frozen(name, False)
    record.unlink(missing_ok=True)
