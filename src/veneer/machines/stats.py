"""`veneer stats`: what each running machine uses, from its cgroup (the supervisor's: veneer's own cgroup
standalone, the unit's on a systemd host) and from the host side of its veth (nat and bridge machines).

Network figures are the machine's own view: what it received is what its veth's host side sent. Reads
only: the cgroup files (`runtime.accounting`) and the link counters (`network.links`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veneer.config.layout import Layout
from veneer.config.settings import MachineName, NetworkMode
from veneer.errors import MachineError
from veneer.machines.state import RuntimeMode, is_alive, list_machine_names, load_machine, load_runtime
from veneer.network.links import link_counters, machine_port
from veneer.runtime.accounting import CgroupUsage, read_usage
from veneer.runtime.cgroups import Hierarchies
from veneer.runtime.supervisor import supervisor_for


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineStats:
    """One reading of one running machine; counters count from its start."""

    name: MachineName
    sampled: float  # time.monotonic() of the reading, for rates between two readings
    supervisor: str
    cgroup: str  # relative to each hierarchy's root
    usage: CgroupUsage
    memory_limit: int | None
    pids_limit: int | None
    interface: str | None  # the host side of its veth
    net: dict[str, int] | None  # rx_bytes, tx_bytes, rx_packets, tx_packets, as the machine sees them

    def to_json(self) -> dict[str, Any]:
        usage = self.usage
        net = self.net or {}
        return {
            "name": self.name,
            "supervisor": self.supervisor,
            "cgroup": self.cgroup,
            "cpu_seconds": None if usage.cpu_usec is None else usage.cpu_usec / 1e6,
            "memory_bytes": usage.memory_bytes,
            "memory_limit_bytes": self.memory_limit,
            "pids": usage.pids,
            "pids_limit": self.pids_limit,
            "block_read_bytes": usage.block_read_bytes,
            "block_write_bytes": usage.block_write_bytes,
            "interface": self.interface,
            "net_rx_bytes": net.get("rx_bytes"),
            "net_tx_bytes": net.get("tx_bytes"),
            "net_rx_packets": net.get("rx_packets"),
            "net_tx_packets": net.get("tx_packets"),
        }


def _as_machine_sees(host: dict[str, int]) -> dict[str, int]:
    return {
        "rx_bytes": host["tx_bytes"],
        "tx_bytes": host["rx_bytes"],
        "rx_packets": host["tx_packets"],
        "tx_packets": host["rx_packets"],
    }


def machine_stats(layout: Layout, names: Sequence[MachineName] = ()) -> list[MachineStats]:
    """A reading of each named machine (each must run), or of every running machine."""
    supervisor = supervisor_for(layout)
    hierarchies = Hierarchies.detect()
    readings = []
    for name in names or list_machine_names(layout):
        record = load_machine(layout, name)
        runtime = load_runtime(layout, name)
        if runtime is None or not is_alive(runtime):
            if not names:
                continue
            raise MachineError(
                f"Machine '{name}' is not running", hint=f"Start it first: 'veneer start {name}'."
            )
        cgroup = supervisor.accounting_cgroup(name, boot=runtime.mode is RuntimeMode.BOOT)
        veth = record.network.mode in (NetworkMode.NAT, NetworkMode.BRIDGE)
        interface = machine_port(name) if veth else None
        host = None if interface is None else link_counters(interface)
        readings.append(
            MachineStats(
                name=name,
                sampled=time.monotonic(),
                supervisor=supervisor.kind.value,
                cgroup=cgroup,
                usage=read_usage(hierarchies, cgroup),
                memory_limit=record.limits.memory,
                pids_limit=record.limits.pids,
                interface=interface,
                net=None if host is None else _as_machine_sees(host),
            )
        )
    return readings


def cpu_percent(before: MachineStats, after: MachineStats) -> float | None:
    """CPU use between two readings, in percent of one CPU."""
    first, last = before.usage.cpu_usec, after.usage.cpu_usec
    elapsed = after.sampled - before.sampled
    if first is None or last is None or elapsed <= 0:
        return None
    return (last - first) / 1e6 / elapsed * 100


# OpenMetrics families: (name, type, unit, help, the JSON key of the value). A counter's sample is
# NAME_total; its family name carries the unit as a suffix, as the format requires.
_FAMILIES = (
    ("veneer_machine_cpu_seconds", "counter", "seconds", "CPU time used by the machine.", "cpu_seconds"),
    ("veneer_machine_memory_bytes", "gauge", "bytes", "Memory the machine uses.", "memory_bytes"),
    ("veneer_machine_memory_limit_bytes", "gauge", "bytes", "The machine's memory limit.",
     "memory_limit_bytes"),
    ("veneer_machine_pids", "gauge", "", "Tasks in the machine.", "pids"),
    ("veneer_machine_pids_limit", "gauge", "", "The machine's task limit.", "pids_limit"),
    ("veneer_machine_block_read_bytes", "counter", "bytes", "Bytes the machine read from block devices.",
     "block_read_bytes"),
    ("veneer_machine_block_write_bytes", "counter", "bytes", "Bytes the machine wrote to block devices.",
     "block_write_bytes"),
    ("veneer_machine_network_receive_bytes", "counter", "bytes", "Bytes the machine received.",
     "net_rx_bytes"),
    ("veneer_machine_network_transmit_bytes", "counter", "bytes", "Bytes the machine sent.", "net_tx_bytes"),
    ("veneer_machine_network_receive_packets", "counter", "", "Packets the machine received.",
     "net_rx_packets"),
    ("veneer_machine_network_transmit_packets", "counter", "", "Packets the machine sent.",
     "net_tx_packets"),
)  # fmt: skip


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_openmetrics(readings: Sequence[MachineStats]) -> str:
    """The readings as OpenMetrics text (for a Prometheus scrape), ending with `# EOF`. A figure the host
    does not account has no sample."""
    return _format(readings, openmetrics=True)


def format_prometheus(readings: Sequence[MachineStats]) -> str:
    """The readings in Prometheus' classic text format, which node_exporter's textfile collector reads
    (it does not read OpenMetrics): no UNIT, no EOF, and TYPE names the sample (`..._total`)."""
    return _format(readings, openmetrics=False)


def _format(readings: Sequence[MachineStats], *, openmetrics: bool) -> str:
    rows = [(reading.name, reading.to_json()) for reading in readings]
    lines = [
        "# TYPE veneer_machine_info gauge",
        "# HELP veneer_machine_info The running machines and their supervisor.",
        *(f'veneer_machine_info{{machine="{_label(name)}",supervisor="{_label(data["supervisor"])}"}} 1'
          for name, data in rows),
    ]  # fmt: skip
    for family, kind, unit, help_text, key in _FAMILIES:
        sample = f"{family}_total" if kind == "counter" else family
        named = family if openmetrics else sample
        lines.append(f"# TYPE {named} {kind}")
        if unit and openmetrics:
            lines.append(f"# UNIT {named} {unit}")
        lines.append(f"# HELP {named} {help_text}")
        lines += [
            f'{sample}{{machine="{_label(name)}"}} {data[key]}'
            for name, data in rows
            if data[key] is not None
        ]
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"
