from pathlib import Path

import pytest

from veneer.config.layout import Layout
from veneer.config.settings import Limits
from veneer.runtime.cgroups import Hierarchies
from veneer.runtime.hostcheck import check_supervisor
from veneer.runtime.supervisor import SupervisorKind, choose_supervisor
from veneer.runtime.systemd_unit import (
    console_properties,
    console_unit_name,
    limit_properties,
    run_argv,
    status_command,
    unit_ended,
    unit_name,
)
from veneer.util import proc

V2 = Hierarchies(unified=Path("/sys/fs/cgroup"), v1={})
HYBRID = Hierarchies(unified=Path("/sys/fs/cgroup/unified"), v1={"memory": Path("/sys/fs/cgroup/memory")})
V1_ALL = Hierarchies(unified=None, v1={c: Path(f"/sys/fs/cgroup/{c}") for c in ("cpu", "memory", "pids")})


@pytest.mark.parametrize(
    ("pid1", "booted", "hierarchies", "kind", "why"),
    [
        ("systemd", True, V2, SupervisorKind.SYSTEMD, "unified cgroup v2"),
        ("systemd", True, HYBRID, SupervisorKind.STANDALONE, "not pure v2"),
        ("tini", False, V2, SupervisorKind.STANDALONE, "PID 1 is tini"),
        ("init", True, V2, SupervisorKind.STANDALONE, "PID 1 is init"),
    ],
)
def test_supervisor_choice(
    pid1: str, booted: bool, hierarchies: Hierarchies, kind: SupervisorKind, why: str
) -> None:
    choice = choose_supervisor(pid1=pid1, systemd_booted=booted, hierarchies=hierarchies)
    assert choice.kind is kind
    assert why in choice.reason


def test_unit_names_per_store() -> None:
    default = Layout(root=Path("/var/lib/veneer"), run=Path("/run/veneer"))
    assert unit_name(default, "web") == "veneer-web.service"
    other = unit_name(Layout(root=Path("/srv/v"), run=Path("/run/v")), "web")
    assert other.startswith("veneer-") and other.endswith("-web.service") and other != "veneer-web.service"


def test_the_console_unit_cannot_take_a_machines_name_and_holds_its_terminal() -> None:
    default = Layout(root=Path("/var/lib/veneer"), run=Path("/run/veneer"))
    # Machine names have no `@`: no machine's unit is another's console unit.
    assert console_unit_name(default, "web") == "veneer-console@web.service"
    assert console_unit_name(default, "console") != unit_name(default, "console-web")
    # Opened as a file: the keeper's terminal is nspawn's stdio, not taken as controlling terminal.
    tty = "/run/veneer/machines/web.tty"
    assert console_properties(default, "web") == [
        f"StandardInput=file:{tty}", f"StandardOutput=file:{tty}", "StandardError=inherit",
    ]  # fmt: skip


def test_limits_are_unit_properties() -> None:
    assert limit_properties(Limits(memory=64 << 20, cpus=0.5, pids=64)) == [
        "MemoryMax=67108864", "TasksMax=64", "CPUQuota=50%",
    ]  # fmt: skip
    assert limit_properties(Limits()) == ["MemoryMax=infinity", "TasksMax=infinity", "CPUQuota="]


def test_the_unit_is_a_delegated_notify_service_in_machine_slice() -> None:
    argv = run_argv("veneer-m.service", ["systemd-nspawn", "--boot"], limits=Limits(pids=64), env={},
                    stop_post="veneer _reap m", description="veneer machine m")  # fmt: skip
    assert argv[0] == "systemd-run"
    expected = {"--unit=veneer-m.service", "--slice=machine.slice", "--service-type=notify", "--no-block"}
    assert expected <= set(argv)
    assert {"--property=Delegate=yes", "--property=KillMode=mixed", "--property=TasksMax=64"} <= set(argv)
    assert "--property=ExecStopPost=/bin/sh -c 'veneer _reap m'" in argv
    assert argv[argv.index("--") + 1 :] == ["systemd-nspawn", "--boot"]


@pytest.mark.parametrize(
    ("code", "status", "written"),
    [("exited", "0", "0"), ("exited", "133", "133"), ("killed", "KILL", "137"), ("killed", "TERM", "143")],
)
def test_stop_post_records_nspawns_exit_status(tmp_path: Path, code: str, status: str, written: str) -> None:
    target = tmp_path / "status"
    proc.run(["sh", "-c", status_command(target)], env={"EXIT_CODE": code, "EXIT_STATUS": status})
    assert target.read_text().strip() == written


@pytest.mark.parametrize(
    ("state", "ended"),
    [
        ({"LoadState": "loaded", "ActiveState": "inactive", "Job": "4711"}, False),  # its start job queued
        ({"LoadState": "loaded", "ActiveState": "activating"}, False),
        ({"LoadState": "loaded", "ActiveState": "active", "Job": ""}, False),
        ({"LoadState": "loaded", "ActiveState": "inactive", "Job": ""}, True),
        ({"LoadState": "loaded", "ActiveState": "inactive"}, True),
        ({"LoadState": "loaded", "ActiveState": "failed", "Job": "4712"}, True),
        ({"LoadState": "not-found", "ActiveState": "inactive"}, True),  # collected
    ],
)
def test_a_unit_whose_start_job_waits_has_not_ended(state: dict[str, str], ended: bool) -> None:
    assert unit_ended(state) is ended


def test_doctor_names_the_supervisor_and_flags_a_host_where_it_cannot_work() -> None:
    standalone = choose_supervisor(pid1="tini", systemd_booted=False, hierarchies=V2)
    no_controllers = Hierarchies(unified=Path("/nonexistent"), v1={})
    findings = check_supervisor(standalone, no_controllers, find=lambda tool: None)
    assert findings[0].ok and findings[0].message.startswith("standalone: PID 1 is tini")
    failed = [f for f in findings if not f.ok]
    assert any("tmux" in f.message for f in failed)
    assert any("cpu, memory, pids" in f.message for f in failed)
    assert all(f.ok for f in check_supervisor(standalone, V1_ALL, find=lambda tool: f"/usr/bin/{tool}"))


def test_waits_ask_systemd_ever_less_often_and_the_keeper_every_5_ms() -> None:
    from veneer.machines.boot import _pauses
    from veneer.runtime.keeper import Keeper
    from veneer.runtime.systemd_unit import SystemdUnits

    layout = Layout(root=Path("/var/lib/veneer"), run=Path("/run/veneer"))
    systemd = _pauses(SystemdUnits(layout))
    assert [round(next(systemd), 3) for _ in range(9)] == [
        0.005,
        0.01,
        0.02,
        0.04,
        0.08,
        0.16,
        0.25,
        0.25,
        0.25,
    ]
    keeper = _pauses(Keeper(layout))
    assert {next(keeper) for _ in range(9)} == {0.005}
