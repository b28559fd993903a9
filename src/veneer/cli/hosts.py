"""Machines between hosts: `veneer copy` and `veneer move` over SSH, and `veneer _receive`, their other
end."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from veneer.cli.args import as_path, layout_of
from veneer.cli.output import human_size
from veneer.config.values import parse_machine_name
from veneer.errors import UsageError


def register(verbs: Any) -> None:
    for verb, summary in (
        ("copy", "copy a stopped machine to another host over SSH, or from one with --from"),
        ("move", "move a stopped machine to another host over SSH, or from one with --from"),
    ):
        parser = verbs.add_parser(
            verb, help=summary,
            usage=f"veneer {verb} [OPTIONS] NAME [USER@]HOST[:NEWNAME]\n"
            f"       veneer {verb} [OPTIONS] --from [USER@]HOST NAME [NEWNAME]",
        )  # fmt: skip
        parser.add_argument("name", type=parse_machine_name, metavar="NAME")
        parser.add_argument("dest", nargs="?", metavar="[USER@]HOST[:NEWNAME] | NEWNAME")
        parser.add_argument(
            "--from", dest="source", metavar="[USER@]HOST", help="fetch machine NAME of HOST to this host"
        )
        parser.add_argument("-p", "--port", type=int, help="the SSH port of HOST")
        parser.add_argument(
            "-i", "--identity", type=as_path, metavar="FILE", help="the SSH key to log in with"
        )
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
    send = verbs.add_parser("_send")  # the other end of copy --from and move --from, run over SSH
    send.add_argument("name", type=parse_machine_name)
    send.add_argument("--as", dest="new_name", type=parse_machine_name, required=True)
    send.add_argument("--layers", action="store_true", help="print the layers of the machine's revision")
    send.add_argument("--have", default="-", help="the layers the other host has, comma-separated (-: none)")
    send.add_argument("--move", action="store_true", help="remove the machine once the other host confirms")
    send.set_defaults(handler=cmd_send_stream)


def cmd_send(args: argparse.Namespace) -> int:
    from veneer.machines.send import SshOptions, fetch_machine, parse_destination, send_machine

    layout = layout_of(args)
    ssh = SshOptions(
        port=args.port, identity=args.identity, options=tuple(args.ssh_option), veneer=args.remote_veneer
    )
    done = "Moved" if args.move else "Copied"
    if args.source is not None:
        source = parse_destination(args.source)
        if source.name is not None:
            raise UsageError("--from names a host only", hint="Use --from [USER@]HOST NAME [NEWNAME].")
        new_name = None if args.dest is None else parse_machine_name(args.dest)
        received = fetch_machine(layout, source, args.name, new_name=new_name, ssh=ssh, move=args.move)
        print(
            f"{done} machine '{args.name}' of {source.target} here as '{received.record.name}' "
            f"({received.layers_received} image layers received)."
        )
        return 0
    if args.dest is None:
        raise UsageError(
            "Where to? Name the other host", hint="Use: veneer copy NAME [USER@]HOST[:NEWNAME]."
        )
    sent = send_machine(layout, args.name, parse_destination(args.dest), ssh=ssh, move=args.move)
    print(
        f"{done} machine '{args.name}' to {sent.target} as '{sent.name}' "
        f"({sent.layers_sent} of {sent.layers_total} image layers sent, {human_size(sent.bytes_sent)})."
    )
    return 0


def cmd_send_stream(args: argparse.Namespace) -> int:
    import json

    from veneer.machines.send import machine_layers, serve_machine

    layout = layout_of(args)
    if args.layers:
        print(json.dumps(machine_layers(layout, args.name, args.new_name).to_json()))
        return 0
    have = [] if args.have == "-" else args.have.split(",")
    sys.stdout.flush()
    serve_machine(layout, args.name, new_name=args.new_name, have=have, move=args.move,
                  out=sys.stdout.buffer, confirmations=sys.stdin.buffer)  # fmt: skip
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    import json

    from veneer.machines.receive import layers_present, receive_machine
    from veneer.machines.wire import WIRE_VERSION, parse_question

    layout = layout_of(args)
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
