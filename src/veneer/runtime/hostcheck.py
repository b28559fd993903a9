"""`veneer doctor`'s checks of the machines' supervisor: which one this host gets and why, and whether it
can work here (its tools, the cgroup controllers the limits need)."""

from __future__ import annotations

from collections.abc import Callable

from veneer.network.doctor import Finding
from veneer.runtime.cgroups import Hierarchies
from veneer.runtime.supervisor import Choice, SupervisorKind
from veneer.util.proc import which

LIMIT_CONTROLLERS = ("cpu", "memory", "pids")


def check_supervisor(
    choice: Choice, hierarchies: Hierarchies, *, find: Callable[[str], str | None] = which
) -> list[Finding]:
    """The supervisor in use and what keeps it from working on this host (pure but for `find`)."""
    findings = [Finding(ok=True, check="supervisor", message=f"{choice.kind.value}: {choice.reason}.")]
    systemd = choice.kind is SupervisorKind.SYSTEMD
    tools = ("systemd-run", "systemctl", "machinectl") if systemd else ("tmux",)
    missing = [tool for tool in tools if find(tool) is None]
    if missing:
        findings.append(
            Finding(
                ok=False,
                check="supervisor",
                message=f"The {choice.kind.value} supervisor needs {', '.join(missing)}, not found.",
                fix="Install systemd and systemd-container."
                if systemd
                else "Install tmux (apt install tmux).",
            )
        )
    if hierarchies.unified is None and not hierarchies.v1:
        findings.append(
            Finding(
                ok=False,
                check="cgroups",
                message="No cgroup hierarchy is mounted: machines can be neither limited nor killed whole.",
                fix="mount -t cgroup2 none /sys/fs/cgroup",
            )
        )
        return findings
    v2 = hierarchies.v2_controllers()
    lacking = [c for c in LIMIT_CONTROLLERS if c not in v2 and c not in hierarchies.v1]
    if lacking:
        where = "delegated to this host's cgroup" if hierarchies.unified is not None else "mounted"
        findings.append(
            Finding(
                ok=False,
                check="cgroups",
                message=f"The cgroup controllers {', '.join(lacking)} are not {where}: "
                "--memory, --cpus and --pids cannot be held.",
                fix="Give veneer a cgroup v2 tree with those controllers delegated (a container run with "
                "--cgroupns=private and the controllers enabled, or a systemd unit with Delegate=yes).",
            )
        )
    else:
        controllers = ", ".join(LIMIT_CONTROLLERS)
        findings.append(
            Finding(
                ok=True, check="cgroups", message=f"The controllers {controllers} are there for the limits."
            )
        )
    return findings
