"""`veneer enable`: the generated unit passes systemd's own checker; hosts without systemd get a clear no.

Booting a systemd host to test `enable` across a reboot is not possible here (no systemd as PID 1 on this
machine or in CI); what is verified: the unit's syntax and references with `systemd-analyze verify`, and
that the commands in it start and stop the machine.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.integration.helpers import Store, mounts_under
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]


def verify(unit: Path) -> proc.Completed:
    # --man=no: whether man pages of the unit's Documentation= are installed is the host's business.
    return proc.run(["systemd-analyze", "verify", "--man=no", str(unit)], check=False, capture=True)


def test_enable_prints_a_unit_that_systemd_accepts(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    store.veneer("create", "b1", "--from", "bb")
    refused = store.veneer("enable", "b1", ok=(1,))
    assert "systemd is not running as PID 1" in refused.stderr and "--print" in refused.stderr
    printed = store.veneer("enable", "b1", "--print").stdout
    unit = tmp_path / "veneer-b1.service"
    unit.write_text(printed)
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    # The checker can fail: a unit whose ExecStart is not an absolute path is refused.
    broken = tmp_path / "veneer-b2.service"
    broken.write_text(printed.replace("ExecStart=/", "ExecStart="))
    assert verify(broken).returncode != 0
    # The unit's own commands start and stop the machine.
    lines = dict(line.split("=", 1) for line in printed.splitlines() if line.startswith("Exec"))
    env = dict(e.split("=", 1) for e in _environment(printed))
    start = proc.run(shlex.split(lines["ExecStart"]), check=False, capture=True, env=env)
    assert start.returncode == 0, start.stderr
    assert '"running"' in store.veneer("status", "b1", "--json").stdout
    stop = proc.run(shlex.split(lines["ExecStop"]), check=False, capture=True, env=env)
    assert stop.returncode == 0, stop.stderr
    assert not mounts_under(store.root)


def _environment(unit: str) -> list[str]:
    return [
        line.removeprefix("Environment=") for line in unit.splitlines() if line.startswith("Environment=")
    ]
