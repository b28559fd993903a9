"""Verbs for machines that run: start, stop, restart, kill, exec, shell, console, logs, journal."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from veneer.cli.args import layout_of
from veneer.config.values import MachineName, parse_env, parse_machine_name, parse_seconds, parse_workdir
from veneer.errors import UsageError

if TYPE_CHECKING:
    from veneer.machines.many import Outcome
    from veneer.machines.state import RuntimeRecord

T = TypeVar("T")


def _signal(text: str) -> int:
    name = text.upper() if text.upper().startswith("SIG") else f"SIG{text.upper()}"
    if text.isdigit():
        return int(text)
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"Unknown signal '{text}'", hint="Use a name such as TERM, KILL or USR2.") from None


def _line_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of lines (0 or more)")
    return count


def register(verbs: Any) -> None:
    start = verbs.add_parser("start", help="boot machines in the background")
    start.add_argument("names", nargs="+", type=parse_machine_name, metavar="NAME")
    start.add_argument("--wait", action="store_true", help="return once the machine reports ready")
    start.add_argument(
        "--timeout", type=parse_seconds, default=60.0, metavar="S", help="give up after S seconds"
    )
    start.set_defaults(handler=cmd_start)

    stop = verbs.add_parser("stop", help="power machines off (killed after --timeout)")
    stop.add_argument("names", nargs="+", type=parse_machine_name, metavar="NAME")
    stop.add_argument(
        "--timeout", type=parse_seconds, default=30.0, metavar="S", help="kill after S seconds"
    )
    stop.set_defaults(handler=cmd_stop)

    restart = verbs.add_parser("restart", help="stop, then start")
    restart.add_argument("names", nargs="+", type=parse_machine_name, metavar="NAME")
    restart.add_argument("--wait", action="store_true", help="return once the machine reports ready")
    restart.add_argument(
        "--timeout", type=parse_seconds, default=60.0, metavar="S", help="give up after S seconds"
    )
    restart.set_defaults(handler=cmd_restart)

    kill = verbs.add_parser("kill", help="send a signal to every process of a running machine")
    kill.add_argument("name", type=parse_machine_name)
    kill.add_argument("--signal", "-s", type=_signal, default=signal.SIGTERM, help="default TERM")
    kill.set_defaults(handler=cmd_kill)

    exe = verbs.add_parser("exec", help="run a command in a running machine",
                           usage="veneer exec [OPTIONS] NAME [--] CMD...")  # fmt: skip
    exe.add_argument("--user", "-u", help="run as this user of the machine (default: root)")
    exe.add_argument(
        "--env", "-e", action="append", type=parse_env, default=[], metavar="NAME=VALUE",
        help="set a variable for the command (repeatable)",
    )  # fmt: skip
    exe.add_argument(
        "--workdir",
        "-w",
        type=parse_workdir,
        metavar="DIR",
        help="working directory inside the machine (default: /)",
    )
    exe.add_argument("words", nargs=argparse.REMAINDER, metavar="NAME [--] CMD")
    exe.set_defaults(handler=cmd_exec)

    shell = verbs.add_parser("shell", help="a login shell in a running machine")
    shell.add_argument("name", type=parse_machine_name)
    shell.add_argument("--user", "-u", help="log in as this user of the machine (default: root)")
    shell.set_defaults(handler=cmd_shell)

    con = verbs.add_parser("console", help="attach to the boot console; Ctrl-] detaches")
    con.add_argument("name", type=parse_machine_name)
    con.set_defaults(handler=cmd_console)

    logs = verbs.add_parser("logs", help="the console output of the current or last boot")
    logs.add_argument("name", type=parse_machine_name)
    logs.add_argument("-f", "--follow", action="store_true", help="go on printing until the machine stops")
    logs.add_argument("-n", "--lines", type=_line_count, metavar="N", help="only the last N lines")
    logs.set_defaults(handler=cmd_logs)

    journal = verbs.add_parser("journal", help="the machine's own journal (systemd guests)")
    journal.add_argument("name", type=parse_machine_name)
    journal.add_argument("args", nargs=argparse.REMAINDER, metavar="-- JOURNALCTL-ARGS")
    journal.set_defaults(handler=cmd_journal)

    enable = verbs.add_parser("enable", help="start a machine at host boot (systemd hosts)")
    enable.add_argument("name", type=parse_machine_name)
    enable.add_argument("--print", action="store_true", help="print the unit instead of installing it")
    enable.set_defaults(handler=cmd_enable)

    disable = verbs.add_parser("disable", help="no longer start a machine at host boot")
    disable.add_argument("name", type=parse_machine_name)
    disable.set_defaults(handler=cmd_disable)

    boot = verbs.add_parser("_boot")  # an enabled machine's unit: set up, then become nspawn
    boot.add_argument("name", type=parse_machine_name)
    boot.set_defaults(handler=cmd_boot)

    started = verbs.add_parser("_started")  # an enabled machine's unit, once nspawn runs
    started.add_argument("name", type=parse_machine_name)
    started.set_defaults(handler=cmd_started)

    hold = verbs.add_parser("_console")  # a machine's console unit on systemd hosts: its terminal
    hold.add_argument("name", type=parse_machine_name)
    hold.set_defaults(handler=cmd_hold_console)

    reap = verbs.add_parser("_reap")  # run by the console keeper when a machine's nspawn exits
    reap.add_argument("name", type=parse_machine_name)
    reap.add_argument("rest", nargs="*")
    reap.set_defaults(handler=cmd_reap)


def _report_each(outcomes: Sequence[Outcome[T]], done: Callable[[Outcome[T]], str | None]) -> int:
    """Print what happened to each machine, in the order they were named; 1 if any failed. A single
    machine's failure is raised, for `cli.main` to report as for any command."""
    from veneer.cli.output import print_error

    status = 0
    for outcome in outcomes:
        message = done(outcome)
        if message is not None:
            print(message)
        elif outcome.error is not None and len(outcomes) == 1:
            raise outcome.error
        elif outcome.error is not None:
            print_error(outcome.error)
            status = 1
    return status


def cmd_start(args: argparse.Namespace) -> int:
    from veneer.errors import MachineRunning
    from veneer.machines.boot import start_machine
    from veneer.machines.many import for_each_machine

    layout = layout_of(args)

    def start(name: MachineName) -> RuntimeRecord:
        return start_machine(layout, name, wait=args.wait, timeout=args.timeout)

    def done(outcome: Outcome[RuntimeRecord]) -> str | None:
        if isinstance(
            outcome.error, MachineRunning
        ):  # as `systemctl start` of an active unit: not a failure
            return f"{outcome.error.message}."
        if outcome.value is None:
            return None
        return f"Started machine '{outcome.name}' ({outcome.value.init})."

    return _report_each(for_each_machine(args.names, start), done)


def cmd_stop(args: argparse.Namespace) -> int:
    from veneer.machines.boot import stop_machine
    from veneer.machines.many import for_each_machine

    layout = layout_of(args)

    def done(outcome: Outcome[bool]) -> str | None:
        if outcome.error is not None:
            return None
        if outcome.value:
            return f"Stopped machine '{outcome.name}'."
        return f"Machine '{outcome.name}' is not running."

    outcomes = for_each_machine(args.names, lambda name: stop_machine(layout, name, timeout=args.timeout))
    return _report_each(outcomes, done)


def cmd_restart(args: argparse.Namespace) -> int:
    from veneer.machines.boot import restart_machine
    from veneer.machines.many import for_each_machine

    layout = layout_of(args)

    def restart(name: MachineName) -> RuntimeRecord:
        return restart_machine(layout, name, wait=args.wait, timeout=args.timeout)

    def done(outcome: Outcome[RuntimeRecord]) -> str | None:
        return None if outcome.error is not None else f"Restarted machine '{outcome.name}'."

    return _report_each(for_each_machine(args.names, restart), done)


def cmd_kill(args: argparse.Namespace) -> int:
    from veneer.machines.boot import kill_machine

    kill_machine(layout_of(args), args.name, signal_number=args.signal)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from veneer.machines.inside import exec_in_machine

    words = list(args.words)
    if not words or words[0] == "--":
        raise UsageError("Missing machine name", hint="Use: veneer exec NAME [--] CMD...")
    name = parse_machine_name(words.pop(0))
    if words and words[0] == "--":
        words.pop(0)
    return exec_in_machine(layout_of(args), name, words, user=args.user, workdir=args.workdir, env=args.env)


def cmd_shell(args: argparse.Namespace) -> int:
    from veneer.machines.inside import shell_in_machine

    return shell_in_machine(layout_of(args), args.name, user=args.user)


def cmd_console(args: argparse.Namespace) -> int:
    from veneer.machines.inside import attach_console

    def connected() -> None:
        print(f"Connected to the console of '{args.name}'. Press Ctrl-] to detach.", file=sys.stderr)

    return attach_console(layout_of(args), args.name, on_attach=connected)


def cmd_logs(args: argparse.Namespace) -> int:
    from veneer.machines.inside import follow_logs, read_logs
    from veneer.util.terminal import TerminalText

    out = sys.stdout.buffer
    # A terminal would obey the control sequences a machine writes to its console; a pipe gets the bytes.
    shown = TerminalText() if out.isatty() else None

    def write(chunk: bytes) -> None:
        out.write(shown.feed(chunk).encode() if shown else chunk)
        out.flush()

    if args.follow:
        for chunk in follow_logs(layout_of(args), args.name, lines=args.lines):
            write(chunk)
    else:
        write(read_logs(layout_of(args), args.name, lines=args.lines))
    if shown:
        out.write(shown.finish().encode())
    return 0


def cmd_journal(args: argparse.Namespace) -> int:
    from veneer.machines.inside import show_journal

    extra = args.args[1:] if args.args[:1] == ["--"] else args.args
    return show_journal(layout_of(args), args.name, extra)


def cmd_reap(args: argparse.Namespace) -> int:
    from veneer.machines.boot import reap_machine

    # Run by the console keeper, which ends (signalling its jobs) once the session this removes is gone.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    reap_machine(layout_of(args), args.name)
    return 0


def cmd_hold_console(args: argparse.Namespace) -> int:
    from veneer.runtime.systemd_unit import hold_console

    hold_console(layout_of(args), args.name)
    return 0


def cmd_boot(args: argparse.Namespace) -> int:
    from veneer.machines.boot import boot_in_unit
    from veneer.runtime.nspawn import NSPAWN_ENV
    from veneer.util.proc import replace_process

    replace_process(boot_in_unit(layout_of(args), args.name), env=NSPAWN_ENV)
    return 1


def cmd_started(args: argparse.Namespace) -> int:
    from veneer.machines.boot import configure_started

    configure_started(layout_of(args), args.name)
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    from veneer.machines.state import load_machine
    from veneer.machines.units import console_unit_text, enable_machine, unit_text, veneer_argv
    from veneer.runtime.systemd_unit import UNIT_DIR, console_unit_name, unit_name

    layout = layout_of(args)
    if args.print:
        load_machine(layout, args.name)
        print(f"# {UNIT_DIR / unit_name(layout, args.name)}")
        print(unit_text(layout, args.name, veneer_argv()))
        print(f"# {UNIT_DIR / console_unit_name(layout, args.name)}")
        print(console_unit_text(layout, args.name, veneer_argv()), end="")
        return 0
    path = enable_machine(layout, args.name)
    print(f"Machine '{args.name}' starts at boot ({path}).")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    from veneer.machines.units import disable_machine

    if disable_machine(layout_of(args), args.name):
        print(f"Machine '{args.name}' no longer starts at boot.")
    else:
        print(f"Machine '{args.name}' was not enabled.")
    return 0
