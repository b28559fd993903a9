"""The command line as a newcomer meets it, through the real `veneer` command in a store of its own."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pty
import re
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store, mounts_under, run_in_pty, start_in_background
from veneer.util import proc

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def machines_stopped(store: Store) -> Iterator[None]:
    """Whatever the test left running stops before its store goes, even when an assertion failed."""
    yield
    for machine in json.loads(store.veneer("list", "--json").stdout):
        if machine["state"] == "running":
            store.veneer("stop", "--timeout", "10", machine["name"], ok=(0, 1))


def test_a_failed_debootstrap_says_why(store: Store) -> None:
    # debootstrap refuses an unknown suite before it fetches anything, and says so on its stdout.
    result = store.veneer("image", "create", "x", "--debootstrap", "nosuchsuite", ok=(1,))
    assert "No such script" in result.stderr and "nosuchsuite" in result.stderr
    assert not any((store.root / ".staging").iterdir())


def test_console_of_a_stopped_machine_says_only_that_it_is_not_running(busybox: Store) -> None:
    busybox.veneer("create", "m1", "--from", "bb")
    result = busybox.veneer("console", "m1", ok=(1,))
    assert result.stderr.splitlines()[0] == "veneer: Machine 'm1' is not running"
    assert "Connected" not in result.stderr


def test_image_rm_takes_several_names(busybox: Store) -> None:
    busybox.veneer("image", "create", "b2", "--busybox")
    busybox.veneer("image", "create", "b3", "--busybox")
    result = busybox.veneer("image", "rm", "bb", "b2", "b3")
    assert result.stdout.splitlines() == [f"Removed image '{name}'." for name in ("bb", "b2", "b3")]
    assert busybox.veneer("image", "list", "--json").stdout.strip() == "[]"


def test_verbs_repeat_as_systemctl_does(busybox: Store) -> None:
    for name in ("m1", "m2", "m3"):
        busybox.veneer("create", name, "--from", "bb")
    busybox.veneer("start", "m1")
    # start goes on past a machine that runs already, and succeeds with a note.
    result = busybox.veneer("start", "m1", "m2")
    assert result.stdout.splitlines()[0].startswith("Machine 'm1' is running already (pid ")
    assert result.stdout.splitlines()[1].startswith("Started machine 'm2'")
    assert busybox.veneer("stop", "m2").stdout == "Stopped machine 'm2'.\n"
    assert busybox.veneer("stop", "m2").stdout == "Machine 'm2' is not running.\n"
    # rm --force stops a running machine, then removes it.
    assert busybox.veneer("rm", "m1", ok=(1,)).stderr.startswith("veneer: Machine 'm1' is running")
    result = busybox.veneer("rm", "--force", "m1", "m2")
    assert result.stdout.splitlines() == [
        "Stopped machine 'm1'.",
        "Removed machine 'm1'.",
        "Removed machine 'm2'.",
    ]
    # image rm says which machines hold it, and --force takes them with it, running or not.
    busybox.veneer("start", "m3")
    refused = busybox.veneer("image", "rm", "bb", ok=(1,))
    assert "used by 1 machine(s): m3" in refused.stderr and "veneer image rm --force bb" in refused.stderr
    result = busybox.veneer("image", "rm", "--force", "bb")
    assert result.stdout.splitlines() == [
        "Image 'bb' takes with it the machine(s) using it: m3.",
        "Stopped machine 'm3'.",
        "Removed machine 'm3'.",
        "Removed image 'bb'.",
    ]
    assert busybox.veneer("list", "--json").stdout.strip() == "[]"


def test_disable_of_a_machine_that_is_not_enabled_succeeds_on_any_host(busybox: Store) -> None:
    busybox.veneer("create", "m1", "--from", "bb")
    for _ in range(2):
        assert busybox.veneer("disable", "m1").stdout == "Machine 'm1' was not enabled.\n"
    assert busybox.veneer("disable", "nosuch", ok=(1,)).stderr.startswith(
        "veneer: No machine named 'nosuch'"
    )


def test_a_machine_moved_off_nat_shows_no_address(busybox: Store) -> None:
    busybox.veneer("create", "m1", "--from", "bb")
    assert busybox.machine_json("m1")["address"]  # reserved on the nat network
    busybox.veneer("set", "m1", "--network", "none")
    busybox.veneer("start", "m1")
    assert "Address:   -" in busybox.veneer("status", "m1").stdout.splitlines()
    assert json.loads(busybox.veneer("status", "m1", "--json").stdout)["addresses"] == []


def test_a_bridge_network_needs_the_bridge_at_create(busybox: Store) -> None:
    result = busybox.veneer("create", "m1", "--from", "bb", "--network", "bridge:nosuchbr0", ok=(1,))
    assert result.stderr.splitlines() == [
        "veneer: Host bridge 'nosuchbr0' does not exist",
        "  Make it first ('ip link add nosuchbr0 type bridge && ip link set nosuchbr0 up'), or use "
        "--network nat.",
    ]
    busybox.veneer("create", "m1", "--from", "bb")
    refused = busybox.veneer("set", "m1", "--network", "bridge:lo", ok=(1,))
    assert refused.stderr.startswith("veneer: Host bridge 'lo' is no bridge")
    assert busybox.machine_json("m1")["network"] == "nat"


def test_a_terminal_sees_each_result_once(store: Store) -> None:
    def on_terminal(*args: str) -> list[str]:
        status, output = run_in_pty(store.argv(*args), store.env())
        assert status == 0, output
        # What stays on the screen: a progress line is overwritten after a carriage return.
        return [line.rpartition("\r")[2] for line in output.split("\n")[:-1]]

    created = [line for line in on_terminal("image", "create", "bb", "--busybox") if "Created" in line]
    assert len(created) == 1 and created[0].startswith("Created image 'bb' (")
    assert on_terminal("create", "m1", "--from", "bb") == ["Created machine 'm1' from 'bb' revision 0."]
    assert on_terminal("clone", "m1", "m2") == ["Cloned machine 'm1' into 'm2'."]
    assert on_terminal("rm", "m1", "m2") == ["Removed machine 'm1'.", "Removed machine 'm2'."]
    assert on_terminal("image", "update", "bb", "--", "touch", "/x") == ["Image 'bb' is at revision 1."]


def test_long_work_in_a_pipe_says_its_phases_in_short_lines(busybox: Store, tmp_path: Path) -> None:
    def phases(*args: str) -> list[str]:
        stderr = busybox.veneer(*args).stderr
        assert "\r" not in stderr
        return stderr.splitlines()

    assert phases("image", "create", "b2", "--busybox") == [
        "Creating a busybox tree from '/usr/bin/busybox'"
    ]
    archive, oci = tmp_path / "bb.tar.gz", tmp_path / "bb.oci.tar"
    assert phases("image", "export", "bb", str(archive)) == ["Writing 'bb.tar.gz'"]
    assert phases("image", "import", "b3", str(archive)) == ["Extracting 'bb.tar.gz'"]
    assert phases("image", "export", "bb", str(oci), "--format", "oci-archive") == [
        "Writing layer 1/1",
        "Writing 'bb.oci.tar'",
    ]
    assert phases("image", "import", "b4", str(oci)) == [
        "Extracting 'bb.oci.tar'",
        "Checking the blobs of 'bb.oci.tar'",
        "Applying layer 1/1",
    ]
    assert phases("image", "update", "bb", "--", "touch", "/x") == [
        "Saving what 'touch /x' changed as a new revision of 'bb'"
    ]
    busybox.veneer("create", "m1", "--from", "bb")
    assert phases("rebase", "m1", "--to", "0") == ["Rebasing 'm1' (1/1)"]


def test_long_work_on_a_terminal_shows_bytes_and_percent_on_one_line(busybox: Store, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "data").write_bytes(os.urandom(8 << 20))  # random: gzip cannot make it small
    archive = tmp_path / "big.tar.gz"
    proc.run(["tar", "-C", str(tree), "-czf", str(archive), "."])

    def on_terminal(*args: str) -> str:
        status, output = run_in_pty(busybox.argv(*args), busybox.env())
        assert status == 0, output
        # The line is rewritten with carriage returns, never ended: only the result has a newline.
        assert output.count("\n") == 1, output
        drawn, _, _ = output.rpartition("\r")
        assert not drawn.rpartition("\r")[2].strip(), "the line is blanked before the result"
        return output

    imported = on_terminal("image", "import", "big", str(archive))
    assert "\rExtracting 'big.tar.gz': " in imported and "MiB of " in imported and "(100%)" in imported
    assert imported.endswith("\rImported image 'big' (1 layers, 8.0 MiB).\n")
    exported = on_terminal("image", "export", "big", str(tmp_path / "out.tar"))
    assert "\rWriting 'out.tar': 8.0 MiB of 8.0 MiB (100%)" in exported


@pytest.mark.network
def test_debootstrap_on_a_terminal_counts_its_packages(store: Store) -> None:
    # A minbase bookworm from the Debian mirror (about a minute): the only way to see debootstrap's lines.
    status, output = run_in_pty(
        store.argv("image", "create", "deb", "--debootstrap", "bookworm"), store.env()
    )
    assert status == 0, output
    assert "\rRetrieving packages: 1 packages " in output
    for phase in ("Extracting", "Unpacking", "Configuring"):
        assert re.search(rf"\r{phase} packages: \d+ of \d+ \(\d+%\) [a-z]", output), phase
    assert "I: " not in output
    assert re.search(r"\rCreated image 'deb' \([0-9.]+ MiB\)\.\n$", output), output[-300:]


# What the user types, and the line after TAB: commands, options, choices, images and machines.
COMPLETIONS = [
    ("veneer ima", "veneer image "),
    ("veneer image cr", "veneer image create "),
    ("veneer create web --fr", "veneer create web --from "),
    ("veneer create web --from b", "veneer create web --from bb "),
    ("veneer start m", "veneer start m1 "),
    ("veneer rebase --prefer b", "veneer rebase --prefer base "),
]


def _veneer_on_path(store: Store, tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "veneer"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(store.argv())} "$@"\n')
    wrapper.chmod(0o755)
    return {**store.env(), "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}


def test_bash_completes_commands_options_images_and_machines(busybox: Store, tmp_path: Path) -> None:
    busybox.veneer("create", "m1", "--from", "bb")
    env = _veneer_on_path(busybox, tmp_path)
    # bash's own variables, as its completion sets them, and the function the script defines.
    complete = (
        'eval "$(veneer completion bash)"; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _veneer; '
        'echo "${COMPREPLY[*]}"'
    )
    for typed, line in COMPLETIONS:
        words = typed.split()
        result = proc.run(["bash", "-c", complete, "bash", *words], capture=True, env=env)
        assert f"{' '.join(words[:-1])} {result.stdout.strip()} " == line, typed


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):  # EIO: zsh is gone
        while os.read(fd, 4096):
            pass
    os.close(fd)


def test_zsh_completes_commands_options_images_and_machines(busybox: Store, tmp_path: Path) -> None:
    # A real interactive zsh with compinit on a pseudo-terminal: it is typed to, TAB and all, and a key
    # bound to a widget of the test's own appends the edited line to a file.
    busybox.veneer("create", "m1", "--from", "bb")
    env = _veneer_on_path(busybox, tmp_path)
    lines = tmp_path / "lines"
    pid, terminal = pty.fork()
    if pid == 0:
        os.execve("/usr/bin/zsh", ["zsh", "-f", "-i"], {**env, "TERM": "dumb"})
    # zsh echoes what it is typed; read it, so that it never blocks on a full terminal.
    threading.Thread(target=_drain, args=(terminal,), daemon=True).start()
    try:
        setup = (
            'autoload -U compinit; compinit -u -D; eval "$(veneer completion zsh)"; '
            f'show() {{ print -r -- "$BUFFER" >> {lines}; BUFFER= }}; zle -N show; bindkey "^X" show\n'
        )
        os.write(terminal, setup.encode())

        def shown(count: int) -> bool:
            return lines.exists() and len(lines.read_text().splitlines()) == count

        for number, (typed, _) in enumerate(COMPLETIONS, 1):
            os.write(terminal, typed.encode() + b"\t\x18")
            assert proc.wait_until(functools.partial(shown, number), timeout=60), typed
        assert lines.read_text().splitlines() == [line for _, line in COMPLETIONS]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_cp_to_a_closed_pipe_ends_quietly_and_run_on_a_started_machine_points_at_exec(
    busybox: Store, tmp_path: Path
) -> None:
    busybox.veneer("create", "m1", "--from", "bb")
    # stdout is a pipe whose reader is gone, as for `veneer cp m1:/bin - | head -c1` once head exited.
    closed_pipe = (
        "import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); "
        "os.execv(sys.executable, [sys.executable, '-m', 'veneer', *sys.argv[1:]])"
    )
    for words in (["cp", "m1:/bin", "-"], ["cp", "--uid", "5", "m1:/bin", "-"]):
        argv = [sys.executable, "-c", closed_pipe, *words]
        result = proc.run(argv, check=False, capture=True, env=busybox.env())
        assert (result.returncode, result.stderr) == (141, ""), words
    busybox.veneer("start", "m1")
    refused = busybox.veneer("run", "m1", "--", "true", ok=(1,)).stderr.splitlines()
    assert (
        refused[1] == "  Stop it first ('veneer stop m1'), or run a command in it: 'veneer exec m1 -- CMD'."
    )


def test_a_missing_bind_source_is_named_before_nspawn_runs(busybox: Store, tmp_path: Path) -> None:
    missing = tmp_path / "nosuchdir"
    busybox.veneer("create", "m1", "--from", "bb", "--network", "none")
    refused = busybox.veneer("run", "--bind", f"{missing}:/mnt", "m1", "--", "true", ok=(1,))
    assert refused.stderr.splitlines() == [
        f"veneer: Cannot bind '{missing}' into machine 'm1': it does not exist on the host",
        "  Create it first, or leave out that --bind.",
    ]
    busybox.veneer("create", "m2", "--from", "bb", "--bind", f"{missing}:/mnt", "--network", "none")
    assert busybox.veneer("start", "m2", ok=(1,)).stderr.startswith(f"veneer: Cannot bind '{missing}'")
    missing.mkdir()
    busybox.veneer("run", "--bind", f"{missing}:/mnt", "m1", "--", "true")


def test_status_says_where_a_machine_is_how_long_it_ran_and_why_it_failed(busybox: Store) -> None:
    busybox.veneer("create", "m1", "--from", "bb", "--port", "8080:80", "--memory", "256M", "--pids", "99")
    busybox.veneer("start", "m1")
    status = dict(
        line.split(":", 1) for line in busybox.veneer("status", "m1").stdout.splitlines() if ":" in line
    )
    address = busybox.machine_json("m1")["address"]
    assert status["Address"].strip() == address
    assert status["Ports"].strip() == "8080:80/tcp"
    assert status["Limits"].strip() == "memory 256M, pids 99"
    assert ", up " in status["State"] and status["State"].strip().startswith("running (pid ")
    cgroup = status["Cgroup"].split()[0]
    tag = hashlib.sha256(str(busybox.root).encode()).hexdigest()[:8]
    assert cgroup == f"veneer-{tag}/m1"  # as the README says of a store under another root
    assert any(
        Path(hierarchy, cgroup).is_dir() for hierarchy in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
    )
    uids = json.loads(busybox.veneer("list", "--json").stdout)[0]
    assert status["UIDs"].strip() == f"{uids['uid_base']}-{uids['uid_base'] + 65535} (user namespace)"
    assert f"{uids['uid_base']}-{uids['uid_base'] + 65535}" in busybox.veneer("list").stdout
    busybox.veneer("kill", "m1", "--signal", "KILL")
    proc.wait_until(lambda: "failed" in busybox.veneer("status", "m1").stdout, timeout=60)
    lines = busybox.veneer("status", "m1").stdout.splitlines()
    assert "State:     failed" in lines, lines
    assert any(line.startswith("Why:       it ended by itself with status ") for line in lines), lines


def test_diff_is_sorted(busybox: Store) -> None:
    busybox.veneer("create", "m1", "--from", "bb")
    busybox.veneer("run", "m1", "--", "sh", "-c", "touch /zz /aa /mm /etc/zz /bb; rm /bin/true")
    lines = busybox.veneer("diff", "m1").stdout.splitlines()
    paths = [line.split(" ", 1)[1] for line in lines]
    assert paths == sorted(paths) and "/aa" in paths and "/bin/true" in paths
    listed = [c["path"] for c in json.loads(busybox.veneer("diff", "m1", "--json").stdout)]
    assert listed == paths


def _sleeping(pid: int, seconds: str) -> int | None:
    """The pid of `sleep SECONDS` among the processes below `pid`, if it runs yet."""
    for member in proc.descendants(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", seconds.encode()]:
                return member
    return None


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_to_veneer_ends_what_it_started_and_leaves_nothing(
    busybox: Store, tmp_path: Path, signum: signal.Signals, terminal: bool
) -> None:
    seconds = str(3000 + int(signum))  # a command line no other test runs
    started = start_in_background(
        busybox.argv("image", "create", "x", "--busybox", "--run", f"exec sleep {seconds}"),
        busybox.env(),
        tmp_path / "output",
        terminal=terminal,
    )
    below: list[int] = []
    try:
        assert proc.wait_until(lambda: _sleeping(started.pid, seconds) is not None, timeout=120)
        below = proc.descendants(started.pid)
        os.kill(started.pid, signum)  # to veneer alone, not to a process group
        status, output = started.wait()
        # Killed, they are gone once their reaper (init, for those whose parent died first) has been by.
        assert proc.wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in below), timeout=60)
    finally:
        for pid in [started.pid, *below]:  # what the test started, should veneer have left it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(started.pid, 0)
    assert status == 128 + signum, output
    assert f"interrupted by {signum.name}" in output
    assert list((busybox.root / ".staging").iterdir()) == []
    assert json.loads(busybox.veneer("image", "list", "--json").stdout)[0]["name"] == "bb"
    assert mounts_under(busybox.root, busybox.run) == []


FOREGROUND = {
    "image update": ["image", "update", "bb", "--network", "none", "--", "sleep", "3401"],
    "run": ["run", "m1", "--", "sleep", "3402"],
    "exec": ["exec", "m1", "--", "sleep", "3403"],
}


@pytest.mark.parametrize("verb", sorted(FOREGROUND))
def test_sigterm_to_a_foreground_verb_ends_it_as_interrupted(
    busybox: Store, tmp_path: Path, verb: str
) -> None:
    # Passed on to nspawn or to the command, then veneer ends as the signal asks: not "the update failed".
    busybox.veneer("create", "m1", "--from", "bb", "--network", "none")
    if verb == "exec":
        busybox.veneer("start", "m1")
    words = FOREGROUND[verb]
    started = start_in_background(busybox.argv(*words), busybox.env(), tmp_path / "output", terminal=False)
    try:
        assert proc.wait_until(lambda: _sleeping(started.pid, words[-1]) is not None, timeout=120)
        os.kill(started.pid, signal.SIGTERM)
        status, output = started.wait()
        assert proc.wait_until(lambda: _sleeping(1, words[-1]) is None, timeout=60), "the command is gone"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(started.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(started.pid, 0)
    assert status == 128 + signal.SIGTERM, output
    assert "veneer: interrupted by SIGTERM" in output and "Failed" not in output
    assert [m["name"] for m in json.loads(busybox.veneer("list", "--json").stdout)] == ["m1"]
    assert json.loads(busybox.veneer("image", "show", "bb", "--json").stdout)["current"] == 0


def test_shell_gives_a_terminal_of_the_machine_s_own(busybox: Store) -> None:
    busybox.veneer("create", "m1", "--from", "bb")
    busybox.veneer("start", "m1")
    typed = b"tty; echo [$((6*7))]; exit 7\n"
    status, output = run_in_pty(busybox.argv("shell", "m1"), busybox.env(), input=typed)
    assert status == 7, output
    after = output.split("[42]")[0].splitlines()  # what the machine printed, not the typed-ahead echo
    assert any(line.startswith("/dev/pts/") for line in after), output
    assert "not a tty" not in output


def test_the_help_s_apt_example_works_and_stays_small(store: Store, debian_tree: Path) -> None:
    from veneer.cli.help import EXAMPLES

    example = next(line for line in EXAMPLES["image update"] if "apt-get install -y hello" in line)
    store.veneer("image", "create", "deb", "--from-dir", str(debian_tree))
    words = shlex.split(example)
    assert words[:4] == ["veneer", "image", "update", "deb"]
    store.veneer(*words[1:])
    shown = json.loads(store.veneer("image", "show", "deb", "--json").stdout)
    assert shown["current"] == 1
    # hello and its documentation, not apt's package lists or its download cache.
    assert shown["revisions"][1]["size_bytes"] < 2 * 1024 * 1024, shown["revisions"][1]
    ran = store.veneer("run", "--ephemeral", "--from", "deb", "--", "hello")
    assert ran.stdout.strip() == "Hello, world!"


def test_network_subnet_moves_the_nat_network_and_readdresses_stopped_machines(busybox: Store) -> None:
    busybox.veneer("create", "sn1", "--from", "bb")
    busybox.veneer("create", "sn2", "--from", "bb")
    assert busybox.veneer("network", "subnet", "10.250.7.0/33", ok=(2,)).stderr.startswith("veneer: Invalid")
    moved = busybox.veneer("network", "subnet", "10.250.7.0/24").stdout.splitlines()
    assert moved == [
        "The nat network is 10.250.7.0/24 (gateway 10.250.7.1).",
        "Machine 'sn1': 10.250.7.2.",
        "Machine 'sn2': 10.250.7.3.",
    ]
    assert busybox.veneer("network", "subnet").stdout == "10.250.7.0/24\n"
    assert busybox.machine_json("sn2")["address"] == "10.250.7.3"
    busybox.veneer("start", "sn1")
    assert json.loads(busybox.veneer("status", "sn1", "--json").stdout)["addresses"] == ["10.250.7.2"]
    inside = busybox.veneer("exec", "sn1", "--", "ip", "-4", "-o", "addr", "show", "host0").stdout
    assert "10.250.7.2/24" in inside
    refused = busybox.veneer("network", "subnet", "auto", ok=(1,))
    assert "Machine 'sn1' is running" in refused.stderr
    busybox.veneer("stop", "sn1")
    auto = busybox.veneer("network", "subnet", "auto").stdout.splitlines()[0]
    assert auto.startswith("The nat network is ") and "10.250.7.0/24" not in auto
