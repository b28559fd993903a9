"""Golden JSON round-trips of every on-disk record."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from veneer.config.layout import Layout
from veneer.config.settings import Bind, ImageName, MachineName, Network, NetworkMode, Port
from veneer.errors import MachineNotFound, StateCorrupt
from veneer.images.runconfig import RunConfig
from veneer.images.store import ImageRecord, LayerRecord, Revision, load_image
from veneer.machines.guest import InitKind
from veneer.machines.state import (
    MachineRecord,
    RuntimeMode,
    RuntimeRecord,
    current_boot_id,
    is_alive,
    load_machine,
    machines_on,
    process_start_time,
    save_machine,
)

MACHINE = MachineRecord(
    name=MachineName("web1"),
    image="debian",
    revision=0,
    created=1700000000.5,
    machine_id="0123456789abcdef0123456789abcdef",
    uid_base=0x70000000,
    network=Network(mode=NetworkMode.NAT),
    address="10.88.0.2",
    ports=(Port(host=8080, guest=80),),
    binds=(Bind(source="/srv", target="/data", readonly=True),),
)
MACHINE_JSON = {
    "version": 1,
    "name": "web1",
    "image": "debian",
    "revision": 0,
    "created": 1700000000.5,
    "machine_id": "0123456789abcdef0123456789abcdef",
    "uid_base": 0x70000000,
    "network": "nat",
    "address": "10.88.0.2",
    "ports": ["8080:80/tcp"],
    "binds": [{"source": "/srv", "target": "/data", "readonly": True, "options": ""}],
    "limits": {"memory": None, "cpus": None, "pids": None},
    "owner": None,
}
LAYER = LayerRecord(id="abcd", created=1.0, origin="busybox", size_bytes=4096)
REVISION = Revision(number=0, created=1.0, command="busybox", layers=("abcd",))
IMAGE = ImageRecord(name=ImageName("bb"), created=1.0, layers=(LAYER,), revisions=(REVISION,), current=0)
IMAGE_JSON = {
    "version": 2,
    "name": "bb",
    "created": 1.0,
    "current": 0,
    "layers": [{"version": 1, "id": "abcd", "created": 1.0, "origin": "busybox", "size_bytes": 4096}],
    "revisions": [{"number": 0, "created": 1.0, "command": "busybox", "layers": ["abcd"]}],
}
RUNTIME = RuntimeRecord(
    name=MachineName("web1"), pid=42, start_time=7, mode=RuntimeMode.RUN, started=2.0, owns_mount=True
)
RUNTIME_JSON = {
    "version": 1,
    "name": "web1",
    "pid": 42,
    "start_time": 7,
    "mode": "run",
    "started": 2.0,
    "owns_mount": True,
    "init": None,
    "stopping": False,
    "boot_id": None,
}


def test_machine_record_golden() -> None:
    assert MACHINE.to_json() == MACHINE_JSON
    assert MachineRecord.from_json(json.loads(json.dumps(MACHINE_JSON))) == MACHINE


def test_image_record_golden() -> None:
    assert IMAGE.to_json() == IMAGE_JSON
    assert ImageRecord.from_json(IMAGE_JSON) == IMAGE


def test_runtime_record_golden() -> None:
    assert RUNTIME.to_json() == RUNTIME_JSON
    assert RuntimeRecord.from_json(RUNTIME_JSON) == RUNTIME


def test_booted_runtime_record_golden() -> None:
    booted = replace(RUNTIME, mode=RuntimeMode.BOOT, init=InitKind.BUSYBOX, stopping=True)
    data = {**RUNTIME_JSON, "mode": "boot", "init": "busybox", "stopping": True}
    assert json.loads(json.dumps(booted.to_json())) == data
    assert RuntimeRecord.from_json(data) == booted


def test_machine_save_load(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path, run=tmp_path / "run")
    layout.machine_dir("web1").mkdir(parents=True)
    save_machine(layout.machine_record("web1"), MACHINE)
    assert load_machine(layout, MachineName("web1")) == MACHINE


def test_machines_on_an_image(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path, run=tmp_path / "run")
    machines = {"web1": "debian", "web2": "debian", "db": "arch", "eph-1234": "debian"}
    for name, image in machines.items():
        layout.machine_dir(name).mkdir(parents=True)
        owner = (1, 2) if name.startswith("eph-") else None
        save_machine(layout.machine_record(name), replace(MACHINE, image=image, owner=owner))
    assert machines_on(layout, "debian") == ["web1", "web2"]
    assert machines_on(layout, None) == ["db", "web1", "web2"]
    assert machines_on(layout, "debian", throwaway=True) == ["eph-1234", "web1", "web2"]
    assert machines_on(layout, "fedora", throwaway=True) == []


def test_missing_and_corrupt_records(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path, run=tmp_path / "run")
    with pytest.raises(MachineNotFound, match="No machine named 'nope'"):
        load_machine(layout, MachineName("nope"))
    layout.machine_dir("bad").mkdir(parents=True)
    layout.machine_record("bad").write_text("{not json")
    with pytest.raises(StateCorrupt):
        load_machine(layout, MachineName("bad"))
    layout.image_dir("old").mkdir(parents=True)
    layout.image_record("old").write_text(json.dumps({**IMAGE_JSON, "version": 99}))
    with pytest.raises(StateCorrupt):
        load_image(layout, "old")


def test_image_revisions() -> None:
    assert IMAGE.latest == 0
    assert IMAGE.layers_of(0) == (LAYER,)
    with pytest.raises(Exception, match="has no revision 1"):
        IMAGE.layers_of(1)
    top = LayerRecord(id="ef01", created=2.0, origin="update", size_bytes=10)
    updated = IMAGE.with_revision(
        Revision(number=1, created=2.0, command="update", layers=("abcd", "ef01")), [top]
    )
    assert updated.current == 1 and updated.layers_of(1) == (LAYER, top) and updated.next_number == 2
    assert updated.size_bytes == 4106
    pruned = updated.without_revisions({1})
    assert pruned.layers == (LAYER,) and [r.number for r in pruned.revisions] == [0]


def test_version_1_image_records_read_as_linear_revisions() -> None:
    top = {"version": 1, "id": "ef01", "created": 2.0, "origin": "update", "size_bytes": 10}
    old = {"version": 1, "name": "bb", "created": 1.0, "layers": [IMAGE_JSON["layers"][0], top]}  # type: ignore[index]
    image = ImageRecord.from_json(old)
    assert image.current == 1
    assert [r.layers for r in image.revisions] == [("abcd",), ("abcd", "ef01")]


def test_liveness_needs_same_start_time() -> None:
    import os

    me = os.getpid()
    start = process_start_time(me)
    assert start is not None
    alive = RuntimeRecord(
        name=MachineName("m"), pid=me, start_time=start, mode=RuntimeMode.RUN, started=0, owns_mount=False
    )
    assert is_alive(alive)
    recycled = RuntimeRecord(
        name=MachineName("m"),
        pid=me,
        start_time=start + 1,
        mode=RuntimeMode.RUN,
        started=0,
        owns_mount=False,
    )
    assert not is_alive(recycled)
    # The same pid and start time in another boot of the host (a runtime dir on a disk): not alive.
    assert is_alive(replace(alive, boot_id=current_boot_id()))
    assert not is_alive(replace(alive, boot_id="0" * 32))


def test_snapshot_record_round_trip(tmp_path: Path) -> None:
    from veneer.config.settings import SnapshotName
    from veneer.machines.snapshots import Snapshot, load_snapshot

    snapshot = Snapshot(
        machine=MachineName("web1"),
        name=SnapshotName("before"),
        created=1700000001.0,
        size_bytes=8192,
        frozen=True,
        record=MACHINE,
    )
    golden = {
        "version": 1,
        "machine": "web1",
        "name": "before",
        "created": 1700000001.0,
        "size_bytes": 8192,
        "frozen": True,
        "image": "debian",
        "revision": 0,
        "record": MACHINE_JSON,
    }
    assert snapshot.to_json() == golden
    assert Snapshot.from_json(golden) == snapshot
    layout = Layout(root=tmp_path, run=tmp_path / "run")
    layout.machine_dir("web1").mkdir(parents=True)
    save_machine(layout.machine_record("web1"), MACHINE)
    layout.snapshot_dir("web1", "before").mkdir(parents=True)
    (layout.snapshot_dir("web1", "before") / "snapshot.json").write_text(json.dumps(golden))
    assert load_snapshot(layout, MachineName("web1"), "before") == snapshot
    (layout.snapshot_dir("web1", "before") / "snapshot.json").write_text(
        json.dumps({**golden, "version": 9})
    )
    with pytest.raises(StateCorrupt):
        load_snapshot(layout, MachineName("web1"), "before")


def test_image_revision_with_run_config_golden() -> None:
    config = RunConfig(
        entrypoint=("/bin/app",),
        cmd=("--serve",),
        env=(("PATH", "/bin"), ("MODE", "a=b")),
        user="app:app",
        working_dir="/srv",
        exposed_ports=("80/tcp", "53/udp"),
        labels=(("org.example", "x"),),
        stop_signal="SIGQUIT",
    )
    revision = replace(REVISION, config=config)
    data = {
        **IMAGE_JSON["revisions"][0],  # type: ignore[index]
        "config": {
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/bin", "MODE=a=b"],
            "User": "app:app",
            "WorkingDir": "/srv",
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Labels": {"org.example": "x"},
            "StopSignal": "SIGQUIT",
        },
    }
    assert json.loads(json.dumps(revision.to_json())) == data
    assert Revision.from_json(data).config == replace(config, exposed_ports=("53/udp", "80/tcp"))
