"""The readers of cgroup accounting files and the OpenMetrics and Prometheus text of `veneer stats`."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as classic_families

from veneer.config.settings import MachineName, parse_snapshot_name
from veneer.errors import UsageError
from veneer.machines.stats import MachineStats, format_openmetrics, format_prometheus
from veneer.runtime.accounting import CgroupUsage, parse_blkio_bytes, parse_io_stat, parse_keyed

IO_STAT = """\
8:0 rbytes=4096 wbytes=1000 rios=1 wios=2 dbytes=0 dios=0
253:1 rbytes=100 wbytes=24 rios=1 wios=1 dbytes=0 dios=0
"""
BLKIO = """\
8:0 Read 4096
8:0 Write 1000
8:0 Sync 5096
8:0 Async 0
8:0 Total 5096
253:1 Read 100
253:1 Write 24
Total 5220
"""


def test_accounting_files_are_summed_over_devices() -> None:
    assert parse_io_stat(IO_STAT) == (4196, 1024)
    assert parse_blkio_bytes(BLKIO) == (4196, 1024)
    assert parse_io_stat("") == (0, 0)
    assert parse_keyed("usage_usec 1500\nuser_usec 1000\nbad\n") == {"usage_usec": 1500, "user_usec": 1000}


def reading(name: str, *, net: bool, block: int | None) -> MachineStats:
    return MachineStats(
        name=MachineName(name),
        sampled=0.0,
        supervisor="standalone",
        cgroup=f"veneer/{name}",
        usage=CgroupUsage(cpu_usec=1_500_000, memory_bytes=4096, pids=3, block_read_bytes=block,
                          block_write_bytes=block),
        memory_limit=None,
        pids_limit=100,
        interface="vb-" + name if net else None,
        net={"rx_bytes": 10, "tx_bytes": 20, "rx_packets": 1, "tx_packets": 2} if net else None,
    )  # fmt: skip


def test_openmetrics_text_parses_and_leaves_out_what_is_not_accounted() -> None:
    readings = [reading("a", net=True, block=7), reading("b", net=False, block=None)]
    text = format_openmetrics(readings)
    assert text.endswith("\n# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(text)}  # type: ignore[no-untyped-call]
    cpu = families["veneer_machine_cpu_seconds"]
    assert (cpu.type, cpu.unit) == ("counter", "seconds")
    assert [(s.name, s.labels["machine"], s.value) for s in cpu.samples] == [
        ("veneer_machine_cpu_seconds_total", "a", 1.5),
        ("veneer_machine_cpu_seconds_total", "b", 1.5),
    ]
    rx = families["veneer_machine_network_receive_bytes"]
    assert [(s.labels["machine"], s.value) for s in rx.samples] == [("a", 10)]
    assert families["veneer_machine_memory_limit_bytes"].samples == []
    assert [s.value for s in families["veneer_machine_pids_limit"].samples] == [100, 100]
    # The classic format for node_exporter's textfile collector: the same samples, typed.
    classic = {f.name: f for f in classic_families(format_prometheus(readings))}
    assert classic["veneer_machine_cpu_seconds"].type == "counter"
    assert [s.value for s in classic["veneer_machine_block_write_bytes"].samples] == [7]
    assert "# EOF" not in format_prometheus(readings)


def test_snapshot_names() -> None:
    assert parse_snapshot_name("20261206-101500") == "20261206-101500"
    assert parse_snapshot_name("Before.upgrade_2:x") == "Before.upgrade_2:x"
    for bad in ("", "../x", "a/b", ".hidden", "-x", "x" * 65):
        try:
            parse_snapshot_name(bad)
        except UsageError:
            continue
        raise AssertionError(f"accepted {bad!r}")
