"""The ephemeral sweep: throwaway machines (`run --ephemeral`, `image update`) whose owner died.

Each throwaway machine records its owner process; when that is gone (kill -9), nobody will remove the
machine, so the next `create` or listing does. Builds on `recovery` only, loaded when a machine is to be
removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import MachineBusy, MachineNotFound, StateCorrupt
from veneer.machines.state import (
    is_alive,
    list_machine_names,
    load_machine,
    load_runtime,
    process_start_time,
)

logger = logging.getLogger(__name__)


def sweep_ephemeral(layout: Layout) -> None:
    """Remove throwaway machines whose `run --ephemeral` or `image update` died without removing them
    (kill -9). Their command is stopped too: nobody waits for it any more."""
    for name in list_machine_names(layout):
        with contextlib.suppress(MachineNotFound, MachineBusy, StateCorrupt):
            owner = load_machine(layout, name).owner
            if owner is not None and process_start_time(owner[0]) != owner[1]:
                _remove_orphan(layout, name)


def _remove_orphan(layout: Layout, name: MachineName) -> None:
    # Loaded here, when there is one to remove: every listing sweeps, and finds none almost always.
    from veneer.machines.recovery import discard_machine, machine_lock, refuse_if_running
    from veneer.runtime.cgroups import kill_cgroups
    from veneer.runtime.supervisor import supervisor_for

    logger.info("Removing '%s', left by a 'veneer run --ephemeral' or 'image update' that died.", name)
    runtime = load_runtime(layout, name)
    if runtime is not None and is_alive(runtime):
        with contextlib.suppress(ProcessLookupError):
            os.kill(runtime.pid, signal.SIGKILL)
        kill_cgroups(supervisor_for(layout).cgroup(name))
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        discard_machine(layout, name)
    logger.info("Removed machine '%s'.", name)
