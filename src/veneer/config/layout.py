"""Where veneer keeps its state. Every path under the state and runtime roots is built here.

State root (`--root`, `VENEER_ROOT`, default /var/lib/veneer):
    images/<name>/image.json      an image: its ordered layer ids, one per revision
    layers/<id>/tree/             a layer's files (revision 0: a whole root filesystem)
    layers/<id>/layer.json        how the layer was made
    blobs/sha256/<hex>            downloaded image blobs, checked against their digest (a cache)
    blobs/partial/<hex>           a blob being downloaded; an interrupted pull resumes it
    machines/<name>/machine.json  a machine's settings
    machines/<name>/{upper,work}  its overlay upper and work dirs
    machines/<name>/root/         where its overlay is mounted
    machines/<name>/console.log   the console of its last boot: the latest output (up to 4 MiB)
    machines/<name>/console.log.1 the 4 MiB before that, once the log has rotated
    machines/<name>/exit.json     how its last boot ended
    machines/<name>/snapshots/<snap>/  a snapshot: snapshot.json and a copy of the upper dir
    machines/<name>/restore/      a restore in progress (the snapshot's copy, then the replaced upper)
    network.json                  the nat network: bridge, address pool, upstream DNS (made on first use)
    .staging/                     half-built objects; anything here is removed by the next command
    .lock                         store-wide lock for publishing and removing objects
Host-wide, shared by every store (`VENEER_UIDS`, default /var/lib/veneer-uids):
    ranges.json                   the uid range of every machine of every store, and the retired ones
cgroups: `veneer/<name>` (another store: `veneer-<hash of its root>/<name>`) in each hierarchy.
Runtime root (`VENEER_RUN`, default /run/veneer):
    machines/<name>.json          a running machine's pids
    machines/<name>.sh            the script the console keeper runs to boot it
    machines/<name>.notify        the socket nspawn reports readiness to
    machines/<name>.status        nspawn's exit status, written by the boot script
    machines/<name>.console       the socket of its console keeper (tmux)
    machines/<name>.tty           on systemd hosts: a link to the terminal the console keeper holds
    machines/<name>.frozen        who froze it for a snapshot (pid, start time), while it is frozen
    network/                      the nat network's lock, dnsmasq, the guests' resolv.conf
    idmap/<name>/<n>/             idmapped lower layers while an overlay is being mounted
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/veneer")
DEFAULT_RUN = Path("/run/veneer")
# Outside every store root: two stores on one host must never hand out the same uids.
DEFAULT_UIDS = Path("/var/lib/veneer-uids")


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """The state and runtime roots, and every path derived from them."""

    root: Path
    run: Path
    uids: Path = DEFAULT_UIDS  # the host-wide registry of uid ranges

    @classmethod
    def from_env(cls, root: Path | None = None) -> Layout:
        """`root` if given, else $VENEER_ROOT, else /var/lib/veneer; $VENEER_RUN or /run/veneer;
        $VENEER_UIDS or /var/lib/veneer-uids, whatever the root."""
        state = root or Path(os.environ.get("VENEER_ROOT") or DEFAULT_ROOT)
        run = Path(os.environ.get("VENEER_RUN") or DEFAULT_RUN)
        uids = Path(os.environ.get("VENEER_UIDS") or DEFAULT_UIDS)
        return cls(root=state.absolute(), run=run.absolute(), uids=uids.absolute())

    @property
    def uid_registry(self) -> Path:
        return self.uids / "ranges.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def machines(self) -> Path:
        return self.root / "machines"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    def image_dir(self, name: str) -> Path:
        return self.images / name

    def image_record(self, name: str) -> Path:
        return self.images / name / "image.json"

    def layer_dir(self, layer_id: str) -> Path:
        return self.layers / layer_id

    def layer_tree(self, layer_id: str) -> Path:
        return self.layers / layer_id / "tree"

    def machine_dir(self, name: str) -> Path:
        return self.machines / name

    def machine_record(self, name: str) -> Path:
        return self.machines / name / "machine.json"

    def machine_upper(self, name: str) -> Path:
        return self.machines / name / "upper"

    def machine_work(self, name: str) -> Path:
        return self.machines / name / "work"

    def machine_root(self, name: str) -> Path:
        return self.machines / name / "root"

    def snapshots(self, name: str) -> Path:
        return self.machines / name / "snapshots"

    def snapshot_dir(self, name: str, snapshot: str) -> Path:
        return self.machines / name / "snapshots" / snapshot

    def restore_dir(self, name: str) -> Path:
        return self.machines / name / "restore"

    def freeze_record(self, name: str) -> Path:
        return self.run / "machines" / f"{name}.frozen"

    def runtime_record(self, name: str) -> Path:
        return self.run / "machines" / f"{name}.json"

    def console_log(self, name: str) -> Path:
        return self.machines / name / "console.log"

    def console_log_previous(self, name: str) -> Path:
        return self.machines / name / "console.log.1"

    def exit_record(self, name: str) -> Path:
        return self.machines / name / "exit.json"

    def boot_script(self, name: str) -> Path:
        return self.run / "machines" / f"{name}.sh"

    def boot_status(self, name: str) -> Path:
        return self.run / "machines" / f"{name}.status"

    def address_gate(self, name: str) -> Path:
        return self.run / "gates" / name

    def boot_shell(self, name: str) -> Path:
        """The pid and start time of the standalone keeper's boot script, the parent of nspawn."""
        return self.run / "machines" / f"{name}.shell"

    def stop_request(self, name: str) -> Path:
        """Present while `stop` ends the machine: the supervisor then leaves the cleanup to it."""
        return self.run / "machines" / f"{name}.stopping"

    def notify_socket(self, name: str) -> Path:
        return self.run / "machines" / f"{name}.notify"

    def console_socket(self, name: str) -> Path:
        return self.run / "machines" / f"{name}.console"

    def console_tty(self, name: str) -> Path:
        return self.run / "machines" / f"{name}.tty"

    @property
    def enter_lock(self) -> Path:
        """Held while veneer reads a machine init's seccomp filters: ptrace allows one tracer at a time."""
        return self.run / "enter.lock"

    @property
    def _store_tag(self) -> str:
        """Empty for the default store; else a short hash of the root, for names every store has once per
        host (cgroups, the nat bridge, the nftables table), so two stores never share or remove them."""
        if self.root == DEFAULT_ROOT:
            return ""
        import hashlib  # loads OpenSSL: a few ms every command would pay for the default store's ""

        return hashlib.sha256(os.fsencode(self.root)).hexdigest()[:8]

    def cgroup(self, name: str) -> str:
        """The machine's cgroup, relative to each hierarchy: `veneer/<name>` for the default store."""
        return f"veneer-{self._store_tag}/{name}" if self._store_tag else f"veneer/{name}"

    @property
    def nat_bridge(self) -> str:
        return f"vn-{self._store_tag}" if self._store_tag else "veneer0"

    @property
    def nat_table(self) -> str:
        return f"veneer_{self._store_tag}" if self._store_tag else "veneer"

    @property
    def network_config(self) -> Path:
        return self.root / "network.json"

    @property
    def network_run(self) -> Path:
        return self.run / "network"

    def idmap_dir(self, name: str) -> Path:
        return self.run / "idmap" / name
