"""veneer: lightweight Linux system containers as overlay children of base images, run by systemd-nspawn.

The library API: the same operations as the command line, as functions taking a `Layout`. Names are
re-exported lazily (PEP 562), so `import veneer` and the CLI's start-up load nothing they do not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Layout": "veneer.config.layout",
    "parse_image_name": "veneer.config.settings",
    "parse_machine_name": "veneer.config.settings",
    "NetworkMode": "veneer.config.settings",
    "Bind": "veneer.config.settings",
    "Error": "veneer.errors",
    "BuildSpec": "veneer.images.bootstrap",
    "Provisioning": "veneer.images.bootstrap",
    "SourceKind": "veneer.images.bootstrap",
    "build_tree": "veneer.images.bootstrap",
    "create_image": "veneer.images.store",
    "list_images": "veneer.images.store",
    "load_image": "veneer.images.store",
    "remove_image": "veneer.images.store",
    "LayerSource": "veneer.images.store",
    "create_image_from_layers": "veneer.images.store",
    "PullSpec": "veneer.images.pull",
    "pull_image": "veneer.images.pull",
    "ImportSpec": "veneer.images.importers",
    "import_image": "veneer.images.importers",
    "ExportFormat": "veneer.images.export",
    "export_image": "veneer.images.export",
    "export_machine": "veneer.machines.export",
    "Credentials": "veneer.images.registry",
    "parse_reference": "veneer.images.oci",
    "parse_platform": "veneer.images.oci",
    "RunOptions": "veneer.machines.run",
    "create_machine": "veneer.machines.lifecycle",
    "clone_machine": "veneer.machines.lifecycle",
    "rename_machine": "veneer.machines.lifecycle",
    "remove_machine": "veneer.machines.lifecycle",
    "mount_machine": "veneer.machines.lifecycle",
    "umount_machine": "veneer.machines.lifecycle",
    "run_machine": "veneer.machines.run",
    "run_ephemeral": "veneer.machines.lifecycle",
    "diff_machine": "veneer.machines.lifecycle",
    "machine_status": "veneer.machines.inspect",
    "list_machines": "veneer.machines.inspect",
    "machines_on": "veneer.machines.state",
    "start_machine": "veneer.machines.boot",
    "stop_machine": "veneer.machines.boot",
    "restart_machine": "veneer.machines.boot",
    "update_image": "veneer.machines.revisions",
    "commit_machine": "veneer.machines.revisions",
    "squash_image": "veneer.machines.revisions",
    "rollback_image": "veneer.machines.revisions",
    "prune_image": "veneer.machines.revisions",
    "plan_rebase": "veneer.machines.rebase",
    "rebase_machine": "veneer.machines.rebase",
    "undo_rebase": "veneer.machines.rebase",
    "rebase_all": "veneer.machines.rebase",
    "RebaseFailure": "veneer.machines.rebase",
    "Prefer": "veneer.rebase.merge",
    "Ownership": "veneer.machines.copy",
    "copy_into": "veneer.machines.copy",
    "copy_from": "veneer.machines.copy",
    "parse_snapshot_name": "veneer.config.settings",
    "take_snapshot": "veneer.machines.snapshots",
    "list_snapshots": "veneer.machines.snapshots",
    "remove_snapshot": "veneer.machines.snapshots",
    "restore_snapshot": "veneer.machines.snapshots",
    "machine_stats": "veneer.machines.stats",
    "format_openmetrics": "veneer.machines.stats",
    "format_prometheus": "veneer.machines.stats",
    "Destination": "veneer.machines.send",
    "SshOptions": "veneer.machines.send",
    "parse_destination": "veneer.machines.send",
    "send_machine": "veneer.machines.send",
    "fetch_machine": "veneer.machines.send",
}

__all__ = [
    "Bind",
    "BuildSpec",
    "Error",
    "Layout",
    "NetworkMode",
    "Prefer",
    "Provisioning",
    "RunOptions",
    "SourceKind",
    "build_tree",
    "clone_machine",
    "commit_machine",
    "create_image",
    "create_machine",
    "diff_machine",
    "list_images",
    "list_machines",
    "load_image",
    "machine_status",
    "machines_on",
    "mount_machine",
    "parse_image_name",
    "parse_machine_name",
    "plan_rebase",
    "prune_image",
    "rebase_all",
    "rebase_machine",
    "RebaseFailure",
    "remove_image",
    "remove_machine",
    "rename_machine",
    "restart_machine",
    "rollback_image",
    "run_ephemeral",
    "run_machine",
    "squash_image",
    "start_machine",
    "stop_machine",
    "umount_machine",
    "undo_rebase",
    "update_image",
    "Credentials",
    "ExportFormat",
    "ImportSpec",
    "LayerSource",
    "PullSpec",
    "create_image_from_layers",
    "export_image",
    "export_machine",
    "import_image",
    "parse_platform",
    "parse_reference",
    "pull_image",
    "Ownership",
    "copy_from",
    "copy_into",
    "parse_snapshot_name",
    "take_snapshot",
    "list_snapshots",
    "remove_snapshot",
    "restore_snapshot",
    "machine_stats",
    "format_openmetrics",
    "format_prometheus",
    "Destination",
    "SshOptions",
    "fetch_machine",
    "parse_destination",
    "send_machine",
]

if TYPE_CHECKING:
    from veneer.config.layout import Layout
    from veneer.config.settings import (
        Bind,
        NetworkMode,
        parse_image_name,
        parse_machine_name,
        parse_snapshot_name,
    )
    from veneer.errors import Error
    from veneer.images.bootstrap import BuildSpec, Provisioning, SourceKind, build_tree
    from veneer.images.export import ExportFormat, export_image
    from veneer.images.importers import ImportSpec, import_image
    from veneer.images.oci import parse_platform, parse_reference
    from veneer.images.pull import PullSpec, pull_image
    from veneer.images.registry import Credentials
    from veneer.images.store import (
        LayerSource,
        create_image,
        create_image_from_layers,
        list_images,
        load_image,
        remove_image,
    )
    from veneer.machines.boot import restart_machine, start_machine, stop_machine
    from veneer.machines.copy import Ownership, copy_from, copy_into
    from veneer.machines.export import export_machine
    from veneer.machines.inspect import list_machines, machine_status
    from veneer.machines.lifecycle import (
        clone_machine,
        create_machine,
        diff_machine,
        mount_machine,
        remove_machine,
        rename_machine,
        run_ephemeral,
        umount_machine,
    )
    from veneer.machines.rebase import RebaseFailure, plan_rebase, rebase_all, rebase_machine, undo_rebase
    from veneer.machines.revisions import (
        commit_machine,
        prune_image,
        rollback_image,
        squash_image,
        update_image,
    )
    from veneer.machines.run import RunOptions, run_machine
    from veneer.machines.send import Destination, SshOptions, fetch_machine, parse_destination, send_machine
    from veneer.machines.snapshots import list_snapshots, remove_snapshot, restore_snapshot, take_snapshot
    from veneer.machines.state import machines_on
    from veneer.machines.stats import format_openmetrics, format_prometheus, machine_stats
    from veneer.rebase.merge import Prefer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'veneer' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
