"""`veneer enable`: the generated unit passes systemd's own checker; hosts without systemd get a clear no.

That the unit boots the machine at host start, with its limits, and that `disable` undoes it, is proven
on a systemd host in a VM (test_systemd_supervisor.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.helpers import Store, mounts_under
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]


def verify(unit: Path) -> proc.Completed:
    # --man=no: whether man pages of the unit's Documentation= are installed is the host's business.
    env = {"SYSTEMD_UNIT_PATH": f"{unit.parent}:"}  # the machine's console unit beside it
    return proc.run(["systemd-analyze", "verify", "--man=no", str(unit)], check=False, capture=True, env=env)


def test_enable_prints_a_unit_that_systemd_accepts(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    store.veneer("create", "b1", "--from", "bb")
    refused = store.veneer("enable", "b1", ok=(1,))
    assert "cannot start at host boot here" in refused.stderr and "--print" in refused.stderr
    store.veneer("set", "b1", "--memory", "64M", "--pids", "64")
    # Two units, each after a comment naming its file: the machine's, then its console's.
    machine_unit, console_unit = re.split(
        r"\n# \S+/(?=\S+-console@)", store.veneer("enable", "b1", "--print").stdout
    )
    console_name, console_text = console_unit.split("\n", 1)
    (tmp_path / console_name).write_text(console_text)
    machine_name = machine_unit.split("\n", 1)[0].rsplit("/", 1)[1]
    printed = machine_unit
    unit = tmp_path / machine_name
    unit.write_text(printed)
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    # The checker can fail: a unit whose ExecStart is not an absolute path is refused.
    broken = tmp_path / "veneer-b2.service"
    broken.write_text(printed.replace("ExecStart=/", "ExecStart="))
    assert verify(broken).returncode != 0
    # The unit is the machine (active exactly while it runs), with its limits, not a oneshot around veneer.
    lines = printed.splitlines()
    assert {"Type=notify", "Delegate=yes", "Slice=machine.slice", "KillMode=mixed"} <= set(lines)
    assert {f"MemoryMax={64 << 20}", "TasksMax=64"} <= set(lines)
    assert not any(line.startswith("RemainAfterExit") for line in lines)
    assert any(line.startswith("ExecStart=") and line.endswith(" _boot b1") for line in lines)
    assert not mounts_under(store.root)
