"""What `--help` shows beyond the options: each command's description and examples, shown defaults, and
suggestions for a mistyped command or option.

The verb modules declare options and a one-line `help`; this module turns that line into the command's
description and adds the examples below, so every command documents itself the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator

# Per command (as typed after `veneer`), a few command lines a newcomer can copy.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "veneer image create deb --debootstrap bookworm",
        "veneer create web1 --from deb --port 8080:80",
        "veneer start web1 && veneer shell web1",
        "veneer image update deb -- apt-get -y upgrade && veneer rebase --all --image deb",
    ),
    "image": ("veneer image create deb --debootstrap bookworm", "veneer image list"),
    "image create": (
        "veneer image create bb --busybox",
        "veneer image create deb --debootstrap bookworm --packages openssh-server --timezone UTC",
        "veneer image create arch --pacstrap base,vim,sudo --user kang:wheel --enable systemd-networkd",
    ),
    "image pull": ("veneer image pull deb debian:bookworm", "veneer image pull app 127.0.0.1:5000/app:1.0"),
    "image import": (
        "veneer image import deb rootfs.tar.zst",
        "veneer image import app ./oci-layout --tag 1.0",
    ),
    "image export": ("veneer image export deb deb.tar.zst", "veneer image export deb deb.oci --format oci"),
    "image list": ("veneer image list", "veneer image list --json"),
    "image show": ("veneer image show deb", "veneer image show deb --json"),
    "image update": (
        "veneer image update deb -- sh -c "
        "'apt-get update && apt-get install -y hello && apt-get clean && rm -rf /var/lib/apt/lists/*'",
        "veneer image update deb --rebase -- apt-get -y upgrade",
    ),
    "image rollback": ("veneer image rollback deb", "veneer image rollback deb --to 1"),
    "image squash": ("veneer image squash deb",),
    "image prune": ("veneer image prune", "veneer image prune deb"),
    "image rm": ("veneer image rm deb", "veneer image rm --force deb bb"),
    "export": ("veneer export web1 web1.tar.gz",),
    "create": (
        "veneer create web1 --from deb",
        "veneer create web1 --from deb --port 8080:80 --memory 512M --cpus 0.5",
    ),
    "set": ("veneer set web1 --memory 1G --pids 500", "veneer set web1 --network bridge:br0"),
    "list": ("veneer list", "veneer list --json"),
    "status": ("veneer status web1", "veneer status web1 --json"),
    "rm": ("veneer rm web1 web2", "veneer rm --force web1"),
    "cp": (
        "veneer cp ./site.conf web1:/etc/nginx/conf.d/",
        "veneer cp --uid 33 --gid 33 ./www web1:/var/www",
        "veneer cp web1:/var/log/nginx ./logs",
        "veneer cp web1:/etc - | tar -t",
    ),
    "clone": ("veneer clone web1 web2", "veneer clone web1 web2 --from-snapshot before-upgrade"),
    "snapshot": (
        "veneer snapshot web1 before-upgrade",
        "veneer snapshot web1 --keep 7",
        "veneer snapshot list web1",
        "veneer snapshot rm web1 before-upgrade",
    ),
    "restore": ("veneer stop web1 && veneer restore web1 before-upgrade && veneer start web1",),
    "stats": (
        "veneer stats",
        "veneer stats web1 --watch",
        "veneer stats --json",
        "veneer stats --format openmetrics",
        "veneer stats --format prometheus > /var/lib/node_exporter/textfile/veneer.prom.tmp",
    ),
    "copy": (
        "veneer copy web1 root@host2",
        "veneer copy -p 2222 web1 admin@10.0.0.2:web1-copy",
        "veneer copy --from root@host2 web1 web1-here",
    ),
    "move": ("veneer move web1 root@host2", "veneer move web1 root@host2 --remote-veneer 'sudo veneer'"),
    "rename": ("veneer rename web1 www",),
    "diff": ("veneer diff web1", "veneer diff web1 --json"),
    "mount": ("veneer mount web1",),
    "umount": ("veneer umount web1",),
    "tree": ("veneer tree", "veneer tree --json"),
    "run": (
        "veneer run web1 -- cat /etc/os-release",
        "veneer run --ephemeral --from deb -- apt-cache policy",
    ),
    "start": ("veneer start web1", "veneer start --wait web1 web2"),
    "stop": ("veneer stop web1", "veneer stop --timeout 10 web1 web2"),
    "restart": ("veneer restart web1",),
    "kill": ("veneer kill web1", "veneer kill web1 --signal KILL"),
    "exec": ("veneer exec web1 -- ps aux", "veneer exec -u www-data -w /srv -e DEBUG=1 web1 -- ./run.sh"),
    "shell": ("veneer shell web1", "veneer shell -u kang web1"),
    "console": ("veneer console web1",),
    "logs": ("veneer logs web1", "veneer logs -f -n 20 web1"),
    "journal": ("veneer journal web1", "veneer journal web1 -- -u ssh -n 50"),
    "enable": ("veneer enable web1", "veneer enable web1 --print"),
    "disable": ("veneer disable web1",),
    "network": ("veneer network ls", "veneer network inspect nat"),
    "network ls": ("veneer network ls", "veneer network ls --json"),
    "network subnet": (
        "veneer network subnet",
        "veneer network subnet auto",
        "veneer network subnet 10.250.7.0/24",
    ),
    "network inspect": ("veneer network inspect", "veneer network inspect bridge:br0 --json"),
    "doctor": ("veneer doctor",),
    "rebase": (
        "veneer rebase web1 --dry-run",
        "veneer rebase --all --image deb",
        "veneer rebase --undo web1",
    ),
    "commit": ("veneer commit web1 web-image", "veneer commit web1 --revision"),
    "completion": ("veneer completion zsh > ~/.zfunc/_veneer", 'eval "$(veneer completion bash)"'),
    "help": ("veneer help create", "veneer help image update"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' lines as written and appends an option's default where it says something."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        # argparse makes a formatter for every option declared and asks shutil for the width: shutil (and
        # bz2 and lzma under it) would load with every command for nothing else.
        width = width if width is not None else _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text is None or "default" in text or not action.option_strings:
            return text
        default = action.default
        if default is None or default is argparse.SUPPRESS or isinstance(default, bool | list | tuple):
            return text
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _terminal_columns() -> int:
    """The terminal's width as `shutil.get_terminal_size()` finds it: $COLUMNS, stdout's terminal, or 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    if sys.__stdout__ is None:
        return 80
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (ValueError, OSError):
        return 80


def subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str | None, argparse.ArgumentParser]]:
    """Every command below `parser`, depth first, as (words after `veneer`, one-line help, its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                words = f"{parser.prog.partition(' ')[2]} {name}".strip()
                yield words, helps.get(name), sub
                yield from subcommands(sub)


JSON_HELP = "print JSON for scripts (stable keys)"


def document(parser: argparse.ArgumentParser) -> None:
    """Give every command its description (its help line, as a sentence) and its examples, and every
    listing's `--json` the same help."""
    parser.epilog = _examples("")
    for words, summary, sub in subcommands(parser):
        for action in sub._actions:
            if action.dest == "json" and action.help is None:
                action.help = JSON_HELP
        if summary and sub.description is None:
            sub.description = summary[0].upper() + summary[1:] + "."
        if sub.epilog is None:
            sub.epilog = _examples(words)


def _examples(words: str) -> str | None:
    lines = EXAMPLES.get(words)
    return "examples:\n" + "".join(f"  {line}\n" for line in lines) if lines else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' for the closest of `choices` to a mistyped `word`, or ''."""
    import difflib

    visible = [c for c in choices if not c.startswith("_")]
    close = difflib.get_close_matches(word, visible, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
