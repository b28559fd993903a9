"""`veneer network ls|inspect` and `veneer doctor`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from veneer.cli.args import layout_of
from veneer.cli.output import print_json, print_table

if TYPE_CHECKING:
    from veneer.config.layout import Layout


def register(verbs: Any) -> None:
    network = verbs.add_parser("network", help="the networks machines are on")
    sub = network.add_subparsers(dest="network_verb", metavar="COMMAND", parser_class=type(network))
    sub.required = True
    ls = sub.add_parser("ls", help="list networks")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_ls)
    inspect = sub.add_parser("inspect", help="a network's settings, state and machines")
    inspect.add_argument("name", nargs="?", default="nat", help="nat (default) or bridge:BRIDGE")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=cmd_inspect)

    subnet = sub.add_parser("subnet", help="show the nat network's subnet, or move it (machines stopped)")
    subnet.add_argument(
        "subnet",
        nargs="?",
        metavar="SUBNET|auto",
        help="e.g. 10.250.7.0/24; auto: the free one doctor proposes",
    )
    subnet.set_defaults(handler=cmd_subnet)

    doctor = verbs.add_parser(
        "doctor", help="what would stop machines or their networking on this host, and how to fix it"
    )
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(handler=cmd_doctor)


def networks(layout: Layout) -> list[dict[str, Any]]:
    """The nat network and every host bridge machines use, with their machines."""
    from veneer.machines.inspect import list_machines
    from veneer.network import dns, nat
    from veneer.network.ipam import load_network_config
    from veneer.network.links import link_exists

    config = load_network_config(layout.network_config)
    machines = list_machines(layout)
    nat_machines = [m for m in machines if m.network == "nat"]
    result: list[dict[str, Any]] = [
        {
            "name": "nat",
            "bridge": config.bridge if config else layout.nat_bridge,
            "subnet": str(config.pool.subnet) if config else None,
            "gateway": str(config.pool.gateway) if config else None,
            "dns": list(config.dns) if config else [],
            "up": config is not None and link_exists(config.bridge),
            "nftables": nat.table_exists(layout.nat_table),
            "dnsmasq_pid": dns.running_pid(layout.network_run),
            "machines": [
                {
                    "name": m.name,
                    "state": m.state.value,
                    "address": _address(layout, m.name),
                    "ports": m.ports,
                }
                for m in nat_machines
            ],
        }
    ]
    for bridge in sorted({m.network for m in machines if m.network.startswith("bridge:")}):
        on_it = [m for m in machines if m.network == bridge]
        result.append(
            {
                "name": bridge,
                "bridge": bridge.partition(":")[2],
                "up": link_exists(bridge.partition(":")[2]),
                "machines": [{"name": m.name, "state": m.state.value} for m in on_it],
            }
        )
    return result


def _address(layout: Layout, name: str) -> str | None:
    from veneer.config.settings import parse_machine_name
    from veneer.machines.state import load_machine

    return load_machine(layout, parse_machine_name(name)).address


def cmd_ls(args: argparse.Namespace) -> int:
    found = networks(layout_of(args))
    if args.json:
        print_json(found)
        return 0
    rows = [
        (n["name"], n["bridge"], n.get("subnet") or "-", "up" if n["up"] else "down", len(n["machines"]))
        for n in found
    ]
    print_table(("NETWORK", "BRIDGE", "SUBNET", "STATE", "MACHINES"), rows)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from veneer.errors import UsageError

    found = {n["name"]: n for n in networks(layout_of(args))}
    if args.name not in found:
        raise UsageError(f"No network '{args.name}'", hint=f"Networks: {', '.join(found)}.")
    network = found[args.name]
    if args.json:
        print_json(network)
        return 0
    for key, value in network.items():
        if key != "machines":
            print(f"{key + ':':12} {value if value not in (None, []) else '-'}")
    print()
    rows = [(m["name"], m["state"], m.get("address") or "-", ", ".join(m.get("ports", [])) or "-")
            for m in network["machines"]]  # fmt: skip
    print_table(("MACHINE", "STATE", "ADDRESS", "PORTS"), rows)
    return 0


def cmd_subnet(args: argparse.Namespace) -> int:
    from veneer.machines.subnet import parse_subnet, set_nat_subnet
    from veneer.network.ipam import load_network_config

    layout = layout_of(args)
    if args.subnet is None:
        config = load_network_config(layout.network_config)
        print(config.pool.subnet if config else "- (chosen when the first nat machine is made)")
        return 0
    config, moved = set_nat_subnet(layout, None if args.subnet == "auto" else parse_subnet(args.subnet))
    print(f"The nat network is {config.pool.subnet} (gateway {config.pool.gateway}).")
    for name, address in moved.items():
        print(f"Machine '{name}': {address}.")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from veneer.network.doctor import diagnose
    from veneer.network.ipam import load_network_config
    from veneer.runtime.cgroups import Hierarchies
    from veneer.runtime.hostcheck import check_supervisor
    from veneer.runtime.supervisor import detect_supervisor

    layout = layout_of(args)
    config = load_network_config(layout.network_config)
    findings = [
        *check_supervisor(detect_supervisor(), Hierarchies.detect()),
        *diagnose(config, table=layout.nat_table, run_dir=layout.network_run),
    ]
    if args.json:
        print_json([{"ok": f.ok, "check": f.check, "message": f.message, "fix": f.fix} for f in findings])
    else:
        for f in findings:
            print(f"{'ok  ' if f.ok else 'FAIL'} {f.check}: {f.message}")
            if not f.ok and f.fix:
                print(f"     fix: {f.fix}")
    return 0 if all(f.ok for f in findings) else 1
