"""The exception hierarchy. A leaf module: it imports nothing else from veneer.

Every failure the CLI reports is an `Error`: one message, optionally a hint that says what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence


class Error(Exception):
    """A failure the CLI reports as one message and an optional hint, without a traceback."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(Error):
    """The command line or an argument value is wrong (exit status 2)."""


class ConfigError(Error):
    """A setting is invalid or a settings file cannot be read."""


class ImageError(Error):
    """An image cannot be created, read, or removed."""


class ImageNotFound(ImageError):
    """No image of that name exists."""


class ImageInUse(ImageError):
    """The image is still the base of one or more machines."""


class UnsafeArchive(ImageError):
    """An archive or layer tries to write outside its destination or holds forbidden entries."""


class MachineError(Error):
    """A machine cannot be created, changed, or removed."""


class MachineNotFound(MachineError):
    """No machine of that name exists."""


class SnapshotNotFound(MachineError):
    """The machine has no snapshot of that name."""


class MachineExists(MachineError):
    """A machine of that name exists already."""


class MachineBusy(MachineError):
    """Another veneer command holds the lock on this object, or the machine is running."""


class MachineRunning(MachineBusy):
    """`start` of a machine that is booted already: the command line takes it as done, with a note."""


class RebaseError(MachineError):
    """A machine cannot be moved to another revision, or a rebase cannot be undone."""


class TreeTooLarge(MachineError):
    """A tree a machine wrote is nested deeper or holds more entries than veneer reads on the host."""


class StateCorrupt(Error):
    """A record on disk cannot be parsed or has an unknown version."""


class MountError(Error):
    """An overlay or idmapped mount cannot be set up or torn down."""


class NetworkError(Error):
    """A machine's network (bridge, veth, nftables table, dnsmasq) cannot be set up or torn down."""


class CommandFailed(Error):
    """An external command exited with a status the caller did not accept; its message ends with the last
    lines the command wrote (its stderr, or its stdout where it said nothing on stderr)."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        stderr: str = "",
        *,
        hint: str | None = None,
    ) -> None:
        tail = stderr.strip().splitlines()[-5:]
        message = f"Command '{argv[0]}' failed with exit status {returncode}"
        if len(tail) == 1:
            message += f": {tail[0]}"
        elif tail:
            message += ":" + "".join(f"\n  {line}" for line in tail)
        super().__init__(message, hint=hint)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
