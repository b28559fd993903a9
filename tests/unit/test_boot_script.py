from pathlib import Path

from veneer.machines.boot import boot_script
from veneer.runtime.console import start_argv


def test_boot_script_joins_cgroups_then_becomes_nspawn_and_records_status() -> None:
    script = boot_script(
        ["systemd-nspawn", "--boot", "--directory=/m/root"],
        cgroup_dirs=[Path("/sys/fs/cgroup/unified/veneer/m")],
        private_state=False,
        env={"NOTIFY_SOCKET": "/run/veneer/machines/m.notify"},
        status_file=Path("/run/veneer/machines/m.status"),
        reap="veneer _reap m",
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "export NOTIFY_SOCKET=/run/veneer/machines/m.notify" in lines
    assert "export SYSTEMD_NSPAWN_LOCK=0" in lines
    inner = next(line for line in lines if line.startswith("sh -c"))
    assert "echo $$ > /sys/fs/cgroup/unified/veneer/m/cgroup.procs" in inner
    assert "exec systemd-nspawn --boot --directory=/m/root" in inner
    assert lines[-2] == "echo $? > /run/veneer/machines/m.status"
    assert lines[-1] == "exec veneer _reap m >/dev/null 2>&1"


def test_boot_script_gives_nspawn_a_private_state_dir_when_run_is_on_disk() -> None:
    script = boot_script(
        ["systemd-nspawn"], cgroup_dirs=[], private_state=True, env={}, status_file=Path("/s"), reap="r"
    )
    assert "unshare --mount --propagation slave" in script
    assert "mount -t tmpfs" in script


def test_console_session_logs_from_the_first_byte() -> None:
    argv = start_argv(Path("/run/v/m.console"), Path("/run/v/console.conf"), "m", ["sh", "/run/v/m.sh"],
                      log=Path("/var/lib/v/machines/m/console.log"))  # fmt: skip
    commands = " ".join(argv)
    # The log is piped before the real command replaces the placeholder.
    assert commands.index("pipe-pane") < commands.index("respawn-pane")
    assert "head -c" in commands and "/var/lib/v/machines/m/console.log" in commands
    assert argv[-1] == "sh /run/v/m.sh"
