"""`veneer image ...`: create, pull, import, export, list, show, update, rollback, squash, prune, rm."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from veneer.cli.args import as_path, bind, layout_of, network
from veneer.cli.output import human_size, print_json, print_table, when
from veneer.cli.rebase import add_rebase_options
from veneer.config.values import parse_image_name, parse_machine_name, parse_memory
from veneer.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from veneer.config.layout import Layout
    from veneer.images.registry import Credentials
    from veneer.images.runconfig import RunConfig


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item for item in text.split(",") if item)


def register(verbs: Any) -> None:
    image = verbs.add_parser("image", help="base images: create, pull, import, export, list, show, rm")
    sub = image.add_subparsers(dest="image_verb", metavar="COMMAND", parser_class=type(image))
    sub.required = True

    create = sub.add_parser("create", help="build a base image")
    create.add_argument("name", type=parse_image_name)
    source = create.add_mutually_exclusive_group()
    source.add_argument("--busybox", action="store_true", help="from the host's busybox-static (default)")
    source.add_argument("--debootstrap", metavar="SUITE", help="Debian/Ubuntu suite, e.g. bookworm")
    source.add_argument("--pacstrap", metavar="PKG,...", type=_csv, help="Arch packages, e.g. base,vim")
    source.add_argument("--from-dir", metavar="DIR", type=as_path, help="copy a root filesystem directory")
    source.add_argument("--from-tar", metavar="FILE", type=as_path, help="a root filesystem tarball")
    create.add_argument("--mirror", help="package mirror for --debootstrap")
    create.add_argument("--variant", help="debootstrap variant (default minbase)")
    create.add_argument("--pacman-conf", type=as_path, help="pacman.conf for --pacstrap")
    create.add_argument(
        "--user", action="append", default=[], metavar="NAME[:GROUP,...]", help="add a user (repeatable)"
    )
    create.add_argument("--locale", help="e.g. en_US.UTF-8")
    create.add_argument("--timezone", help="e.g. UTC or Europe/Paris")
    create.add_argument("--enable", type=_csv, default=(), metavar="UNIT,...", help="enable systemd units")
    create.add_argument(
        "--packages",
        type=_csv,
        default=(),
        metavar="PKG,...",
        help="install with the distribution's package manager",
    )
    create.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="CMD",
        help="run a shell command in the image (repeatable)",
    )
    create.set_defaults(handler=cmd_create)

    pull = sub.add_parser("pull", help="pull an image from a registry (OCI distribution API)")
    pull.add_argument("name", type=parse_image_name)
    pull.add_argument("reference", metavar="REF", help="e.g. debian:bookworm or HOST:PORT/REPO:TAG[@DIGEST]")
    pull.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="from an index (default: this host's)")
    pull.add_argument("--username", metavar="USER", help="with --password-stdin")
    pull.add_argument(
        "--password-stdin", action="store_true", help="read the password of --username from stdin"
    )
    pull.add_argument(
        "--authfile",
        metavar="FILE",
        type=as_path,
        help="auth.json of podman login (default: containers' auth.json, then ~/.docker/config.json)",
    )
    pull.add_argument(
        "--creds", metavar="USER:PASSWORD", help="deprecated: shows the password in the process list"
    )
    pull.add_argument("--plain-http", action="store_true", help="speak HTTP, not HTTPS (loopback: always)")
    _max_layer_size_option(pull)
    pull.set_defaults(handler=cmd_pull)

    imp = sub.add_parser(
        "import", help="import a tarball, OCI layout or archive, docker-archive, or raw disk image"
    )
    imp.add_argument("name", type=parse_image_name)
    imp.add_argument("source", metavar="SOURCE", type=as_path, help="a file or an OCI layout directory")
    imp.add_argument("--tag", help="which image of an archive or layout holding several")
    imp.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="from an index (default: this host's)")
    _max_layer_size_option(imp)
    imp.set_defaults(handler=cmd_import)

    exp = sub.add_parser("export", help="write an image as a tarball, OCI layout/archive or docker-archive")
    exp.add_argument("name", type=parse_image_name)
    exp.add_argument(
        "dest", metavar="DEST", type=parse_export_dest, help="a new file (a new directory for --format oci)"
    )
    exp.add_argument(
        "--format",
        dest="fmt",
        default="tar",
        choices=("tar", "oci", "oci-archive", "docker-archive"),
        help="tar: the merged root filesystem (.gz/.xz/.zst by name); the others keep the layers",
    )
    exp.add_argument("--revision", type=int, help="default: the latest")
    exp.add_argument("--tag", metavar="REF", help="the name the image gets (default localhost/NAME:latest)")
    exp.set_defaults(handler=cmd_export)

    lst = sub.add_parser("list", help="list images")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=cmd_list)

    show = sub.add_parser("show", help="an image's revisions, size and children")
    show.add_argument("name", type=parse_image_name)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_show)

    update = sub.add_parser(
        "update",
        help="run a command over the image and publish what it changed as a new revision",
        usage="veneer image update NAME [--network MODE] [--bind SRC[:DST[:OPTS]]] [--rebase] [--] CMD...",
    )
    _update_options(update)
    update.add_argument("words", nargs=argparse.REMAINDER, metavar="NAME [--] CMD")
    update.set_defaults(handler=cmd_update, json=False, image=None, to=None)

    rollback = sub.add_parser("rollback", help="make an earlier revision the current one")
    rollback.add_argument("name", type=parse_image_name)
    rollback.add_argument("--to", type=int, metavar="REV", help="default: the revision before the current")
    rollback.set_defaults(handler=cmd_rollback)

    squash = sub.add_parser("squash", help="flatten the current revision into one layer, as a new revision")
    squash.add_argument("name", type=parse_image_name)
    squash.set_defaults(handler=cmd_squash)

    prune = sub.add_parser("prune", help="drop revisions that are not current and no machine uses")
    prune.add_argument(
        "names", nargs="*", type=parse_image_name, metavar="NAME", help="default: every image"
    )
    prune.set_defaults(handler=cmd_prune)

    machine_export = verbs.add_parser(
        "export", help="a stopped machine as a root filesystem tarball or a systemd .mstack directory"
    )
    machine_export.add_argument("machine", type=parse_machine_name)
    machine_export.add_argument(
        "dest",
        metavar="DEST",
        type=parse_export_dest,
        help="a new file (.gz, .xz, .zst compress) or directory (mstack)",
    )
    machine_export.add_argument(
        "--format", choices=("tar", "mstack"), default="tar",
        help="tar (default) or mstack: layers and rw/ for systemd-nspawn >= 260 (--mstack=DEST)",
    )  # fmt: skip
    machine_export.add_argument(
        "--owner", choices=("foreign", "image"), default="foreign",
        help="mstack ids: systemd's foreign range (default; nspawn --private-users=managed) or image ids "
        "(--private-users=no)",
    )  # fmt: skip
    machine_export.set_defaults(handler=cmd_export_machine)

    rm = sub.add_parser("rm", help="remove images no machine uses")
    rm.add_argument("names", nargs="+", type=parse_image_name, metavar="NAME")
    rm.add_argument("--force", "-f", action="store_true", help="stop and remove the machines using them too")
    rm.set_defaults(handler=cmd_rm)


def parse_export_dest(text: str) -> Path:
    """An export's destination: a path, never '-', which would be a file of that name, not stdout."""
    if text == "-":
        raise UsageError(
            "Export writes a file, not stdout ('-')",
            hint="Name a new file, such as deb.tar.gz (compressed by its name), and read it from there.",
        )
    return as_path(text)


def _parse_layer_size(text: str) -> int:
    try:
        return parse_memory(text)
    except UsageError:
        raise UsageError(f"Invalid layer size '{text}'", hint="Use a size such as 64G or 512M.") from None


def _max_layer_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-layer-size",
        metavar="SIZE",
        type=_parse_layer_size,
        help="refuse a layer larger than this once decompressed (default 32G: a gzip bomb must not fill "
        "the disk)",
    )


def _pull_credentials(args: argparse.Namespace) -> Credentials | None:
    from veneer.images.registry import parse_creds, parse_password

    if args.password_stdin:
        if args.creds:
            raise UsageError("--password-stdin and --creds exclude each other", hint="Use --password-stdin.")
        return parse_password(args.username or "", sys.stdin.readline())
    if args.username:
        raise UsageError("--username needs --password-stdin", hint="Pass the password on stdin.")
    if args.creds:
        import logging

        logging.getLogger(__name__).warning(
            "--creds shows the password in the process list: prefer --username USER --password-stdin "
            "or --authfile FILE."
        )
        return parse_creds(args.creds)
    return None


def cmd_create(args: argparse.Namespace) -> int:
    from veneer.cli.progress import stderr_progress
    from veneer.images.bootstrap import BuildSpec, Provisioning, SourceKind, build_tree
    from veneer.images.store import create_image

    name = args.name
    provisioning = Provisioning(
        users=tuple(args.user),
        locale=args.locale,
        timezone=args.timezone,
        enable=tuple(args.enable),
        packages=tuple(args.packages),
        run=tuple(args.run),
    )
    if args.debootstrap:
        spec = BuildSpec(
            source=SourceKind.DEBOOTSTRAP,
            suite=args.debootstrap,
            mirror=args.mirror,
            variant=args.variant,
            provisioning=provisioning,
        )
    elif args.pacstrap:
        spec = BuildSpec(
            source=SourceKind.PACSTRAP,
            packages=args.pacstrap,
            pacman_conf=args.pacman_conf,
            provisioning=provisioning,
        )
    elif args.from_dir:
        spec = BuildSpec(source=SourceKind.DIR, path=args.from_dir, provisioning=provisioning)
    elif args.from_tar:
        spec = BuildSpec(source=SourceKind.TAR, path=args.from_tar, provisioning=provisioning)
    else:
        spec = BuildSpec(source=SourceKind.BUSYBOX, provisioning=provisioning)
    layout = layout_of(args)
    with stderr_progress() as progress:
        record = create_image(
            layout,
            name,
            origin=spec.describe(),
            build=lambda tree: build_tree(spec, tree, layout=layout, progress=progress),
        )
    print(f"Created image '{record.name}' ({human_size(record.size_bytes)}).")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from veneer.cli.progress import stderr_progress
    from veneer.images.oci import parse_platform
    from veneer.images.pull import PullSpec, pull_image

    spec = PullSpec(
        reference=args.reference,
        platform=parse_platform(args.platform) if args.platform else None,
        creds=_pull_credentials(args),
        plain_http=args.plain_http,
        authfile=args.authfile,
        max_layer_bytes=args.max_layer_size,
    )
    with stderr_progress() as progress:
        record = pull_image(layout_of(args), args.name, spec, progress=progress)
    print(f"Pulled image '{record.name}' ({len(record.layers)} layers, {human_size(record.size_bytes)}).")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from veneer.cli.progress import stderr_progress
    from veneer.images.importers import ImportSpec, import_image
    from veneer.images.oci import parse_platform

    spec = ImportSpec(
        source=args.source,
        tag=args.tag,
        platform=parse_platform(args.platform) if args.platform else None,
        max_layer_bytes=args.max_layer_size,
    )
    with stderr_progress() as progress:
        record = import_image(layout_of(args), args.name, spec, progress=progress)
    print(f"Imported image '{record.name}' ({len(record.layers)} layers, {human_size(record.size_bytes)}).")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from veneer.cli.progress import stderr_progress
    from veneer.images.export import ExportFormat, export_image

    fmt = ExportFormat(args.fmt)
    with stderr_progress() as progress:
        export_image(
            layout_of(args),
            args.name,
            args.dest,
            fmt=fmt,
            revision=args.revision,
            tag=args.tag,
            progress=progress,
        )
    print(f"Exported image '{args.name}' to '{args.dest}' ({fmt}).")
    return 0


def cmd_export_machine(args: argparse.Namespace) -> int:
    from veneer.cli.progress import stderr_progress
    from veneer.images.mstack import MstackOwner
    from veneer.machines.export import MachineExportFormat, export_machine

    layout = layout_of(args)
    fmt, owner = MachineExportFormat(args.format), MstackOwner(args.owner)
    with stderr_progress() as progress:
        export_machine(layout, args.machine, args.dest, fmt=fmt, owner=owner, progress=progress)
    print(f"Exported machine '{args.machine}' to '{args.dest}'.")
    return 0


def _image_json(layout: Layout, name: str) -> dict[str, Any]:
    from veneer.images.store import load_image
    from veneer.machines.inspect import list_machines

    image = load_image(layout, name)
    machines = [m for m in list_machines(layout) if m.image == image.name]
    return {
        "name": image.name,
        "created": image.created,
        "size_bytes": image.size_bytes,
        "current": image.current,
        "revisions": [
            {
                "revision": revision.number,
                "current": revision.number == image.current,
                "layers": list(revision.layers),
                "created": revision.created,
                "command": revision.command,
                "size_bytes": image.layers_of(revision.number)[-1].size_bytes,
                "machines": [m.name for m in machines if m.revision == revision.number],
                "config": None if revision.config is None else revision.config.to_oci(),
            }
            for revision in image.revisions
        ],
        "machines": [m.name for m in machines],
        "snapshot_bytes": sum(m.snapshot_bytes for m in machines),
    }


def cmd_list(args: argparse.Namespace) -> int:
    from veneer.images.store import list_images

    layout = layout_of(args)
    images = [_image_json(layout, image.name) for image in list_images(layout)]
    if args.json:
        print_json([{**i, "revisions": len(i["revisions"])} for i in images])
        return 0
    rows = [
        (i["name"], len(i["revisions"]), human_size(i["size_bytes"]), len(i["machines"]), when(i["created"]))
        for i in images
    ]
    print_table(("NAME", "REVISIONS", "SIZE", "MACHINES", "CREATED"), rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    layout = layout_of(args)
    info = _image_json(layout, args.name)
    if args.json:
        print_json(info)
        return 0
    print(f"Image:     {info['name']}")
    print(f"Size:      {human_size(info['size_bytes'])}")
    print(f"Machines:  {', '.join(info['machines']) or '-'}")
    if info["snapshot_bytes"]:
        print(f"Snapshots: {human_size(info['snapshot_bytes'])} (of its machines: 'veneer snapshot list')")
    print()
    rows = [
        (
            f"{r['revision']}{' *' if r['current'] else ''}",
            when(r["created"]),
            human_size(r["size_bytes"]),
            ", ".join(r["machines"]) or "-",
            r["command"],
        )
        for r in info["revisions"]
    ]
    print_table(("REV", "CREATED", "SIZE", "MACHINES", "COMMAND"), rows)
    print("(* current: what new machines and rebases get)")
    config = _current_config(layout, args.name)
    if config is not None:
        print()
        print("Runs as (current revision):")
        for key, value in config.describe():
            print(f"  {key + ':':<13} {value}")
    return 0


def _current_config(layout: Layout, name: str) -> RunConfig | None:
    from veneer.images.store import load_image

    image = load_image(layout, name)
    return image.config_of(image.current)


def _update_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--network", type=network, default="nat", help="nat (default), host or none")
    parser.add_argument(
        "--bind",
        action="append",
        type=bind,
        default=[],
        metavar="SRC[:DST[:OPTS]]",
        help="bind a host path while the command runs (repeatable; not part of the revision)",
    )
    parser.add_argument("--rebase", action="store_true", help="then rebase every machine of the image")
    add_rebase_options(parser)


def cmd_update(args: argparse.Namespace) -> int:
    from veneer.cli.progress import stderr_progress
    from veneer.cli.rebase import rebase_and_print
    from veneer.machines.revisions import update_image
    from veneer.machines.run import RunOptions
    from veneer.machines.state import machines_on

    words = list(args.words)
    if words and words[0] == "--":
        words.pop(0)
    if not words:
        raise UsageError("Name the image and the command", hint="veneer image update NAME -- CMD...")
    name = parse_image_name(words[0])
    command = words[1:]
    if "--" in command:  # options may follow NAME too: NAME [--network MODE] [--rebase] -- CMD...
        split = command.index("--")
        after = argparse.ArgumentParser(prog="veneer image update NAME", add_help=False, exit_on_error=False)
        _update_options(after)
        try:
            _, unknown = after.parse_known_args(command[:split], namespace=args)
            if unknown:
                raise argparse.ArgumentError(None, f"unrecognized arguments: {' '.join(unknown)}")
        except argparse.ArgumentError as e:
            raise UsageError(str(e), hint="veneer image update NAME [OPTIONS] -- CMD...") from e
        command = command[split + 1 :]
    if not command:
        raise UsageError("No command to run", hint="veneer image update NAME -- apt-get -y upgrade")
    layout = layout_of(args)
    options = RunOptions(binds=tuple(args.bind))
    with stderr_progress() as progress:
        record = update_image(
            layout, name, command, network=args.network, options=options, progress=progress
        )
    print(f"Image '{name}' is at revision {record.current}.")
    if args.rebase:
        rebase_and_print(layout, list(machines_on(layout, name)), args, dry_run=False)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from veneer.machines.revisions import rollback_image

    record = rollback_image(layout_of(args), args.name, args.to)
    print(f"Image '{record.name}' is back at revision {record.current}; machines stay where they are.")
    return 0


def cmd_squash(args: argparse.Namespace) -> int:
    from veneer.cli.progress import stderr_progress
    from veneer.images.store import load_image
    from veneer.machines.revisions import squash_image

    layout = layout_of(args)
    before = load_image(layout, args.name).current
    with stderr_progress() as progress:
        record = squash_image(layout, args.name, progress=progress)
    size = human_size(record.layers_of(record.current)[0].size_bytes)
    already = " already" if record.current == before else ""
    print(f"Image '{record.name}' revision {record.current} is one layer{already} ({size}).")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from veneer.images.store import list_images
    from veneer.machines.revisions import prune_image

    layout = layout_of(args)
    for name in args.names or [image.name for image in list_images(layout)]:
        dropped = prune_image(layout, name)
        print(
            f"{name}: dropped revision(s) {', '.join(map(str, dropped))}."
            if dropped
            else f"{name}: nothing to drop."
        )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from veneer.cli.machine import stop_running
    from veneer.images.store import load_image, remove_image
    from veneer.machines.lifecycle import remove_machine
    from veneer.machines.state import machines_on

    layout = layout_of(args)
    for name in args.names:
        if args.force:
            load_image(layout, name)
            users = machines_on(layout, name)
            if users:
                print(f"Image '{name}' takes with it the machine(s) using it: {', '.join(users)}.")
            for machine in users:
                stop_running(layout, machine)
                remove_machine(layout, machine)
                print(f"Removed machine '{machine}'.")
        remove_image(layout, name, users=lambda image: machines_on(layout, image, throwaway=True))
        print(f"Removed image '{name}'.")
    return 0
