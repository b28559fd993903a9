"""Many machines at once: `start A B C` and `stop A B C` act on every machine together, from one process.

Each machine gets a thread of its own: what a start or stop does is mostly waiting (for nspawn, for an
init to report, for a poweroff), and the machines' locks, records and cgroups are apart, so nothing is
shared but the store's lock, which each step takes as it would in a process of its own. One interpreter
for twenty machines is what makes twenty at once cheap: twenty `veneer start` processes each pay for
Python and its imports on the same CPUs the machines boot on.

A failure of one machine is its own outcome: the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from veneer.config.settings import MachineName
from veneer.errors import Error

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome(Generic[T]):
    """What `action` gave for one machine: its value, or the error it raised."""

    name: MachineName
    value: T | None = None
    error: Error | None = None


def _outcome(name: MachineName, action: Callable[[MachineName], T]) -> Outcome[T]:
    try:
        return Outcome(name=name, value=action(name))
    except Error as e:
        return Outcome(name=name, error=e)


def for_each_machine(names: Sequence[MachineName], action: Callable[[MachineName], T]) -> list[Outcome[T]]:
    """`action(name)` for every name at once; the outcomes in the order of `names`, once all are done.
    An exception that is no veneer `Error` (a bug) is raised once every action has ended."""
    unique = list(dict.fromkeys(names))
    if len(unique) == 1:
        return [_outcome(unique[0], action)]
    from concurrent.futures import ThreadPoolExecutor  # not for one machine, the common case

    with ThreadPoolExecutor(max_workers=len(unique), thread_name_prefix="machine") as pool:
        futures = [pool.submit(_outcome, name, action) for name in unique]
    return [future.result() for future in futures]
