"""The plain values of a command line: names, and numbers with units, each checked by one parser.

Names are `NewType`s made by one parser each, so a value of that type has been checked once, at the edge.
Nothing here needs a dataclass, so the CLI's parser declares its options without loading the settings
(`config.settings` re-exports all of this).
"""

from __future__ import annotations

import re
from typing import NewType

from veneer.errors import UsageError

MachineName = NewType("MachineName", str)
ImageName = NewType("ImageName", str)

# A machine's host-side interface is "vb-<name>" (systemd-nspawn --network-bridge), and interface names
# hold at most 15 characters.
MACHINE_NAME_MAX = 15 - len("vb-")
_MACHINE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
IMAGE_NAME_MAX = 64


def _checked(kind: str, text: str, pattern: re.Pattern[str], longest: int, allowed: str) -> str:
    if not pattern.fullmatch(text) or len(text) > longest:
        raise UsageError(f"Invalid {kind} name '{text}'", hint=f"Use 1-{longest} characters of {allowed}.")
    return text


def parse_machine_name(text: str) -> MachineName:
    """Check a machine name: 1-12 of a-z, 0-9 and '-', not starting or ending with '-'."""
    allowed = (
        "a-z, 0-9 and '-', starting and ending with a letter or digit "
        "(it becomes the hostname and the interface name vb-NAME)"
    )
    return MachineName(_checked("machine", text, _MACHINE_NAME, MACHINE_NAME_MAX, allowed))


def parse_image_name(text: str) -> ImageName:
    """Check an image name: 1-64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit."""
    allowed = "a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    return ImageName(_checked("image", text, _IMAGE_NAME, IMAGE_NAME_MAX, allowed))


SnapshotName = NewType("SnapshotName", str)
_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
SNAPSHOT_NAME_MAX = 64


def parse_snapshot_name(text: str) -> SnapshotName:
    """Check a snapshot name: 1-64 of A-Z, a-z, 0-9, '.', '_', ':' and '-', a letter or digit first."""
    allowed = "A-Z, a-z, 0-9, '.', '_', ':' and '-', starting with a letter or digit"
    return SnapshotName(_checked("snapshot", text, _SNAPSHOT_NAME, SNAPSHOT_NAME_MAX, allowed))


def parse_seconds(text: str) -> float:
    """Parse a `--timeout` in seconds: a number, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise UsageError(f"Invalid timeout '{text}'", hint="Give a number of seconds, 0 or more, e.g. 30.")
    return seconds


def parse_workdir(text: str) -> str:
    """Parse `--workdir DIR`: an absolute path inside the machine."""
    if not text.startswith("/"):
        raise UsageError(
            f"Invalid working directory '{text}': not an absolute path",
            hint=f"Give the path inside the machine from its root, e.g. /{text.lstrip('./') or 'root'}.",
        )
    return text


def parse_env(text: str) -> tuple[str, str]:
    """Parse `--env NAME=VALUE`."""
    name, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UsageError(f"Invalid environment assignment '{text}'", hint="Use --env NAME=VALUE.")
    return name, value


def parse_memory(text: str) -> int:
    """Parse `--memory` such as 512M, 2G, 1048576."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.rstrip("BbiI"), ""
    if number and number[-1].upper() in units:
        number, unit = number[:-1], number[-1].upper()
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        value = 0
    if value < 1 << 20:
        raise UsageError(
            f"Invalid memory limit '{text}'", hint="Use a size of at least 1M, e.g. 512M or 2G."
        )
    return value


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.01 <= value <= 1024:
        raise UsageError(f"Invalid CPU limit '{text}'", hint="Use a number of CPUs such as 0.5 or 2.")
    return value


def parse_pids(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"Invalid process limit '{text}'", hint="Use a whole number such as 200.")
    return int(text)
