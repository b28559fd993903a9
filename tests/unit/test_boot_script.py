import shlex
from pathlib import Path

from veneer.machines.boot import boot_script
from veneer.runtime.console import start_argv
from veneer.runtime.nspawn import launch_argv


def test_boot_script_launches_then_records_status_then_reaps() -> None:
    launch = launch_argv(
        ["systemd-nspawn", "--boot", "--directory=/m/root"],
        cgroup_dirs=[Path("/sys/fs/cgroup/unified/veneer/m")],
        private_state=False,
    )
    script = boot_script(
        launch,
        env={"NOTIFY_SOCKET": "/run/veneer/machines/m.notify"},
        status_file=Path("/run/veneer/machines/m.status"),
        reap="veneer _reap m",
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "export NOTIFY_SOCKET=/run/veneer/machines/m.notify" in lines
    assert "export SYSTEMD_NSPAWN_LOCK=0" in lines
    assert shlex.split(next(line for line in lines if line.startswith("sh -c"))) == launch
    assert lines[-2] == "echo $? > /run/veneer/machines/m.status"
    assert lines[-1] == "exec veneer _reap m >/dev/null 2>&1"


def test_console_session_logs_from_the_first_byte() -> None:
    argv = start_argv(Path("/run/v/m.console"), Path("/run/v/console.conf"), "m", ["sh", "/run/v/m.sh"],
                      log=Path("/var/lib/v/machines/m/console.log"))  # fmt: skip
    commands = " ".join(argv)
    # The log is piped before the real command replaces the placeholder.
    assert commands.index("pipe-pane") < commands.index("respawn-pane")
    assert "head -c" in commands and "/var/lib/v/machines/m/console.log" in commands
    assert argv[-1] == "sh /run/v/m.sh"
