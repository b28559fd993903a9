"""The command line: parse, call one library function, map errors to exit codes.

The only broad `except` in veneer lives in `main()`. Command modules import the library lazily inside
their handlers, so `veneer --help` and simple listings stay cheap to start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from veneer.errors import Error, UsageError

Handler = Callable[[argparse.Namespace], int]

EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"See '{self.prog} --help'.")


def build_parser() -> argparse.ArgumentParser:
    from veneer.cli import copy, image, machine, network, rebase, running

    parser = _Parser(
        prog="veneer",
        description="Lightweight Linux system containers: overlay children of base images, "
        "run with systemd-nspawn.",
    )
    parser.add_argument(
        "--root", type=Path, help="state directory (default $VENEER_ROOT or /var/lib/veneer)"
    )
    parser.add_argument("--debug", action="store_true", help="log every command run; tracebacks on errors")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    verbs.required = True
    image.register(verbs)
    machine.register(verbs)
    running.register(verbs)
    network.register(verbs)
    rebase.register(verbs)
    copy.register(verbs)
    return parser


def _setup_logging(debug: bool) -> None:
    # Progress messages go to a terminal only: when stderr is piped veneer is quiet but for warnings.
    level = logging.DEBUG if debug else logging.INFO if sys.stderr.isatty() else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the veneer command line; return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        args = build_parser().parse_args(args_list)
        _setup_logging(args.debug)
        handler: Handler = args.handler
        return handler(args)
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
    except KeyboardInterrupt:
        print("veneer: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the one place that turns any failure into a message
        if debug:
            raise
        print(f"veneer: unexpected error: {e!r}", file=sys.stderr)
        print("  Run again with --debug for the traceback, and report it.", file=sys.stderr)
        return EXIT_FAILED


def _report(error: Error, debug: bool) -> None:
    if debug:
        logging.getLogger("veneer").debug("Traceback", exc_info=error)
    print(f"veneer: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"  {error.hint}", file=sys.stderr)
