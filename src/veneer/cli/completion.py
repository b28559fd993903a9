"""Shell completion and `veneer help`, both read from the parser that `--help` prints.

`veneer completion bash|zsh` prints a small script that asks `veneer _complete` for candidates, so
completion always knows the commands and options of the veneer it runs, and the machine and image
names of the store (`--root` or `VENEER_ROOT`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from veneer.cli.args import as_path
from veneer.config.values import parse_image_name, parse_machine_name

if TYPE_CHECKING:
    from pathlib import Path

BASH = """\
# veneer completion for bash: eval "$(veneer completion bash)", e.g. in ~/.bashrc
_veneer() {
    local IFS=$'\\n'
    COMPREPLY=($(veneer _complete "$COMP_CWORD" "${COMP_WORDS[@]:1}" 2>/dev/null))
    [[ ${#COMPREPLY[@]} -eq 0 ]] && compopt -o default
    return 0
}
complete -F _veneer veneer
"""

ZSH = """\
#compdef veneer
# veneer completion for zsh: eval "$(veneer completion zsh)", e.g. in ~/.zshrc after compinit
_veneer() {
    local -a found
    found=("${(@f)$(veneer _complete $((CURRENT - 1)) "${(@)words[2,-1]}" 2>/dev/null)}")
    if (( ${#found[@]} )) && [[ -n ${found[1]} ]]; then
        compadd -a found
    else
        _files
    fi
}
compdef _veneer veneer
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH}


def register(verbs: Any, parser: argparse.ArgumentParser) -> None:
    """Add `completion`, `help` and `_complete`, which read `parser` (the whole command line)."""
    completion = verbs.add_parser("completion", help="print the shell completion script for bash or zsh")
    completion.add_argument("shell", choices=sorted(SCRIPTS), help="the shell to complete in")
    completion.set_defaults(handler=cmd_completion)

    help_ = verbs.add_parser("help", help="the help of a command, as 'veneer COMMAND --help' prints it")
    help_.add_argument("topic", nargs="*", metavar="COMMAND", help="e.g. create, or image create")
    help_.set_defaults(handler=cmd_help)

    complete = verbs.add_parser("_complete")  # asked by the completion scripts
    complete.add_argument("index", type=int)
    complete.add_argument("words", nargs=argparse.REMAINDER)
    complete.set_defaults(handler=cmd_complete)
    for sub in (help_, complete):
        sub.set_defaults(parser=parser)


def cmd_completion(args: argparse.Namespace) -> int:
    print(SCRIPTS[args.shell], end="")
    return 0


def cmd_help(args: argparse.Namespace) -> int:
    try:
        args.parser.parse_args([*args.topic, "--help"])  # prints the help, or says what is unknown
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    for candidate in candidates(args.parser, args.words, args.index - 1, root=args.root):
        print(candidate)
    return 0


def candidates(
    parser: argparse.ArgumentParser, words: Sequence[str], index: int, *, root: Path | None
) -> list[str]:
    """What may stand at `words[index]` (words after `veneer`), for the prefix typed there."""
    current = words[index] if 0 <= index < len(words) else ""
    expecting: argparse.Action | None = None
    for word in words[:index]:
        if word.startswith("--root="):
            root = as_path(word.partition("=")[2])
        if expecting is not None:
            if expecting.dest == "root":
                root = as_path(word)
            expecting = None
            continue
        sub = _subcommands(parser)
        if sub is not None and word in sub.choices:
            parser = sub.choices[word]
        elif word.startswith("-") and "=" not in word:
            action = parser._option_string_actions.get(word)
            if action is not None and action.nargs != 0:
                expecting = action
    if expecting is not None:
        found = list(_values(expecting, root))
    elif current.startswith("-"):
        found = [option for option in parser._option_string_actions if option.startswith("--")]
    elif (sub := _subcommands(parser)) is not None:
        found = [name for name in sub.choices if not name.startswith("_")]
    else:
        positionals = [a for a in parser._actions if not a.option_strings]
        found = [value for action in positionals for value in _values(action, root)]
    return sorted({c for c in found if c.startswith(current)})


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _values(action: argparse.Action, root: Path | None) -> Iterator[str]:
    """The values an argument takes: its choices, or the store's machines or images by its type."""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        yield from (str(c) for c in action.choices)
    elif action.type is parse_machine_name or action.metavar == "NAME [--] CMD":
        yield from _machine_names(root)
    elif action.type is parse_image_name:
        yield from _image_names(root)


def _machine_names(root: Path | None) -> list[str]:
    from veneer.config.layout import Layout
    from veneer.machines.state import list_machine_names

    layout = Layout.from_env(root)
    return list(list_machine_names(layout)) if layout.root.is_dir() else []


def _image_names(root: Path | None) -> list[str]:
    from veneer.config.layout import Layout

    layout = Layout.from_env(root)
    images = layout.root / "images"
    return sorted(entry.name for entry in os.scandir(images) if entry.is_dir()) if images.is_dir() else []
