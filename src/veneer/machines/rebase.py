"""Moving machines to another image revision: rebase and its undo (`recovery` finishes either after a crash).

The machine must be unmounted while its upper dir changes (overlayfs allows offline changes only), so a
running machine is stopped first and started again afterwards. The plan and the journal live in
`veneer.rebase`; this module holds the locks and switches the machine record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from veneer.config.layout import Layout
from veneer.config.settings import MachineName, parse_machine_name
from veneer.errors import Error, RebaseError
from veneer.images.store import load_image, lower_dirs
from veneer.machines.boot import start_machine, stop_machine
from veneer.machines.recovery import finish_rebase, finish_undo, machine_lock, refuse_if_running, trasher
from veneer.machines.state import (
    RuntimeMode,
    is_alive,
    load_machine,
    load_runtime,
)
from veneer.overlay.mount import is_mounted, unmount
from veneer.overlay.view import nofollow_view
from veneer.rebase import journal
from veneer.rebase.actions import Plan
from veneer.rebase.journal import Target
from veneer.rebase.merge import Prefer
from veneer.rebase.plan import make_plan
from veneer.util.progress import QUIET, Progress
from veneer.util.walk import TreeBudget

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RebaseResult:
    machine: MachineName
    source: Target
    target: Target
    plan: Plan
    applied: bool
    restarted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "from": self.source.to_json(),
            "to": self.target.to_json(),
            "applied": self.applied,
            "restarted": self.restarted,
            "examined": self.plan.examined,
            "summary": self.plan.summary(),
            "actions": [action.to_json() for action in self.plan.actions],
        }


def _is_booted(layout: Layout, name: MachineName) -> bool:
    runtime = load_runtime(layout, name)
    return runtime is not None and runtime.mode is RuntimeMode.BOOT and is_alive(runtime)


def plan_rebase(
    layout: Layout,
    name: MachineName,
    *,
    image: str | None = None,
    to: int | None = None,
    prefer: Prefer = Prefer.CHILD,
) -> RebaseResult:
    """What a rebase would do (`--dry-run`); nothing changes."""
    with machine_lock(layout, name):
        return _plan(layout, name, image=image, to=to, prefer=prefer)


def _ends(layout: Layout, name: MachineName, *, image: str | None, to: int | None) -> tuple[Target, Target]:
    """Where the machine is, and where a rebase takes it (checked to exist)."""
    record = load_machine(layout, name)
    target_image = load_image(layout, image or record.image)
    target = Target(image=target_image.name, revision=target_image.current if to is None else to)
    target_image.revision(target.revision)
    return Target(image=record.image, revision=record.revision), target


def _plan(
    layout: Layout, name: MachineName, *, image: str | None, to: int | None, prefer: Prefer
) -> RebaseResult:
    source, target = _ends(layout, name, image=image, to=to)
    record = load_machine(layout, name)
    with nofollow_view(layout.machine_upper(name)) as upper:  # it may be running (--dry-run)
        plan = make_plan(
            upper,
            lower_dirs(layout, load_image(layout, source.image), source.revision),
            lower_dirs(layout, load_image(layout, target.image), target.revision),
            uid_base=record.uid_base,
            prefer=prefer,
            budget=TreeBudget(f"Machine '{name}'"),
        )
    return RebaseResult(
        machine=name, source=source, target=target, plan=plan, applied=False, restarted=False
    )


def rebase_machine(
    layout: Layout,
    name: MachineName,
    *,
    image: str | None = None,
    to: int | None = None,
    prefer: Prefer = Prefer.CHILD,
    restart: bool = True,
) -> RebaseResult:
    """Move a machine onto another revision (its image's current one by default), keeping what it wrote.
    A machine that is there already is left alone, and so is the backup of its last rebase."""
    source, target = _ends(layout, name, image=image, to=to)
    if source == target:
        logger.info(
            "Machine '%s' is on image '%s' revision %d already.", name, target.image, target.revision
        )
        plan = Plan(actions=(), examined=0)
        return RebaseResult(
            machine=name, source=source, target=target, plan=plan, applied=False, restarted=False
        )
    was_running = _is_booted(layout, name)
    if was_running:
        if not restart:
            raise RebaseError(
                f"Machine '{name}' is running",
                hint=f"Stop it first ('veneer stop {name}'), or leave out --no-restart.",
            )
        stop_machine(layout, name)
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        result = _plan(layout, name, image=image, to=to, prefer=prefer)
        root = layout.machine_root(name)
        if is_mounted(root):
            unmount(root)
        journal.prepare(
            layout.machine_dir(name),
            layout.machine_upper(name),
            result.plan,
            source=result.source,
            target=result.target,
            prefer=prefer.value,
            trash=trasher(layout),
        )
        finish_rebase(layout, name)
    if was_running:
        start_machine(layout, name)
    return replace(result, applied=True, restarted=was_running)


def undo_rebase(layout: Layout, name: MachineName, *, restart: bool = True) -> Target:
    """Put the machine's upper dir and revision back as they were before its last rebase."""
    if journal.state(layout.machine_dir(name)) is None:
        raise RebaseError(
            f"Machine '{name}' has no rebase to undo", hint="Only the last rebase can be undone."
        )
    was_running = _is_booted(layout, name)
    if was_running:
        if not restart:
            raise RebaseError(f"Machine '{name}' is running", hint=f"Stop it first ('veneer stop {name}').")
        stop_machine(layout, name)
    with machine_lock(layout, name):
        refuse_if_running(layout, name)
        if journal.state(layout.machine_dir(name)) is None:
            # Taking the lock finished an undo that was cut short (kill -9): the machine is back already.
            record = load_machine(layout, name)
            source = Target(image=record.image, revision=record.revision)
        else:
            root = layout.machine_root(name)
            if is_mounted(root):
                unmount(root)
            source = finish_undo(layout, name)
    if was_running:
        start_machine(layout, name)
    return source


@dataclass(frozen=True, slots=True, kw_only=True)
class RebaseFailure:
    """A machine that `rebase_all` could not rebase, and why."""

    machine: str
    error: Error


def rebase_all(
    layout: Layout,
    names: Sequence[str],
    *,
    image: str | None = None,
    to: int | None = None,
    prefer: Prefer = Prefer.CHILD,
    restart: bool = True,
    dry_run: bool = False,
    report: Callable[[RebaseResult | RebaseFailure], None] | None = None,
    progress: Progress = QUIET,
) -> list[RebaseResult]:
    """Rebase (with `dry_run`: plan) each machine in turn; one failing does not stop the others. `report`
    hears of each as it is done; a `RebaseError` naming those that failed follows once all were tried."""
    results = []
    failed = []
    for number, name in enumerate(names, 1):
        progress.phase(f"{'Planning' if dry_run else 'Rebasing'} '{name}' ({number}/{len(names)})")
        machine = parse_machine_name(name)
        try:
            if dry_run:
                result = plan_rebase(layout, machine, image=image, to=to, prefer=prefer)
            else:
                result = rebase_machine(layout, machine, image=image, to=to, prefer=prefer, restart=restart)
        except Error as e:
            failed.append(name)
            if report is not None:
                report(RebaseFailure(machine=name, error=e))
            continue
        results.append(result)
        if report is not None:
            report(result)
    if failed:
        raise RebaseError(
            f"Rebase failed for {', '.join(failed)}", hint="See the messages above; the others were done."
        )
    return results
