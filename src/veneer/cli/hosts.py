"""Machines between hosts: `veneer copy` and `veneer move` over SSH, and `veneer _receive`, their other
end."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from veneer.cli.output import human_size
from veneer.config.layout import Layout
from veneer.config.settings import parse_machine_name


def register(verbs: Any) -> None:
    for verb, summary in (
        ("copy", "copy a stopped machine to another host over SSH"),
        ("move", "move a stopped machine to another host over SSH (removed here once it arrived)"),
    ):
        parser = verbs.add_parser(verb, help=summary)
        parser.add_argument("name", type=parse_machine_name, metavar="NAME")
        parser.add_argument("dest", metavar="[USER@]HOST[:NEWNAME]")
        parser.add_argument("-p", "--port", type=int, help="the SSH port of HOST")
        parser.add_argument("-i", "--identity", type=Path, metavar="FILE", help="the SSH key to log in with")
        parser.add_argument(
            "-o", "--ssh-option", action="append", default=[], metavar="OPTION=VALUE",
            help="an ssh option (repeatable), e.g. -o StrictHostKeyChecking=yes",
        )  # fmt: skip
        parser.add_argument(
            "--remote-veneer", default="veneer", metavar="COMMAND", help="the veneer command on HOST"
        )
        parser.set_defaults(handler=cmd_send, move=verb == "move")
    receive = verbs.add_parser("_receive")  # the other end of copy and move, run over SSH
    receive.add_argument("--layers", action="store_true", help="answer which layers this host has")
    receive.set_defaults(handler=cmd_receive)


def cmd_send(args: argparse.Namespace) -> int:
    from veneer.machines.send import SshOptions, parse_destination, send_machine

    layout = Layout.from_env(args.root)
    ssh = SshOptions(
        port=args.port, identity=args.identity, options=tuple(args.ssh_option), veneer=args.remote_veneer
    )
    sent = send_machine(layout, args.name, parse_destination(args.dest), ssh=ssh, move=args.move)
    print(
        f"{'Moved' if args.move else 'Copied'} machine '{args.name}' to {sent.target} as '{sent.name}' "
        f"({sent.layers_sent} of {sent.layers_total} image layers sent, {human_size(sent.bytes_sent)})."
    )
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    from veneer.machines.receive import layers_present, receive_machine
    from veneer.machines.wire import WIRE_VERSION, parse_question

    layout = Layout.from_env(args.root)
    if args.layers:
        have = layers_present(layout, parse_question(sys.stdin.buffer.read(1 << 20)))
        print(json.dumps({"version": WIRE_VERSION, "have": have}))
        return 0
    received = receive_machine(layout, sys.stdin.buffer)
    record = received.record
    answer = {"version": WIRE_VERSION, "name": record.name, "image": record.image,
              "revision": record.revision, "layers_received": received.layers_received}  # fmt: skip
    print(json.dumps(answer))
    return 0
