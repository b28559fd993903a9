"""The CLI's start-up stays cheap: building the parser imports neither Ansible nor the heavy modules."""

from __future__ import annotations

import sys
from pathlib import Path

from veneer.util import proc

SRC = Path(__file__).resolve().parents[2] / "src"


def test_cli_does_not_import_ansible() -> None:
    code = "import sys; from veneer.cli import build_parser; build_parser(); print(*sorted(sys.modules))"
    modules = proc.run(
        [sys.executable, "-c", code], capture=True, env={"PYTHONPATH": str(SRC)}
    ).stdout.split()
    assert "veneer.cli.copy" in modules
    assert not [m for m in modules if m.startswith("ansible") or m in ("tarfile", "veneer.machines.copy")]
