"""What the commands' arguments share: the store a command works on, and the options whose values are
paths or settings (a network, a port, a bind).

Each loads pathlib, `config.layout` or `config.settings` (and dataclasses under them) once a command line
is parsed or run, not when the parser is built: `veneer --help` builds every command's parser and needs
none of them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from veneer.config.layout import Layout
    from veneer.config.settings import Bind, Network, Port


def layout_of(args: argparse.Namespace) -> Layout:
    """The store `--root` names, else $VENEER_ROOT's, else the default one (`Layout.from_env`)."""
    from veneer.config.layout import Layout

    return Layout.from_env(args.root)


def as_path(text: str) -> Path:
    """`type=` of a path option."""
    from pathlib import Path

    return Path(text)


def network(text: str) -> Network:
    """`type=` of `--network` (`settings.parse_network`)."""
    from veneer.config.settings import parse_network

    return parse_network(text)


def port(text: str) -> Port:
    """`type=` of `--port` (`settings.parse_port`)."""
    from veneer.config.settings import parse_port

    return parse_port(text)


def bind(text: str) -> Bind:
    """`type=` of `--bind` (`settings.parse_bind`)."""
    from veneer.config.settings import parse_bind

    return parse_bind(text)
