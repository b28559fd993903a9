import os

from veneer.util.proc import child_pids, spawn


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
