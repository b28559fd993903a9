"""A machine's upper dir as the host reads it: through a view that follows none of the machine's symlinks
(`overlay.view`), within the limits of `util.walk`.

diff, list, journal and rebase read it that way themselves. `check_upper` is the gate for the commands
that copy or re-own a whole upper dir with tools that know no limits (commit, export, clone, image
update): a planted tree deeper or larger than veneer reads ends there with a clear error.
"""

from __future__ import annotations

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.overlay.view import nofollow_view
from veneer.util.walk import TreeBudget, walk_tree


def check_upper(layout: Layout, name: MachineName) -> None:
    """Raise `TreeTooLarge` if the machine's upper dir is nested deeper or holds more than veneer reads."""
    with nofollow_view(layout.machine_upper(name)) as upper:
        for _directory in walk_tree(upper, TreeBudget(f"Machine '{name}'")):
            pass
