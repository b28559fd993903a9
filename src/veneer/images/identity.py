"""Files that belong to one machine, not to an image.

A rebase always keeps the machine's own identity and logs; a layer made from a machine (commit, update)
leaves its identity out, so the image does not hand one machine's id, host keys or veneer's own mount
points to every child.
"""

from __future__ import annotations

import fnmatch
from typing import Final

# Where veneer binds its systemd-networkd file for host0 in nat machines; nspawn leaves an empty mount point.
HOST0_NETWORK_UNIT: Final = "etc/systemd/network/05-veneer-host0.network"

IDENTITY_PATTERNS: Final = (
    HOST0_NETWORK_UNIT,
    "etc/machine-id",
    "etc/hostname",
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret",
)
LOG_PATTERNS: Final = ("var/log", "var/log/*")


def identifies_machine(relative: str) -> bool:
    """Whether the path (relative to the root, no leading slash) is a machine's identity."""
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in IDENTITY_PATTERNS)


def belongs_to_machine(relative: str) -> bool:
    """Whether the path is a machine's identity or its logs: a rebase never takes the base's."""
    return identifies_machine(relative) or any(fnmatch.fnmatchcase(relative, p) for p in LOG_PATTERNS)
