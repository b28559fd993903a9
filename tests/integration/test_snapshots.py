"""Snapshots end to end: byte-for-byte restores, a frozen copy of a running machine, snapshots across a
rebase, retention, clones from a snapshot, and a snapshot or restore killed at every step."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store, killed_at, mounts_under, tree_snapshot
from veneer.config.layout import Layout
from veneer.runtime.cgroups import Hierarchies
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]

# What a machine can write: contents, modes, owners, hard links, a fifo, a symlink to a host path, a
# deleted base file (a whiteout), a file in a directory it made.
WRITES = """
set -e
mkdir -p /srv/data /srv/empty
echo hello > /srv/data/a; chmod 640 /srv/data/a; chown 1000:100 /srv/data/a
printf 'x%.0s' $(seq 1 5000) > /srv/data/big
ln /srv/data/big /srv/data/hardlink
ln -s /etc/shadow /srv/data/host-link
mkfifo /srv/fifo
chmod 1777 /srv/empty
rm /bin/vi
"""


def snapshot_upper(store: Store, machine: str, snap: str) -> Path:
    return store.root / "machines" / machine / "snapshots" / snap / "upper"


def snapshots(store: Store, machine: str) -> list[str]:
    return [s["name"] for s in json.loads(store.veneer("snapshot", "list", machine, "--json").stdout)]


def sh(store: Store, machine: str, script: str) -> str:
    return store.veneer("run", machine, "--", "sh", "-c", script).stdout


@pytest.fixture
def written(busybox: Store) -> Store:
    """Machine 'm1' with every kind of entry in its upper dir, host-set xattrs too."""
    store = busybox
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    sh(store, "m1", WRITES)
    upper = store.upper("m1")
    os.setxattr(upper / "srv/data/a", "user.note", b"kept")
    os.setxattr(upper / "srv/data/big", "security.capability", bytes.fromhex("01000002") + bytes(16))
    os.setxattr(upper / "srv/empty", "trusted.overlay.opaque", b"y")
    return store


def test_restore_is_byte_for_byte(written: Store) -> None:
    store = written
    upper = store.upper("m1")
    before = tree_snapshot(upper)
    assert stat_kind(upper / "bin/vi") == "whiteout"
    out = store.veneer("snapshot", "m1", "s1").stdout
    assert "Took snapshot 's1' of machine 'm1' (stopped" in out
    assert tree_snapshot(snapshot_upper(store, "m1", "s1")) == before
    sh(store, "m1", "echo changed > /srv/data/a; rm -r /srv/empty; chmod 600 /srv/data/big; touch /new")
    os.setxattr(upper / "srv/data/a", "user.note", b"changed")
    assert tree_snapshot(upper) != before
    out = store.veneer("restore", "m1", "s1").stdout
    assert "Restored machine 'm1' from snapshot 's1'" in out
    assert tree_snapshot(store.upper("m1")) == before  # contents, modes, owners, xattrs, whiteouts, times
    assert sh(store, "m1", "cat /srv/data/a; ls /bin/vi 2>&1 || true").split("\n")[0] == "hello"
    assert not (store.root / "machines/m1/restore").exists()
    # The host path the machine's symlink names was never read into the snapshot.
    assert os.readlink(snapshot_upper(store, "m1", "s1") / "srv/data/host-link") == "/etc/shadow"


def stat_kind(path: Path) -> str:
    import stat

    st = os.lstat(path)
    return "whiteout" if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 else "other"


def unified_cgroup(store: Store, name: str) -> Path:
    unified = Hierarchies.detect().unified
    assert unified is not None
    return unified / Layout(root=store.root, run=store.run).cgroup(name)


@pytest.fixture
def running(written: Store) -> Iterator[Store]:
    written.veneer("start", "m1", "--wait")
    yield written
    written.veneer("stop", "m1", "--timeout", "5", ok=(0, 1))


def test_running_machine_is_frozen_for_its_snapshot(running: Store) -> None:
    store = running
    store.veneer("exec", "m1", "--", "sh", "-c", "echo live > /srv/live")
    out = store.veneer("snapshot", "m1", "live").stdout
    assert "(running, frozen while its files were copied;" in out
    assert (snapshot_upper(store, "m1", "live") / "srv/live").read_text() == "live\n"
    assert (unified_cgroup(store, "m1") / "cgroup.freeze").read_text().strip() == "0"
    assert not (store.run / "machines/m1.frozen").exists()
    assert store.veneer("exec", "m1", "--", "cat", "/srv/live").stdout == "live\n"
    refused = store.veneer("restore", "m1", "live", ok=(1,))
    assert "Machine 'm1' is running" in refused.stderr and "veneer stop m1" in refused.stderr
    store.veneer("exec", "m1", "--", "rm", "/srv/live")
    store.veneer("stop", "m1")
    store.veneer("restore", "m1", "live")
    assert (store.upper("m1") / "srv/live").read_text() == "live\n"


def test_snapshot_killed_at_any_step_of_a_running_machine_leaves_it_thawed(running: Store) -> None:
    store = running
    step = 1
    while killed_at(store, step, "snapshot", "m1", "k"):
        # The next command that looks at the machine thaws it; the half-made snapshot is never seen.
        assert store.veneer("status", "m1", "--json").stdout
        assert (unified_cgroup(store, "m1") / "cgroup.freeze").read_text().strip() == "0"
        assert snapshots(store, "m1") in ([], ["k"])
        if snapshots(store, "m1"):
            store.veneer("snapshot", "rm", "m1", "k")
        step += 1
    assert step > 3 and snapshots(store, "m1") == ["k"]
    store.veneer("list")  # sweeps the staging dir
    assert not list((store.root / ".staging").iterdir())
    # Killed while the machine was frozen (no step of its own: the copy runs no rename): the freezer's
    # record names a process that is gone, and the next command to look thaws the machine.
    gone = proc.spawn(["true"])
    gone.wait()
    record = {"version": 1, "pid": gone.pid, "start_time": 1}
    (store.run / "machines/m1.frozen").write_text(json.dumps(record))
    (unified_cgroup(store, "m1") / "cgroup.freeze").write_text("1")
    store.veneer("status", "m1")
    assert (unified_cgroup(store, "m1") / "cgroup.freeze").read_text().strip() == "0"
    assert not (store.run / "machines/m1.frozen").exists()


def test_restore_killed_at_any_step_ends_whole_either_way(written: Store) -> None:
    store = written
    store.veneer("snapshot", "m1", "s1")
    sh(store, "m1", "echo two > /srv/data/a; touch /srv/two")
    restored = tree_snapshot(snapshot_upper(store, "m1", "s1"))
    current = tree_snapshot(store.upper("m1"))
    step, outcomes = 1, set()
    while killed_at(store, step, "restore", "m1", "s1"):
        store.veneer("status", "m1")  # finishes a restore that was committed, forgets one that was not
        after = tree_snapshot(store.upper("m1"))
        assert after in (restored, current), f"killed at step {step}: a mix of both"
        outcomes.add("restored" if after == restored else "kept")
        assert not (store.root / "machines/m1/restore").exists()
        assert not (store.root / "machines/m1/restore.tmp").exists()
        if after == restored:  # back to the machine's own state for the next step
            sh(store, "m1", "echo two > /srv/data/a; touch /srv/two")
            os.setxattr(store.upper("m1") / "srv/data/a", "user.note", b"kept")
            current = tree_snapshot(store.upper("m1"))
        step += 1
    assert outcomes == {"restored", "kept"}
    assert tree_snapshot(store.upper("m1")) == restored
    assert not mounts_under(store.root, store.run)


def test_snapshots_survive_a_rebase_and_restore_says_where_it_goes(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    sh(store, "m1", "echo mine > /root/f")
    store.veneer("snapshot", "m1", "on0")
    for n in (1, 2):
        store.veneer("image", "update", "bb", "--network", "none", "--", "sh", "-c", f"echo {n} > /rev")
        store.veneer("rebase", "m1")
    assert store.machine_json("m1")["revision"] == 2
    listing = store.veneer("snapshot", "list", "m1").stdout
    assert "bb@0" in listing and "machine now on revision 2" in listing
    # Revision 0 is kept for the snapshot (the last rebase pins 1 and 2 only).
    store.veneer("image", "prune", "bb")
    revisions = [
        r["revision"] for r in json.loads(store.veneer("image", "show", "bb", "--json").stdout)["revisions"]
    ]
    assert 0 in revisions
    # A clone of the snapshot stands on its revision too, with its files.
    store.veneer("clone", "m1", "c1", "--from-snapshot", "on0")
    assert store.machine_json("c1")["revision"] == 0
    assert sh(store, "c1", "cat /root/f; cat /rev 2>&1 || true").startswith("mine\n")
    out = store.veneer("restore", "m1", "on0").stdout
    assert "back on revision 0 of image 'bb'" in out and "it was on revision 2" in out
    assert "veneer rebase m1 --to 2" in out
    assert store.machine_json("m1")["revision"] == 0
    assert sh(store, "m1", "cat /root/f; ls /rev 2>/dev/null || echo no-rev") == "mine\nno-rev\n"
    # The undo of the last rebase applied to the upper dir the restore replaced: it is gone.
    assert not (store.root / "machines/m1/rebase").exists()
    store.veneer("rebase", "m1", "--to", "2")
    assert sh(store, "m1", "cat /rev") == "2\n"


def test_keep_removes_the_oldest_and_the_store_shows_the_cost(written: Store) -> None:
    store = written
    for snap in ("a", "b", "c"):
        out = store.veneer("snapshot", "m1", snap, "--keep", "2").stdout
    assert "Removed snapshot 'a' (--keep 2)." in out
    assert snapshots(store, "m1") == ["b", "c"]
    machine = next(m for m in json.loads(store.veneer("list", "--json").stdout) if m["name"] == "m1")
    assert machine["snapshots"] == 2 and machine["snapshot_bytes"] >= 2 * 5000
    image = json.loads(store.veneer("image", "show", "bb", "--json").stdout)
    assert image["snapshot_bytes"] == machine["snapshot_bytes"]
    store.veneer("snapshot", "rm", "m1", "b")
    assert snapshots(store, "m1") == ["c"]
    bad = store.veneer("snapshot", "m1", "c", ok=(1,))
    assert "has a snapshot 'c' already" in bad.stderr
    missing = store.veneer("restore", "m1", "nope", ok=(1,))
    assert "Machine 'm1' has no snapshot 'nope'" in missing.stderr and "snapshot list m1" in missing.stderr
    assert store.veneer("snapshot", "m1", "../x", ok=(2,)).returncode == 2
    assert store.veneer("snapshot", "m1", "--keep", "0", ok=(2,)).returncode == 2
