"""The command line: parse, call one library function, map errors to exit codes.

The only broad `except` in veneer lives in `main()`. Command modules import the library lazily inside
their handlers, so `veneer --help` and simple listings stay cheap to start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from veneer.cli.args import as_path
from veneer.errors import Error, UsageError

Handler = Callable[[argparse.Namespace], int]

EXIT_FAILED = 1
EXIT_USAGE = 2
# What a shell reports for a tool killed by SIGPIPE (128 + 13), as `ls | head -1` does with coreutils: a
# closed pipe is no failure of veneer's, yet `set -o pipefail` scripts still see the output was cut short.
EXIT_BROKEN_PIPE = 141


# Signals that end a command early, as Ctrl-C does: every `finally` on the way out still cleans up.
ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM or SIGHUP to veneer: unwinds like KeyboardInterrupt (no `except Exception` catches it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _end_early(signum: int, _frame: object) -> None:
    # Once: the cleanup that the exception now runs (children killed, staging removed) must not be cut
    # short by a second Ctrl-C or a supervisor's repeated SIGTERM.
    for sig in ENDING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from veneer.cli.help import HelpFormatter

        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def _print_message(self, message: str, file: Any = None) -> None:
        # argparse ignores a failed write: a help longer than stdout's buffer into a closed pipe would
        # end with status 0 and the text lost. Raised, it ends as every closed pipe does (141).
        if message:
            (file or sys.stderr).write(message)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"See '{self.prog} --help'.")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not self._subparsers:
            # A command's own parser says what it does not know, so the hint names the command's help.
            self._refuse_unknown(extras)
        return parsed, extras

    def _refuse_unknown(self, extras: list[str]) -> None:
        from veneer.cli.help import did_you_mean

        option = next((word for word in extras if word.startswith("-")), None)
        if option is None:
            raise UsageError(
                f"Unexpected argument(s): {' '.join(extras)}", hint=f"See '{self.prog} --help'."
            )
        word = option.partition("=")[0]
        raise UsageError(
            f"Unknown option '{word}' for '{self.prog}'",
            hint=f"{did_you_mean(word, self._option_string_actions)} See '{self.prog} --help'.".lstrip(),
        )

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            from veneer.cli.help import did_you_mean

            raise UsageError(
                f"Unknown command '{value}' for '{self.prog}'",
                hint=f"{did_you_mean(value, action.choices)} See '{self.prog} --help'.".lstrip(),
            )
        super()._check_value(action, value)


# The module that declares each command, in the order `--help` lists them. A command line that names one
# builds that module's part of the parser alone (building all of it is a fifth of `veneer list`); anything
# else (`--help`, `help`, completion, a mistyped command) builds all. Unit tests check the table against
# the whole parser.
VERB_MODULES = {
    "image": "image",
    "export": "image",
    **dict.fromkeys(
        (
            "create",
            "set",
            "list",
            "status",
            "rm",
            "clone",
            "rename",
            "diff",
            "mount",
            "umount",
            "tree",
            "run",
        ),
        "machine",
    ),
    **dict.fromkeys(
        ("start", "stop", "restart", "kill", "exec", "shell", "console", "logs", "journal", "enable"),
        "running",
    ),
    **dict.fromkeys(("disable", "_boot", "_started", "_console", "_reap"), "running"),
    "network": "network",
    "doctor": "network",
    "rebase": "rebase",
    "commit": "rebase",
    "cp": "copy",
    "snapshot": "snapshot",
    "restore": "snapshot",
    "stats": "stats",
    **dict.fromkeys(("copy", "move", "_receive", "_send"), "hosts"),
}
CLI_MODULES = (
    "image", "machine", "running", "network", "rebase", "copy", "snapshot", "stats", "hosts", "completion",
)  # fmt: skip


def named_verb(argv: Sequence[str]) -> str | None:
    """The command a command line names, if it has one of the global options at most before it."""
    words = iter(argv)
    for word in words:
        if word == "--root":
            next(words, None)
        elif word == "--debug" or word.startswith("--root="):
            continue
        else:
            return None if word.startswith("-") else word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser: all of it, or the part that parses `argv`'s command."""
    from importlib import import_module

    from veneer.cli.help import document

    parser = _Parser(
        prog="veneer",
        description="Lightweight Linux system containers: overlay children of base images, "
        "run with systemd-nspawn.",
    )
    parser.add_argument(
        "--root", type=as_path, help="state directory (default $VENEER_ROOT or /var/lib/veneer)"
    )
    parser.add_argument("--debug", action="store_true", help="log every command run; tracebacks on errors")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    verbs.required = True
    verb = None if argv is None else named_verb(argv)
    for name in (VERB_MODULES[verb],) if verb in VERB_MODULES else CLI_MODULES:
        module = import_module(f"veneer.cli.{name}")
        if name == "completion":
            module.register(verbs, parser)  # reads the whole parser
        else:
            module.register(verbs)
    document(parser)
    return parser


def _setup_logging(debug: bool) -> None:
    import logging  # not for `--help`, which has ended before this

    # Progress messages go to a terminal only: when stderr is piped veneer is quiet but for warnings.
    level = logging.DEBUG if debug else logging.INFO if sys.stderr.isatty() else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _cache_argparse_translations() -> None:
    """argparse translates its headings through gettext for each of the ~50 parsers made per command, and
    gettext searches the disk for a catalogue every time (a third of building the parser): remember the
    answers, which cannot change within one command."""
    import functools
    import gettext

    if not hasattr(argparse._, "cache_info"):  # type: ignore[attr-defined]
        argparse._ = functools.cache(gettext.gettext)  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the veneer command line; return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    _cache_argparse_translations()
    previous = {sig: signal.signal(sig, _end_early) for sig in ENDING_SIGNALS}
    try:
        return _run(args_list)
    finally:  # as they were, for a caller that goes on (tests run main() in their own process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args_list: list[str]) -> int:
    debug = "--debug" in args_list
    try:
        try:
            args = build_parser(args_list).parse_args(args_list)
        except SystemExit as e:  # after --help: argparse printed, and it ignores a write that failed
            sys.stdout.flush()
            return e.code if isinstance(e.code, int) else 0
        _setup_logging(args.debug)
        handler: Handler = args.handler
        status = handler(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except UsageError as e:
        _report(e, debug)
        return EXIT_USAGE
    except Error as e:
        _report(e, debug)
        return EXIT_FAILED
    except PermissionError as e:
        _report(
            Error(f"Permission denied: {e.filename or e}", hint="veneer needs root: run it with sudo."),
            debug,
        )
        return EXIT_FAILED
    except (KeyboardInterrupt, Terminated) as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        name = signal.Signals(signum).name
        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            print(
                f"veneer: interrupted by {name}; what it had started was ended and cleaned up.",
                file=sys.stderr,
            )
        return 128 + signum
    except Exception as e:  # the one place that turns any failure into a message
        if debug:
            raise
        print(f"veneer: unexpected error: {e!r}", file=sys.stderr)
        print("  Run again with --debug for the traceback, and report it.", file=sys.stderr)
        return EXIT_FAILED


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit of what is still buffered cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _report(error: Error, debug: bool) -> None:
    if debug:
        import logging

        logging.getLogger("veneer").debug("Traceback", exc_info=error)
    print(f"veneer: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"  {error.hint}", file=sys.stderr)
