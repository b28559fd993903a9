"""Machine verbs: create, list, status, rm, clone, rename, diff, mount, umount, tree, run."""

from __future__ import annotations

import argparse
import signal
import time
from typing import TYPE_CHECKING, Any

from veneer.cli.args import bind, layout_of, network, port
from veneer.cli.output import duration, human_size, print_json, print_table, when
from veneer.config.values import (
    MachineName,
    parse_cpus,
    parse_env,
    parse_image_name,
    parse_machine_name,
    parse_memory,
    parse_pids,
    parse_snapshot_name,
    parse_workdir,
)
from veneer.errors import UsageError

if TYPE_CHECKING:
    from veneer.config.layout import Layout
    from veneer.machines.inspect import MachineStatus


def register(verbs: Any) -> None:
    create = verbs.add_parser("create", help="make a machine as an overlay child of an image")
    create.add_argument("name", type=parse_machine_name)
    create.add_argument(
        "--from", dest="image", required=True, type=parse_image_name, metavar="IMAGE", help="the base image"
    )
    create.add_argument("--revision", type=int, help="image revision (default: the latest)")
    create.add_argument(
        "--bind",
        action="append",
        type=bind,
        default=[],
        metavar="SRC[:DST[:OPTS]]",
        help="bind a host path on every run (repeatable)",
    )
    create.add_argument(
        "--privileged", action="store_true", help="no user namespace: container root is host root"
    )
    _network_options(create)
    _limit_options(create)
    create.set_defaults(handler=cmd_create)

    change = verbs.add_parser(
        "set", help="change a machine's limits (at once, if it runs) or network (while stopped)"
    )
    change.add_argument("name", type=parse_machine_name)
    _network_options(change, default=None)
    _limit_options(change)
    change.set_defaults(handler=cmd_set)

    lst = verbs.add_parser("list", help="list machines")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=cmd_list)

    status = verbs.add_parser("status", help="a machine's state and settings")
    status.add_argument("name", type=parse_machine_name)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    rm = verbs.add_parser("rm", help="remove machines and everything they wrote")
    rm.add_argument("names", nargs="+", type=parse_machine_name, metavar="NAME")
    rm.add_argument("--force", "-f", action="store_true", help="stop running machines first")
    rm.set_defaults(handler=cmd_rm)

    clone = verbs.add_parser("clone", help="copy a stopped machine, or a snapshot of one")
    clone.add_argument("source", type=parse_machine_name)
    clone.add_argument("name", type=parse_machine_name)
    clone.add_argument(
        "--from-snapshot", type=parse_snapshot_name, metavar="SNAP", help="copy this snapshot of SOURCE"
    )
    clone.set_defaults(handler=cmd_clone)

    rename = verbs.add_parser("rename", help="rename a stopped machine")
    rename.add_argument("old", type=parse_machine_name)
    rename.add_argument("new", type=parse_machine_name)
    rename.set_defaults(handler=cmd_rename)

    diff = verbs.add_parser("diff", help="what a machine added (A), changed (C) and deleted (D)")
    diff.add_argument("name", type=parse_machine_name)
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(handler=cmd_diff)

    mount = verbs.add_parser("mount", help="mount a machine's overlay and print where")
    mount.add_argument("name", type=parse_machine_name)
    mount.set_defaults(handler=cmd_mount)

    umount = verbs.add_parser("umount", help="unmount a machine's overlay")
    umount.add_argument("name", type=parse_machine_name)
    umount.set_defaults(handler=cmd_umount)

    tree = verbs.add_parser("tree", help="images, their revisions and the machines on each")
    tree.add_argument("--json", action="store_true")
    tree.set_defaults(handler=cmd_tree)

    run = verbs.add_parser(
        "run",
        help="run a command in a machine, in the foreground",
        usage="veneer run [OPTIONS] NAME [[--] CMD...]\n"
        "       veneer run [OPTIONS] --ephemeral --from IMAGE [[--] CMD...]",
    )
    run.add_argument("--ephemeral", action="store_true", help="in a throwaway child of --from IMAGE")
    run.add_argument("--from", dest="image", type=parse_image_name, metavar="IMAGE", help="with --ephemeral")
    run.add_argument("--user", "-u", help="run as this user of the machine")
    run.add_argument(
        "--env", "-e", action="append", type=parse_env, default=[], metavar="NAME=VALUE",
        help="set a variable for the command (repeatable)",
    )  # fmt: skip
    run.add_argument(
        "--workdir", "-w", type=parse_workdir, metavar="DIR", help="working directory inside the machine"
    )
    run.add_argument(
        "--entrypoint", type=parse_entrypoint, metavar="CMD|JSON",
        help="instead of the image's entrypoint (and Cmd): a program, or a JSON array; '' for none",
    )  # fmt: skip
    run.add_argument(
        "--bind", action="append", type=bind, default=[], metavar="SRC[:DST[:OPTS]]",
        help="bind a host path for this run (repeatable)",
    )  # fmt: skip
    run.add_argument("--network", type=network, help="this run only: nat, host, none or bridge:BRIDGE")
    run.add_argument("words", nargs=argparse.REMAINDER, metavar="NAME [--] CMD")
    run.set_defaults(handler=cmd_run)


def _network_options(parser: argparse.ArgumentParser, *, default: str | None = "nat") -> None:
    parser.add_argument(
        "--network", type=network, default=default, help="nat (default), host, none or bridge:BRIDGE"
    )
    parser.add_argument(
        "--port", "-p", action="append", type=port, default=None, dest="ports",
        metavar="[HOST_IP:]HOST_PORT:GUEST_PORT[/udp]",
        help="forward a host port, on HOST_IP only if given (repeatable; nat only)",
    )  # fmt: skip


def _limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory", type=parse_memory, metavar="SIZE", help="memory limit, e.g. 512M")
    parser.add_argument("--cpus", type=parse_cpus, metavar="N", help="CPU time limit in CPUs, e.g. 0.5")
    parser.add_argument("--pids", type=parse_pids, metavar="N", help="process limit, e.g. 500")


def cmd_create(args: argparse.Namespace) -> int:
    from veneer.config.settings import Limits
    from veneer.machines.lifecycle import create_machine

    record = create_machine(
        layout_of(args),
        args.name,
        args.image,
        revision=args.revision,
        privileged=args.privileged,
        network=args.network,
        ports=args.ports or (),
        binds=args.bind,
        limits=Limits(memory=args.memory, cpus=args.cpus, pids=args.pids),
    )
    if record.privileged:
        print(f"Warning: machine '{record.name}' is privileged: its root is the host's root.")
    print(f"Created machine '{record.name}' from '{record.image}' revision {record.revision}.")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from veneer.machines.lifecycle import change_machine

    record = change_machine(
        layout_of(args),
        args.name,
        network=args.network,
        ports=args.ports,
        memory=args.memory,
        cpus=args.cpus,
        pids=args.pids,
    )
    print(f"Machine '{record.name}': network {record.network}, limits {record.limits.describe()}.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from veneer.config.uidrange import last_id
    from veneer.machines.inspect import list_machines

    machines = list_machines(layout_of(args))
    if args.json:
        print_json([m.to_json() for m in machines])
        return 0
    rows = [
        (
            m.name,
            f"{m.image}@{m.revision}",
            m.state.value,
            m.pid or "-",
            m.network,
            human_size(m.disk_bytes),
            "privileged" if m.privileged or m.uid_base is None else f"{m.uid_base}-{last_id(m.uid_base)}",
        )
        for m in machines
    ]
    print_table(("NAME", "IMAGE", "STATE", "PID", "NETWORK", "DISK", "UIDS"), rows)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from veneer.config.settings import Limits
    from veneer.config.uidrange import last_id
    from veneer.machines.inspect import MachineState, machine_status

    status = machine_status(layout_of(args), args.name)
    if args.json:
        print_json(status.to_json())
        return 0
    layout = layout_of(args)
    uids = (
        "privileged (host root)"
        if status.uid_base is None
        else f"{status.uid_base}-{last_id(status.uid_base)} (user namespace)"
    )
    print(f"Machine:   {status.name}")
    print(f"Image:     {status.image} revision {status.revision}")
    print(f"State:     {_state_line(status)}")
    if status.state is MachineState.FAILED:
        print(f"Why:       {_failure(status)}")
    print(f"Network:   {status.network}")
    print(f"Address:   {', '.join(status.addresses) or '-'}")
    print(f"Ports:     {', '.join(status.ports) or '-'}")
    print(f"Limits:    {Limits.from_json(status.limits).describe()}")
    print(f"Cgroup:    {layout.cgroup(status.name)} (in each cgroup hierarchy, while it runs)")
    print(f"UIDs:      {uids}")
    print(f"Mounted:   {'yes' if status.mounted else 'no'}")
    print(f"Upper:     {status.upper} ({human_size(status.disk_bytes)})")
    if status.snapshots:
        size = human_size(status.snapshot_bytes)
        print(f"Snapshots: {status.snapshots} ({size}; 'veneer snapshot list {status.name}')")
    print(f"Created:   {when(status.created)}")
    if status.last_rebase is not None:
        rebase = status.last_rebase
        print(
            f"Rebased:   {when(rebase['created'])} from revision {rebase['from']['revision']} to "
            f"{rebase['to']['revision']}: {rebase['summary']} (undo: 'veneer rebase --undo {status.name}')"
        )
    return 0


def _state_line(status: MachineStatus) -> str:
    line = status.state.value
    if status.pid:
        line += f" (pid {status.pid}" + (f", {status.init}" if status.init else "") + ")"
    if status.started is not None:
        line += f", up {duration(time.time() - status.started)} since {when(status.started)}"
    return line


def _failure(status: MachineStatus) -> str:
    logs = f"see 'veneer logs {status.name}'"
    if status.exit_status is None:
        return f"its processes died without a clean stop (killed?); {logs}"
    if status.exit_status > 128:
        try:
            name = signal.Signals(status.exit_status - 128).name
        except ValueError:
            name = f"signal {status.exit_status - 128}"
        return f"it ended by itself with status {status.exit_status} ({name}), no stop asked; {logs}"
    return f"it ended by itself with status {status.exit_status}, no stop asked; {logs}"


def cmd_rm(args: argparse.Namespace) -> int:
    from veneer.machines.lifecycle import remove_machine

    for name in args.names:
        if args.force:
            stop_running(layout_of(args), name)
        remove_machine(layout_of(args), name)
        print(f"Removed machine '{name}'.")
    return 0


def stop_running(layout: Layout, name: MachineName) -> None:
    """Stop a machine on the way to removing it, saying so if it ran."""
    from veneer.machines.boot import stop_machine

    if stop_machine(layout, name):
        print(f"Stopped machine '{name}'.")


def cmd_clone(args: argparse.Namespace) -> int:
    from veneer.machines.lifecycle import clone_machine

    clone_machine(layout_of(args), args.source, args.name, snapshot=args.from_snapshot)
    what = f"snapshot '{args.from_snapshot}' of machine" if args.from_snapshot else "machine"
    print(f"Cloned {what} '{args.source}' into '{args.name}'.")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    from veneer.machines.lifecycle import rename_machine

    rename_machine(layout_of(args), args.old, args.new)
    print(f"Renamed machine '{args.old}' to '{args.new}'.")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from veneer.machines.lifecycle import diff_machine

    changes = diff_machine(layout_of(args), args.name)
    if args.json:
        print_json([{"kind": c.kind.value, "path": c.path} for c in sorted(changes, key=lambda c: c.path)])
        return 0
    for change in sorted(changes, key=lambda c: c.path):
        print(f"{change.kind.value} {change.path}")
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from veneer.machines.lifecycle import mount_machine

    print(mount_machine(layout_of(args), args.name))
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from veneer.machines.lifecycle import umount_machine

    umount_machine(layout_of(args), args.name)
    return 0


def cmd_tree(args: argparse.Namespace) -> int:
    from veneer.machines.inspect import store_tree

    tree = store_tree(layout_of(args))
    if args.json:
        print_json(tree)
        return 0
    for image in tree:
        print(f"{image['name']} ({human_size(image['size_bytes'])})")
        revisions = image["revisions"]
        for i, rev in enumerate(revisions):
            last_rev = i == len(revisions) - 1
            branch = "└──" if last_rev else "├──"
            print(f"{branch} rev {rev['revision']}  {when(rev['created'])}  {rev['origin']}")
            machines = rev["machines"]
            for j, m in enumerate(machines):
                branch = "└──" if j == len(machines) - 1 else "├──"
                print(f"{'    ' if last_rev else '│   '}{branch} {m['name']} ({m['state']})")
    return 0


def _split_run_words(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    words: list[str] = list(args.words)
    name = None
    if not args.ephemeral:
        if not words or words[0] == "--":
            raise UsageError("Missing machine name", hint="Use: veneer run NAME [--] CMD...")
        name = words.pop(0)
    elif args.image is None:
        raise UsageError(
            "--ephemeral needs --from IMAGE", hint="Use: veneer run --ephemeral --from IMAGE -- CMD"
        )
    if words and words[0] == "--":
        words.pop(0)
    elif words and words[0].startswith("-") and "--" in words:
        raise UsageError(
            f"Option '{words[0]}' after the machine name",
            hint="Options go before the name: veneer run [OPTIONS] NAME -- CMD.",
        )
    return name, words


def parse_entrypoint(text: str) -> tuple[str, ...]:
    """`--entrypoint`: one program, a JSON array of strings (as Podman takes it), or '' for none."""
    if not text.startswith("["):
        return (text,) if text else ()
    import json

    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError(f"invalid entrypoint {text!r}: not a JSON array of strings")
    return tuple(value)


def cmd_run(args: argparse.Namespace) -> int:
    from veneer.machines.run import RunOptions, run_machine

    name, command = _split_run_words(args)
    options = RunOptions(
        user=args.user,
        workdir=args.workdir,
        env=tuple(args.env),
        binds=tuple(args.bind),
        network=args.network,
        app=True,
        entrypoint=args.entrypoint,
    )
    if name is None:
        from veneer.machines.lifecycle import run_ephemeral  # its imports cost a run of a machine 20 ms

        return run_ephemeral(layout_of(args), args.image, command, options)
    return run_machine(layout_of(args), parse_machine_name(name), command, options)
