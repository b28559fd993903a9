"""Starting machines at host boot: `veneer enable` writes `veneer-NAME.service` to /etc/systemd/system,
the persistent form of the unit the systemd supervisor makes for `start` (`runtime.systemd_unit`), and
enables it; `disable` disables and removes it; `set` rewrites it (`refresh_unit`).

The unit runs the machine itself, `Type=notify`: `veneer _boot` mounts the overlay and sets up the
network as `start` does, then execs nspawn, which stays the unit's main process (so the unit is active
exactly while the machine runs, and its limits are the unit's properties); `veneer _started` sets its
address once it runs; ExecStopPost reaps it as for a started machine. `veneer start` of an enabled
machine starts this unit.

Its console keeper is a unit of its own too, `veneer-console@NAME.service` (`console_unit_text`): the
machine's unit requires it and starts after it; it is bound to the machine's unit, so it stops with it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import MachineName
from veneer.errors import Error
from veneer.machines.state import load_machine
from veneer.runtime.console import reap_command
from veneer.runtime.supervisor import SupervisorKind, detect_supervisor
from veneer.runtime.systemd_unit import (
    SLICE,
    STOP_TIMEOUT_SEC,
    UNIT_DIR,
    console_properties,
    console_unit_name,
    limit_properties,
    status_command,
    unit_name,
)
from veneer.util.fs import atomic_write
from veneer.util.proc import run


def veneer_argv() -> list[str]:
    """How the unit runs veneer: the installed command, else this interpreter with this package."""
    installed = shutil.which("veneer")
    return [installed] if installed else [sys.executable, "-m", "veneer"]


def _command_and_environment(layout: Layout, veneer: list[str]) -> tuple[str, str]:
    """How a unit runs veneer on this store: its command line and its Environment= lines."""
    command = shlex.join([*veneer, "--root", os.fspath(layout.root)])
    package = Path(__file__).resolve().parents[2]
    pythonpath = f"Environment=PYTHONPATH={package}\n" if veneer[1:2] == ["-m"] else ""
    return command, f"Environment=VENEER_RUN={layout.run}\n{pythonpath}"


def console_unit_text(layout: Layout, name: MachineName, veneer: list[str]) -> str:
    """The persistent unit of the machine's console keeper (pure)."""
    command, environment = _command_and_environment(layout, veneer)
    return f"""\
# Made by 'veneer enable {name}'; 'veneer disable {name}' removes it.
[Unit]
Description=veneer console of {name}
BindsTo={unit_name(layout, name)}
RequiresMountsFor={layout.root}

[Service]
Type=forking
Slice={SLICE}
{environment}ExecStart={command} _console {name}
"""


def unit_text(layout: Layout, name: MachineName, veneer: list[str]) -> str:
    """The machine's persistent unit (pure but for reading its record: the limits)."""
    limits = load_machine(layout, name).limits
    command, environment = _command_and_environment(layout, veneer)
    console_unit = console_unit_name(layout, name)
    stop_post = (
        f"{status_command(layout.boot_status(name))}; exec {reap_command(layout.root, layout.run)} {name}"
    )
    properties = "".join(f"{p}\n" for p in [*limit_properties(limits), *console_properties(layout, name)])
    return f"""\
# Made by 'veneer enable {name}'; 'veneer disable {name}' removes it.
[Unit]
Description=veneer machine {name}
Documentation=man:systemd-nspawn(1)
Wants=network-online.target
After=network-online.target local-fs.target {console_unit}
Requires={console_unit}
RequiresMountsFor={layout.root}
PartOf=machines.target
Before=machines.target

[Service]
Type=notify
Slice={SLICE}
Delegate=yes
KillMode=mixed
{properties}{environment}ExecStart={command} _boot {name}
ExecStartPost={command} _started {name}
ExecStopPost=/bin/sh -c {shlex.quote(stop_post)}
# nspawn's exit status 133: the guest asked for a reboot (as systemd-nspawn@.service).
SuccessExitStatus=133
TimeoutStartSec=300
TimeoutStopSec={STOP_TIMEOUT_SEC}

[Install]
WantedBy=machines.target
"""


def _require_systemd() -> None:
    choice = detect_supervisor()
    if choice.kind is not SupervisorKind.SYSTEMD:
        raise Error(
            f"Machines cannot start at host boot here: {choice.reason}",
            hint="Use --print to see the unit and install it on a systemd host, or run 'veneer start NAME' "
            "from this host's own init.",
        )


def enable_machine(layout: Layout, name: MachineName) -> Path:
    """Write and enable the machine's unit; return its path."""
    load_machine(layout, name)
    _require_systemd()
    unit = unit_name(layout, name)
    path = UNIT_DIR / unit
    atomic_write(UNIT_DIR / console_unit_name(layout, name), console_unit_text(layout, name, veneer_argv()))
    atomic_write(path, unit_text(layout, name, veneer_argv()))
    run(["systemctl", "daemon-reload"])
    run(["systemctl", "enable", "--quiet", unit])
    return path


def refresh_unit(layout: Layout, name: MachineName) -> None:
    """Rewrite an enabled machine's unit from its record, after `veneer set` changed its limits."""
    path = UNIT_DIR / unit_name(layout, name)
    if path.exists():
        atomic_write(path, unit_text(layout, name, veneer_argv()))
        run(["systemctl", "daemon-reload"])


def disable_machine(layout: Layout, name: MachineName) -> bool:
    """Disable and remove the machine's unit (a running machine runs on until stopped); False if it had
    none. Repeatable, as `systemctl disable`: a machine that is not enabled is left as it is, on any host."""
    load_machine(layout, name)
    unit = unit_name(layout, name)
    path = UNIT_DIR / unit
    if not path.exists():
        return False
    _require_systemd()
    run(["systemctl", "disable", "--quiet", unit])
    path.unlink()
    (UNIT_DIR / console_unit_name(layout, name)).unlink(missing_ok=True)
    run(["systemctl", "daemon-reload"])
    return True
