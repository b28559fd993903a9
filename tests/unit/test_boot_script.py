import shlex
from pathlib import Path

from veneer.runtime.console import holder_argv, log_pipe, read_log, start_argv
from veneer.runtime.keeper import boot_script, unless_stopping
from veneer.runtime.nspawn import launch_argv
from veneer.util import proc


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
        reap=unless_stopping(Path("/run/veneer/machines/m.stopping"), "exec veneer _reap m"),
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "export NOTIFY_SOCKET=/run/veneer/machines/m.notify" in lines
    assert "export SYSTEMD_NSPAWN_LOCK=0" in lines
    assert shlex.split(next(line for line in lines if line.startswith("sh -c"))) == launch
    assert lines[-2] == "echo $? > /run/veneer/machines/m.status"
    # No interpreter started for nothing: a stop that is underway cleans up itself.
    assert lines[-1] == "[ -e /run/veneer/machines/m.stopping ] || exec veneer _reap m >/dev/null 2>&1"


def test_reap_is_left_out_while_a_stop_is_underway(tmp_path: Path) -> None:
    marker, reaped = tmp_path / "m.stopping", tmp_path / "reaped"
    command = unless_stopping(marker, f"touch {reaped}")
    marker.touch()
    proc.run(["sh", "-c", command])
    assert not reaped.exists()
    marker.unlink()
    proc.run(["sh", "-c", command])
    assert reaped.exists()


def test_console_session_logs_from_the_first_byte_with_its_own_settings() -> None:
    argv = start_argv(Path("/run/v/m.console"), "m", ["sh", "/run/v/m.sh"],
                      log=Path("/var/lib/v/machines/m/console.log"), reap="veneer _reap")  # fmt: skip
    commands = " ".join(argv)
    # No settings file (neither a shared one nor the host's): the settings come with the session.
    assert argv[argv.index("-f") + 1] == "/dev/null"
    # Set before the pane exists, so it is made with them: its hook, its remain-on-exit, no scrollback.
    new = argv.index("new-session")
    assert commands.index("pane-died") < commands.index("new-session")
    assert "remain-on-exit on" in commands[: commands.index("new-session")]
    assert "history-limit 0" in commands[: commands.index("new-session")]
    # The real command is the pane's first (no placeholder to replace), as words: no shell runs it.
    assert argv[new + 8 : new + 11] == ["sh", "/run/v/m.sh", ";"]
    # Piped in the same invocation, before the server reads a byte of the pane.
    assert argv[new + 11 : new + 14] == ["pipe-pane", "-t", "=m:"]
    assert "head -c" in argv[new + 14] and "/var/lib/v/machines/m/console.log" in argv[new + 14]
    # The same invocation prints the pid in the pane, so nobody asks tmux again while the machine starts.
    assert argv[new + 15 :] == [";", "display-message", "-p", "-t", "=m:", "#{pane_pid}"]


def test_a_terminal_holder_logs_and_links_its_terminal_and_reaps_nothing() -> None:
    argv = holder_argv(Path("/run/v/m.console"), "m", log=Path("/var/lib/v/machines/m/console.log"),
                       link=Path("/run/v/m.tty"))  # fmt: skip
    commands = " ".join(argv)
    assert argv[argv.index("-f") + 1] == "/dev/null"
    assert "pane-died" not in commands and "remain-on-exit" not in commands
    assert "detach-client" in commands and "/var/lib/v/machines/m/console.log" in commands
    assert argv[-1] == "ln -sfn #{pane_tty} /run/v/m.tty"
    new = argv.index("new-session")
    assert "history-limit 0" in commands[: commands.index("new-session")]
    assert argv[new + 8] == "sh", "words: tmux starts no login shell of the host user for the holder"


def test_console_log_keeps_the_latest_output_across_rotations(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    assert "%" not in log_pipe(log), "tmux expands the command as a format (strftime included)"
    text = b"".join(b"line %d\n" % i for i in range(3000))
    proc.run(["sh", "-c", log_pipe(log, limit=1000)], input=text.decode())
    assert log.stat().st_size < 1000 and Path(f"{log}.1").stat().st_size == 1000
    kept = read_log(log)
    assert text.endswith(kept) and len(kept) > 1000, "the latest output, nothing lost at the rotation"
    assert read_log(log, lines=2) == b"line 2998\nline 2999\n"
