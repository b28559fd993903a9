"""The systemd supervisor: on hosts where systemd is PID 1 on cgroup v2, a booted machine is a service of
its own, `veneer-NAME.service` in machine.slice, as `systemd-nspawn@.service` is.

The unit is the machine's cgroup: systemd makes it (`Delegate=yes`, so nspawn manages the tree below:
the container in `payload`, itself in `supervisor`), sets the limits as unit properties, reaps nspawn
and records its end; its ExecStopPost runs `veneer _reap`, so the overlay is unmounted and the network
taken down however nspawn ended. nspawn runs with `--keep-unit --register=yes`: it registers the unit with
machined instead of making a scope of its own, so `machinectl` and `journalctl -M` know the machine and
veneer's limits apply to it. `Type=notify`: nspawn reports the machine ready (the guest's READY=1 with
`--notify-ready=yes`, else as soon as its init runs). `KillMode=mixed`: `systemctl stop` sends SIGTERM to
nspawn alone, which passes the guest's poweroff signal on, and SIGKILL to all only at the end.

Console: a companion unit, `veneer-console@NAME.service` (`console_unit_name`), holds a terminal for the
machine: it runs veneer's console keeper (`runtime.console`, a tmux server of the machine's own) whose
pane only holds a pseudo-terminal open (`holder_argv`) and logs what is written to it, as on standalone
hosts. The machine's unit takes that terminal as nspawn's stdin and stdout (`StandardInput=file:`, a link
in the run dir, `console_properties`) and nspawn runs with `--console=interactive`, so `veneer console`
attaches to tmux and `veneer logs` reads its log. The keeper cannot sit in the machine's unit: nspawn
must stay the unit's main process (notify, stop, machined) and the delegated cgroup's root must stay empty
once nspawn has made subgroups. The companion is started before the machine and stopped after it, by the
reap (ExecStopPost) and, for an enabled machine, by `BindsTo=` too. It costs a tmux server, the holder's
`sleep` and the log loop: 1.19 MB private per machine before the keeper's tmux settings of 2026-12-06
(bench/README.md, `supervisors`), about 0.13 MB less since.

Never writes a cgroup itself: systemd owns the tree outside the unit.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from veneer.config.layout import Layout
from veneer.config.settings import Limits
from veneer.runtime import console
from veneer.runtime.base import Confined
from veneer.runtime.console import internal_command, reap_command
from veneer.runtime.nspawn import NSPAWN_ENV
from veneer.runtime.supervisor import SupervisorKind
from veneer.util import proc

SLICE = "machine.slice"
UNIT_DIR = Path("/etc/systemd/system")  # where `veneer enable` writes a machine's persistent unit
# Where systemd keeps a transient unit's file for as long as the unit is loaded.
TRANSIENT_DIR = Path("/run/systemd/transient")
STOP_TIMEOUT_SEC = 90


def unit_name(layout: Layout, name: str) -> str:
    """`veneer-NAME.service`; another store's: `veneer-TAG-NAME.service` (see `Layout.cgroup`)."""
    group = layout.cgroup(name).split("/")[0]
    return f"{group}-{name}.service"


def console_unit_name(layout: Layout, name: str) -> str:
    """`veneer-console@NAME.service`, the machine's console keeper: no machine name holds an `@`."""
    group = layout.cgroup(name).split("/")[0]
    return f"{group}-console@{name}.service"


def console_properties(layout: Layout, name: str) -> list[str]:
    """The machine unit's properties that make the console keeper's terminal nspawn's stdio (pure).
    `file:`, not `tty`: opened without taking it as controlling terminal, which tty-force would steal
    from the holder's session, and again for each ExecStartPost and ExecStopPost, from nspawn's. One path
    for both: systemd opens it once, read and write."""
    tty = layout.console_tty(name)
    return [f"StandardInput=file:{tty}", f"StandardOutput=file:{tty}", "StandardError=inherit"]


def hold_console(layout: Layout, name: str) -> None:
    """The console unit's ExecStart (`veneer _console NAME`): a fresh log, and the keeper holding a
    terminal linked from `Layout.console_tty`; tmux's server stays (`Type=forking`)."""
    tty = layout.console_tty(name)
    tty.parent.mkdir(parents=True, exist_ok=True)  # the run dir is empty after a host reboot
    tty.unlink(missing_ok=True)
    layout.console_log(name).write_bytes(b"")
    layout.console_log_previous(name).unlink(missing_ok=True)
    console.kill_session(layout.console_socket(name), name)  # a keeper of a boot before, if any
    console.hold_terminal(layout.console_socket(name), name, log=layout.console_log(name), link=tty)


def limit_properties(limits: Limits) -> list[str]:
    """The unit properties that hold `limits` (pure); `infinity` lifts one."""
    memory = "infinity" if limits.memory is None else str(limits.memory)
    tasks = "infinity" if limits.pids is None else str(limits.pids)
    # CPUQuota= is a percentage of one CPU; "" removes it.
    quota = "" if limits.cpus is None else f"{round(limits.cpus * 100)}%"
    return [f"MemoryMax={memory}", f"TasksMax={tasks}", f"CPUQuota={quota}"]


def status_command(status_file: os.PathLike[str]) -> str:
    """What ExecStopPost writes before reaping: nspawn's exit status, 128+N if signal N killed it.
    systemd passes $EXIT_CODE (exited, killed, dumped) and $EXIT_STATUS (a number or a signal name)."""
    names = " ".join(f"{s.name.removeprefix('SIG')}) n={s.value};;" for s in signal.Signals if s.value < 32)
    target = shlex.quote(os.fspath(status_file))
    return (
        f'if [ "$EXIT_CODE" = exited ]; then echo "$EXIT_STATUS" > {target}; '
        f'elif [ -n "$EXIT_CODE" ]; then n=127; case "$EXIT_STATUS" in {names} esac; '
        f"echo $((128 + n)) > {target}; fi"
    )


def run_argv(
    unit: str,
    launch: Sequence[str],
    *,
    limits: Limits,
    env: Mapping[str, str],
    stop_post: str,
    description: str,
    console_properties: Sequence[str] = (),
) -> list[str]:
    """The systemd-run command line that starts the machine's unit (pure)."""
    properties = [
        *console_properties,
        "Delegate=yes",
        "KillMode=mixed",
        f"TimeoutStopSec={STOP_TIMEOUT_SEC}",
        # nspawn's exit status 133 means the guest asked for a reboot (as systemd-nspawn@.service).
        "SuccessExitStatus=133",
        *limit_properties(limits),
        f"ExecStopPost=/bin/sh -c {shlex.quote(stop_post)}",
    ]
    return [
        "systemd-run", f"--unit={unit}", f"--slice={SLICE}", "--service-type=notify", "--collect",
        "--no-block", "--quiet", f"--description={description}",
        *(f"--property={p}" for p in properties),
        *(f"--setenv={k}={v}" for k, v in sorted({**NSPAWN_ENV, **env}.items())),
        "--", *launch,
    ]  # fmt: skip


def unit_ended(state: Mapping[str, str]) -> bool:
    """Whether a unit started with `--no-block` has ended, from `systemctl show` (pure). Until its start
    job runs it is "inactive" with the job pending: on a busy host (ten machines started at once) that
    lasts long enough to be taken for an end."""
    if state.get("LoadState") == "not-found" or state.get("ActiveState") == "failed":
        return True
    job = state.get("Job", "")
    return state.get("ActiveState") == "inactive" and not (job.isdigit() and job != "0")


class SystemdUnits:
    """The systemd supervisor for the machines of one store."""

    kind = SupervisorKind.SYSTEMD
    terminal = True
    registers = True
    longest_poll = 0.25  # each answer is a `systemctl show`

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def unit(self, name: str) -> str:
        return unit_name(self.layout, name)

    def console_unit(self, name: str) -> str:
        return console_unit_name(self.layout, name)

    def _start_console(self, name: str) -> None:
        """The console keeper's unit (transient), waited for: the terminal is there when it returns."""
        command = internal_command(self.layout.root, self.layout.run, "_console")
        proc.run(
            ["systemd-run", f"--unit={self.console_unit(name)}", f"--slice={SLICE}",
             "--service-type=forking", "--collect", "--quiet", f"--description=veneer console of {name}",
             "--", "/bin/sh", "-c", f"exec {command} {shlex.quote(name)}"],
            capture=True,
        )  # fmt: skip

    def cgroup(self, name: str) -> str:
        # The container's part of the unit: nspawn (in `supervisor`) is killed by its pid, and the unit's
        # control processes (ExecStopPost's `veneer _reap`, in `.control`) must outlive a kill of the rest.
        return f"{SLICE}/{self.unit(name)}/payload"

    def confine(self, name: str, limits: Limits, argv: Sequence[str], *, boot: bool) -> Confined:
        if boot:
            return Confined(tuple(argv))  # the unit is the cgroup, its properties the limits
        # A command (`veneer run`) in the foreground: a scope of its own in machine.slice.
        scope = self.unit(name).removesuffix(".service") + ".scope"
        properties = ["Delegate=yes", *limit_properties(limits)]
        return Confined((
            "systemd-run", "--scope", "--quiet", f"--unit={scope}", f"--slice={SLICE}", "--collect",
            *(f"--property={p}" for p in properties), "--", *argv,
        ))  # fmt: skip

    def _show(self, name: str, *properties: str) -> dict[str, str]:
        argv = ["systemctl", "show", self.unit(name), *(f"--property={p}" for p in properties)]
        out = proc.run(argv, capture=True, check=False).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def start(
        self, name: str, launch: Sequence[str], *, env: Mapping[str, str], limits: Limits, notify: bool
    ) -> None:
        layout = self.layout
        layout.boot_status(name).unlink(missing_ok=True)
        reap = f"{reap_command(layout.root, layout.run)} {shlex.quote(name)}"
        stop_post = f"{status_command(layout.boot_status(name))}; exec {reap}"
        # The unit of the last boot may still be there (its ExecStopPost finishing, or failed): it would
        # keep the name taken. The caller holds the machine's lock, so that ExecStopPost ends at once.
        # Usually none is: asking systemd costs three systemctl processes, looking costs two stat().
        if any((TRANSIENT_DIR / unit).exists() for unit in (self.unit(name), self.console_unit(name))):
            self._stop_unit(name)
        self._start_console(name)
        proc.run(
            run_argv(self.unit(name), launch, limits=limits, env=env, stop_post=stop_post,
                     description=f"veneer machine {name}",
                     console_properties=console_properties(layout, name)),
            capture=True,
        )  # fmt: skip

    def enabled(self, name: str) -> bool:
        return (UNIT_DIR / self.unit(name)).exists()

    def start_enabled(self, name: str) -> None:
        # Waits for the unit's start job: nspawn's READY=1 and ExecStartPost's address.
        proc.run(["systemctl", "start", self.unit(name)], capture=True)

    def nspawn_pid(self, name: str) -> int | None:
        pid = self._show(name, "MainPID").get("MainPID", "0")
        return int(pid) if pid.isdigit() and pid != "0" else None

    def ended(self, name: str) -> bool:
        return unit_ended(self._show(name, "ActiveState", "LoadState", "Job"))

    def ready(self, name: str) -> bool | None:
        return self._show(name, "ActiveState").get("ActiveState") == "active"

    def exit_status(self, name: str, *, patience: float = 2.0) -> int | None:
        """Written by the unit's ExecStopPost (`status_command`)."""
        deadline = time.monotonic() + patience
        while True:
            with contextlib.suppress(OSError, ValueError):
                return int(self.layout.boot_status(name).read_text())
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def _stop_unit(self, name: str, *, wait: bool = True) -> None:
        # The machine's unit first: the console keeper holds its terminal until nspawn is gone.
        block = [] if wait else ["--no-block"]
        units = [self.unit(name), self.console_unit(name)]
        for unit in units:
            proc.run(["systemctl", "stop", *block, unit], check=False, capture=True)
        proc.run(["systemctl", "reset-failed", *units], check=False, capture=True)

    def _inside_unit(self, name: str) -> bool:
        """Whether this process runs in the unit (its ExecStopPost), which must not wait for the unit."""
        try:
            own = Path("/proc/self/cgroup").read_text()
        except OSError:
            return False
        return f"/{SLICE}/{self.unit(name)}/" in own or own.rstrip().endswith(f"/{SLICE}/{self.unit(name)}")

    def release(self, name: str) -> None:
        # Waits for the unit to be gone (its ExecStopPost's `veneer _reap` finds the caller's lock taken
        # and ends at once), unless this is that ExecStopPost.
        self._stop_unit(name, wait=not self._inside_unit(name))
        for path in (self.layout.boot_status(name), self.layout.console_tty(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def remove_cgroups(self, name: str) -> None:
        pass  # systemd removes the unit's cgroup with the unit

    def set_limits(self, name: str, limits: Limits) -> None:
        proc.run(["systemctl", "set-property", "--runtime", self.unit(name), *limit_properties(limits)])

    def set_frozen(self, name: str, frozen: bool) -> None:
        # systemd freezes the unit's cgroup (cgroup.freeze) and waits until the kernel reports it frozen.
        proc.run(["systemctl", "freeze" if frozen else "thaw", self.unit(name)], capture=True)

    def accounting_cgroup(self, name: str, *, boot: bool) -> str:
        # The whole unit (nspawn, the payload and the control processes); a `run` is a scope (`confine`).
        unit = self.unit(name) if boot else self.unit(name).removesuffix(".service") + ".scope"
        return f"{SLICE}/{unit}"

    def read_log(self, name: str, *, lines: int | None) -> bytes:
        return console.read_log(self.layout.console_log(name), lines=lines)

    def follow_log(self, name: str, *, lines: int | None, running: Callable[[], bool]) -> Iterator[bytes]:
        return console.follow_log(self.layout.console_log(name), lines=lines, running=running)

    def console_argv(self, name: str) -> list[str]:
        return console.attach_argv(self.layout.console_socket(name), name)
