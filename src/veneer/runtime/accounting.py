"""What a machine's cgroup has used, read from the kernel's files in each layout: pure v2 (a systemd host, a
v2 container) or hybrid (v1 controllers beside an empty v2 hierarchy).

    cpu      v2 `cpu.stat` usage_usec (the base statistics every v2 cgroup has, controller or not)
    memory   v2 `memory.current` if the memory controller is on v2, else v1 `memory.usage_in_bytes`
    pids     v2 `pids.current`, else v1 `pids.current`
    block    v2 `io.stat` rbytes/wbytes, else v1 blkio `blkio.throttle.io_service_bytes_recursive`
             (v1 charges buffered writes to the flusher, not the machine: there they count when synced)

Every figure covers the cgroup and everything below it. A figure the host does not account is None.
Reads only; the parsers are pure.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from veneer.runtime.cgroups import Hierarchies


@dataclass(frozen=True, slots=True, kw_only=True)
class CgroupUsage:
    cpu_usec: int | None
    memory_bytes: int | None
    pids: int | None
    block_read_bytes: int | None
    block_write_bytes: int | None


def parse_keyed(text: str) -> dict[str, int]:
    """A flat keyed file (`cpu.stat`, `memory.stat`): 'key value' per line."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values


def parse_io_stat(text: str) -> tuple[int, int]:
    """(read, written) bytes summed over the devices of a v2 `io.stat`."""
    read = written = 0
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        read += int(fields.get("rbytes", 0))
        written += int(fields.get("wbytes", 0))
    return read, written


def parse_blkio_bytes(text: str) -> tuple[int, int]:
    """(read, written) bytes summed over the devices of a v1 `blkio.*io_service_bytes*` file."""
    read = written = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in ("Read", "Write"):
            if fields[1] == "Read":
                read += int(fields[2])
            else:
                written += int(fields[2])
    return read, written


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None or not text.strip().isdigit():
        return None
    return int(text)


def read_usage(hierarchies: Hierarchies, cgroup: str) -> CgroupUsage:
    """The usage of `cgroup` (relative to each hierarchy's root) on a host with these hierarchies."""
    v2 = hierarchies.v2_controllers()
    unified = hierarchies.unified / cgroup if hierarchies.unified is not None else None

    def pick(controller: str, v2_file: str, v1_file: str) -> Path | None:
        if unified is not None and controller in v2:
            return unified / v2_file
        if controller in hierarchies.v1:
            return hierarchies.v1[controller] / cgroup / v1_file
        return None

    cpu = None
    if unified is not None and (text := _read(unified / "cpu.stat")) is not None:
        cpu = parse_keyed(text).get("usage_usec")
    memory = pick("memory", "memory.current", "memory.usage_in_bytes")
    pids = pick("pids", "pids.current", "pids.current")
    block: tuple[int, int] | None = None
    if unified is not None and "io" in v2:
        text = _read(unified / "io.stat")
        block = None if text is None else parse_io_stat(text)
    elif "blkio" in hierarchies.v1:
        text = _read(hierarchies.v1["blkio"] / cgroup / "blkio.throttle.io_service_bytes_recursive")
        block = None if text is None else parse_blkio_bytes(text)
    return CgroupUsage(
        cpu_usec=cpu,
        memory_bytes=None if memory is None else _int(memory),
        pids=None if pids is None else _int(pids),
        block_read_bytes=None if block is None else block[0],
        block_write_bytes=None if block is None else block[1],
    )
