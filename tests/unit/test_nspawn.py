from dataclasses import replace
from pathlib import Path

import pytest

from veneer.config.settings import DEFAULT_NETWORK, Bind, Network, NetworkMode
from veneer.errors import CommandFailed
from veneer.runtime.base import RunSpec
from veneer.runtime.cgroups import Hierarchies, join_argv
from veneer.runtime.nspawn import (
    HOST_BUSYBOX,
    NSPAWN_STATE_DIR,
    WAIT_FOR_ADDRESS,
    WAITER,
    launch_argv,
    launch_in_child,
    nspawn_argv,
)
from veneer.util.mountinfo import parse_mountinfo
from veneer.util.proc import run, spawn

SPEC = RunSpec(
    name="web1",
    root=Path("/var/lib/veneer/machines/web1/root"),
    machine_id="0" * 32,
    uid_base=0x70000000,
    command=("sh", "-c", "echo hi"),
    network=Network(mode=NetworkMode.NONE),
)


def test_user_namespace_without_chown() -> None:
    argv = nspawn_argv(SPEC)
    assert "--private-users=1879048192:65536" in argv
    assert "--private-users-ownership=off" in argv
    assert argv[-4:] == ["--", "sh", "-c", "echo hi"]


def test_nothing_copied_into_the_machine() -> None:
    argv = nspawn_argv(SPEC)
    assert "--resolv-conf=bind-host" in argv
    assert "--timezone=bind" in argv
    assert "--link-journal=no" in argv


def test_privileged_has_no_user_namespace() -> None:
    argv = nspawn_argv(replace(SPEC, uid_base=None))
    assert "--private-users=no" in argv
    assert not any(a.startswith("--private-users-ownership") for a in argv)


def test_the_machine_keeps_its_supervisors_cgroup_and_registers_only_under_systemd() -> None:
    assert {"--register=no", "--keep-unit"} <= set(nspawn_argv(SPEC))
    # Without --keep-unit nspawn would ask machined for a scope of its own, out of the unit's limits.
    assert {"--register=yes", "--keep-unit"} <= set(nspawn_argv(replace(SPEC, register=True)))


def test_network_modes() -> None:
    none = nspawn_argv(replace(SPEC, network=Network(mode=NetworkMode.NONE)))
    assert "--private-network" in none
    host = nspawn_argv(replace(SPEC, network=Network(mode=NetworkMode.HOST)))
    assert not any(a.startswith(("--private-network", "--network")) for a in host)
    nat = nspawn_argv(
        replace(SPEC, network=Network(mode=NetworkMode.NAT), nat_bridge="veneer0",
                resolv_conf=Path("/run/veneer/network/resolv.conf"),
                address_gate=Path("/run/veneer/gates/m"))
    )  # fmt: skip
    assert "--network-bridge=veneer0" in nat
    assert "--resolv-conf=off" in nat and "--bind-ro=/run/veneer/network/resolv.conf:/etc/resolv.conf" in nat
    # A one-shot command waits for its address at the host's gate, with the host's busybox bound in; the
    # wait is the shell's own `read`, no process of its own.
    assert "--bind-ro=/run/veneer/gates/m:/run/veneer/address-gate" in nat
    script = nat[nat.index("--") + 4]
    assert script.startswith("read -t 5 line < /run/veneer/address-gate;") and "ip" not in script.split()
    assert nat[nat.index("--") + 1 :][:2] == ["/run/veneer/busybox", "sh"] and nat[-3:] == [
        "sh",
        "-c",
        "echo hi",
    ]
    bridged = nspawn_argv(replace(SPEC, network=Network(mode=NetworkMode.BRIDGE, bridge="br0")))
    assert "--network-bridge=br0" in bridged


def test_run_options() -> None:
    spec = replace(
        SPEC,
        interactive=True,
        user="kang",
        workdir="/srv",
        env=(("A", "1"),),
        binds=(Bind(source="/h", target="/c", readonly=True),),
    )
    argv = nspawn_argv(spec)
    for expected in [
        "--console=interactive",
        "--user=kang",
        "--chdir=/srv",
        "--setenv=A=1",
        "--bind-ro=/h:/c",
    ]:
        assert expected in argv
    assert "--console=pipe" in nspawn_argv(SPEC)
    # A boot with no terminal kept (systemd supervisor): a console that never ends the shell's input.
    assert "--console=read-only" in nspawn_argv(replace(SPEC, boot=True, command=()))


def test_host_settings_files_are_ignored() -> None:
    for spec in (SPEC, replace(SPEC, boot=True, command=())):
        assert "--settings=no" in nspawn_argv(spec)


def test_launch_joins_cgroups_first_then_execs_nspawn() -> None:
    dirs = [Path("/sys/fs/cgroup/veneer/web1"), Path("/sys/fs/cgroup/pids/veneer/web1")]
    argv = launch_argv(["systemd-nspawn", "--quiet"], cgroup_dirs=dirs, private_state=False)
    assert argv[:2] == ["sh", "-c"]
    assert argv[2] == (
        "echo $$ > /sys/fs/cgroup/veneer/web1/cgroup.procs"
        ' && echo $$ > /sys/fs/cgroup/pids/veneer/web1/cgroup.procs && exec "$@"'
    )
    assert argv[3:] == ["sh", "systemd-nspawn", "--quiet"]


def test_launch_gives_nspawn_a_private_state_dir_inside_the_cgroups() -> None:
    argv = launch_argv(["systemd-nspawn"], cgroup_dirs=[Path("/cg")], private_state=True)
    inner = argv[4:]
    assert inner[:5] == ["unshare", "--mount", "--propagation", "slave", "sh"]
    assert f"mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs {NSPAWN_STATE_DIR}" in inner[6]
    assert inner[-1] == "systemd-nspawn"


def test_join_argv_runs_the_command_in_the_cgroups(tmp_path: Path) -> None:
    # Plain files stand in for cgroup.procs: the shell writes its own pid, which the command keeps.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    argv = join_argv([tmp_path / "a", tmp_path / "b"], ["sh", "-c", "echo $$"])
    pid = run(argv, capture=True).stdout.strip()
    assert (tmp_path / "a/cgroup.procs").read_text().strip() == pid
    assert (tmp_path / "b/cgroup.procs").read_text().strip() == pid


def test_launch_in_child_joins_the_cgroups_before_exec(tmp_path: Path) -> None:
    # As for join_argv: plain files stand in for cgroup.procs; the pid written is the command's own.
    for group in ("a", "b"):
        (tmp_path / group).mkdir()
        (tmp_path / group / "cgroup.procs").touch()
    out = tmp_path / "out"
    before_exec = launch_in_child(cgroup_dirs=[tmp_path / "a", tmp_path / "b"], private_state=False)
    process = spawn(["sh", "-c", f"echo $$ > {out}"], before_exec=before_exec)
    assert process.wait() == 0
    pid = out.read_text().strip()
    assert pid == str(process.pid)
    assert (tmp_path / "a/cgroup.procs").read_text() == pid
    assert (tmp_path / "b/cgroup.procs").read_text() == pid


def test_launch_in_child_fails_the_start_with_its_reason(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    before_exec = launch_in_child(cgroup_dirs=[tmp_path / "gone"], private_state=False)
    with pytest.raises(CommandFailed) as e:
        spawn(["touch", ran], before_exec=before_exec)
    assert e.value.returncode == 126 and not ran.exists()
    assert f"{tmp_path}/gone/cgroup.procs" in e.value.message and "No such file" in e.value.message


def test_join_argv_stops_unless_best_effort(tmp_path: Path) -> None:
    missing = [tmp_path / "gone"]
    assert run(join_argv(missing, ["true"]), check=False, capture=True).returncode != 0
    assert run(join_argv(missing, ["true"], required=False), check=False, capture=True).returncode == 0


HYBRID = (
    "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    "31 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd\n"
    "34 25 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
    "35 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
    "36 25 0:32 / /srv/my\\040cgroups/pids rw,nosuid - cgroup cgroup rw,pids\n"
    "37 25 0:33 / /sys/fs/cgroup/blkio rw,nosuid - cgroup cgroup rw,blkio\n"
    "38 25 0:34 / /sys/fs/cgroup/freezer rw,nosuid - cgroup cgroup rw,freezer\n"
)


def test_cgroup_hierarchies_of_a_hybrid_host_with_escaped_mount_points() -> None:
    hierarchies = Hierarchies.detect(parse_mountinfo(HYBRID))
    assert hierarchies.unified == Path("/sys/fs/cgroup/unified")
    assert hierarchies.v1 == {
        "name=systemd": Path("/sys/fs/cgroup/systemd"),
        "memory": Path("/sys/fs/cgroup/memory"),
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "pids": Path("/srv/my cgroups/pids"),
        "blkio": Path("/sys/fs/cgroup/blkio"),
    }
    assert hierarchies.machine_dirs("veneer/m")[0] == Path("/sys/fs/cgroup/unified/veneer/m")


def test_application_runs_as_pid2_and_switches_ids_with_the_hosts_busybox() -> None:
    spec = replace(SPEC, as_pid2=True, kill_signal="SIGRTMIN+3", ids=(1000, 1001), network=DEFAULT_NETWORK)
    argv = nspawn_argv(spec)
    assert "--as-pid2" in argv and "--boot" not in argv and "--kill-signal=SIGRTMIN+3" in argv
    assert f"--bind-ro={HOST_BUSYBOX}:{WAITER}" in argv
    command = argv[argv.index("--") + 1 :]
    assert command[:4] == [WAITER, "sh", "-c", WAIT_FOR_ADDRESS]
    assert command[5:] == [WAITER, "nsenter", "-S", "1000", "-G", "1001", "--", "sh", "-c", "echo hi"]
    assert argv.count(f"--bind-ro={HOST_BUSYBOX}:{WAITER}") == 1
