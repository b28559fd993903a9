import os

import pytest

from veneer.errors import CommandFailed
from veneer.util import proc
from veneer.util.proc import spawn
from veneer.util.procfs import child_pids


def test_child_pids_lists_a_running_child_and_nothing_for_a_gone_process() -> None:
    process = spawn(["sleep", "30"])
    try:
        assert process.pid in child_pids(os.getpid())
        assert child_pids(process.pid) == []
    finally:
        process.kill()
        process.wait()
    assert process.pid not in child_pids(os.getpid())
    assert child_pids(process.pid) == []


@pytest.mark.parametrize(
    ("script", "capture", "shown"),
    [
        ("echo 'E: no such suite' >&2; exit 3", False, ": E: no such suite"),
        ("echo 'E: no such suite'; exit 3", True, ": E: no such suite"),  # debootstrap writes to stdout
        (
            "echo noise; echo 'W: mirror' >&2; echo 'E: failed' >&2; exit 3",
            True,
            ":\n  W: mirror\n  E: failed",
        ),
    ],
)
def test_a_failed_command_says_its_last_lines(script: str, capture: bool, shown: str) -> None:
    with pytest.raises(CommandFailed) as failed:
        proc.run(["sh", "-c", script], capture=capture)
    assert failed.value.message == f"Command 'sh' failed with exit status 3{shown}"
    assert failed.value.returncode == 3


def test_input_reaches_the_command() -> None:
    assert proc.run(["cat"], input="hello\n", capture=True).stdout == "hello\n"


PDEATHSIG = "import ctypes; s = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(s)); print(s.value)"


@pytest.mark.parametrize(("die_with_parent", "signal"), [(True, "9"), (False, "0")])
def test_a_command_dies_with_veneer_unless_it_starts_a_daemon(die_with_parent: bool, signal: str) -> None:
    # PR_GET_PDEATHSIG in the command: SIGKILL once veneer dies, or nothing for a daemon's starter.
    done = proc.run(["python3", "-c", PDEATHSIG], capture=True, die_with_parent=die_with_parent)
    assert done.stdout.strip() == signal
