"""Starting machines at host boot: the systemd unit that does what the how-to's fstab line and
`systemctl enable systemd-nspawn@NAME` did, through veneer (mount, cgroups, console keeper included)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import Error
from veneer.machines.state import load_machine
from veneer.runtime.nspawn import is_systemd_host
from veneer.util.fs import atomic_write
from veneer.util.proc import run

UNIT_DIR = Path("/etc/systemd/system")


def unit_name(name: MachineName) -> str:
    return f"veneer-{name}.service"


def veneer_argv() -> list[str]:
    """How the unit runs veneer: the installed command, else this interpreter with this package."""
    installed = shutil.which("veneer")
    return [installed] if installed else [sys.executable, "-m", "veneer"]


def unit_text(layout: Layout, name: MachineName, veneer: list[str]) -> str:
    """The unit: `veneer start --wait` at boot, `veneer stop` at shutdown (pure)."""
    command = " ".join([*veneer, "--root", os.fspath(layout.root)])
    package = Path(__file__).resolve().parents[2]
    pythonpath = f"Environment=PYTHONPATH={package}\n" if veneer[1:2] == ["-m"] else ""
    return f"""\
# Made by 'veneer enable {name}'; 'veneer disable {name}' removes it.
[Unit]
Description=veneer machine {name}
Documentation=man:systemd-nspawn(1)
Wants=network-online.target
After=network-online.target local-fs.target
RequiresMountsFor={layout.root}
PartOf=machines.target
Before=machines.target

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=VENEER_RUN={layout.run}
{pythonpath}ExecStart={command} start {name} --wait --timeout 90
ExecStop={command} stop {name} --timeout 60
TimeoutStartSec=120
TimeoutStopSec=90

[Install]
WantedBy=machines.target
"""


def _require_systemd() -> None:
    if not is_systemd_host():
        raise Error(
            "systemd is not running as PID 1 on this host, so nothing would start the machine at boot",
            hint="Use --print to see the unit and install it on a systemd host, or run 'veneer start NAME' "
            "from this host's own init.",
        )


def enable_machine(layout: Layout, name: MachineName) -> Path:
    """Write and enable the machine's unit; return its path."""
    load_machine(layout, name)
    _require_systemd()
    path = UNIT_DIR / unit_name(name)
    atomic_write(path, unit_text(layout, name, veneer_argv()))
    run(["systemctl", "daemon-reload"])
    run(["systemctl", "enable", unit_name(name)])
    return path


def disable_machine(layout: Layout, name: MachineName) -> None:
    """Disable and remove the machine's unit."""
    _require_systemd()
    path = UNIT_DIR / unit_name(name)
    if path.exists():
        run(["systemctl", "disable", unit_name(name)])
        path.unlink()
        run(["systemctl", "daemon-reload"])
