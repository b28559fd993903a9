"""A machine's upper dir as the host reads it: through a view that follows none of the machine's symlinks
(`overlay.view`), within the limits of `util.walk`.

diff, journal and rebase read it that way themselves; `upper_disk_bytes` is the size `list` shows.
`check_upper` is the gate for the commands that copy or re-own a whole upper dir with tools that know no
limits (commit, export, clone, image update): a planted tree deeper or larger than veneer reads ends
there with a clear error.
"""

from __future__ import annotations

import logging
import stat

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import TreeTooLarge
from veneer.overlay.view import nofollow_view
from veneer.util.walk import TreeBudget, walk_tree

logger = logging.getLogger(__name__)


def check_upper(layout: Layout, name: MachineName) -> None:
    """Raise `TreeTooLarge` if the machine's upper dir is nested deeper or holds more than veneer reads."""
    with nofollow_view(layout.machine_upper(name)) as upper:
        for _directory in walk_tree(upper, TreeBudget(f"Machine '{name}'")):
            pass


def upper_disk_bytes(layout: Layout, name: MachineName) -> int:
    """Bytes the machine's files use (allocated blocks, hard links once), read through a view that follows
    none of its symlinks; a planted tree past the limits is counted up to them."""
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        with nofollow_view(layout.machine_upper(name)) as view:
            for _rel_dir, entries in walk_tree(view, TreeBudget(f"Machine '{name}'")):
                for _name, st in entries:
                    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    except FileNotFoundError:
        pass  # removed meanwhile
    except TreeTooLarge as e:
        logger.warning("%s; its disk_bytes counts what was read before, ignoring.", e.message)
    return total
