"""The rebase scenario on a real Debian base (issue 5, item 7), nothing mocked.

A child of a debootstrapped bookworm installs a local package, adds a user, edits /etc/motd, deletes
/etc/apt/sources.list and replaces /root; the base's next revision upgrades a package the child did not
touch, adds a user and changes those three too. After the rebase the child has both sides' packages
registered and working, both users (their uid clash reported), and its own version of each conflict,
reported (the base's with --prefer base); `rebase --undo` gives back its upper dir exactly, also after a
`kill -9` at any step; a running child is stopped, rebased and started again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Store, killed_at
from veneer.util import proc

pytestmark = pytest.mark.root

CHILD_MOTD = "Welcome to c1, the child's own motd.\n"
BASE_MOTD = "Welcome to the base, revision 2.\n"
DPKG_STATUS = "var/lib/dpkg/status"
# What the child does, and what the base's update does: packages, a user and /etc/motd on each side.
CHILD_CHANGES = "; ".join(
    (
        "dpkg -i /mnt/hello-local_1.0_all.deb",
        "useradd -m alice",
        f"printf %s {shlex.quote(CHILD_MOTD)} > /etc/motd",
        # A deletion (a whiteout in the upper dir) and a replaced directory (an opaque one).
        "mv /etc/apt/sources.list /etc/apt/sources.list.d/debian.list",
        "cd / && rm -rf /root && mkdir -m 700 /root && echo 'the child' > /root/notes",
    )
)
BASE_UPDATE = "; ".join(
    (
        "dpkg -i /mnt/libdemo_2.0_all.deb",
        "useradd -m bob",
        f"printf %s {shlex.quote(BASE_MOTD)} > /etc/motd",
        "echo '# the base' >> /etc/apt/sources.list",
        "echo '# the base' >> /root/.bashrc",
    )
)


def build_deb(out: Path, package: str, version: str, script: str, *, depends: str | None = None) -> Path:
    """A tiny binary package holding the executable /usr/bin/PACKAGE, built with dpkg-deb."""
    root = out / f"{package}_{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    control = [
        f"Package: {package}",
        f"Version: {version}",
        "Architecture: all",
        "Maintainer: veneer tests <tests@veneer.invalid>",
        *([f"Depends: {depends}"] if depends else []),
        f"Description: {package} {version}, built by veneer's rebase test",
    ]
    (root / "DEBIAN/control").write_text("\n".join(control) + "\n")
    program = root / "usr/bin" / package
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(0o755)
    deb = out / f"{package}_{version}_all.deb"
    proc.run(["dpkg-deb", "--root-owner-group", "--build", os.fspath(root), os.fspath(deb)], capture=True)
    return deb


def snapshot(tree: Path) -> dict[str, tuple[Any, ...]]:
    """Everything about a tree that `rebase --undo` must give back, except ctimes and atimes: per path
    its type and mode, owner, link count, size, content hash, symlink target, device number, every xattr
    (overlayfs' trusted.overlay.* included) and mtime."""
    entries: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in ["", *dirnames, *filenames]:
            if not name and dirpath != os.fspath(tree):
                continue  # each directory is recorded once, as an entry of its parent
            path = Path(dirpath, name) if name else tree
            st = os.lstat(path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            xattrs = tuple(
                sorted(
                    (attr, os.getxattr(path, attr, follow_symlinks=False))
                    for attr in os.listxattr(path, follow_symlinks=False)
                )
            )
            entries[os.path.relpath(path, tree)] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_nlink,
                st.st_size,
                digest,
                target,
                st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else None,
                xattrs,
                st.st_mtime_ns,
            )
    return entries


def differences(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    lines = [f"gone: {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"new: {p}" for p in sorted(after.keys() - before.keys())]
    lines += [
        f"changed: {p}: {before[p]} -> {after[p]}"
        for p in sorted(before.keys() & after.keys())
        if before[p] != after[p]
    ]
    return lines


def inside(store: Store, machine: str, script: str, *, ok: tuple[int, ...] = (0,)) -> str:
    """Run a shell script in the (stopped) machine and return its standard output."""
    return store.veneer("run", machine, "--", "sh", "-euc", script, ok=ok).stdout


def actions_by_path(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {action["path"]: action for action in report["actions"]}


@pytest.fixture
def debs(tmp_path: Path) -> Path:
    """The packages of the scenario, in a directory the host binds into the image and the machine."""
    out = tmp_path / "debs"
    out.mkdir()
    build_deb(out, "libdemo", "1.0", 'echo "libdemo 1.0"')
    build_deb(out, "libdemo", "2.0", 'echo "libdemo 2.0"')
    build_deb(out, "hello-local", "1.0", 'echo "hello-local 1.0 on $(libdemo)"', depends="libdemo (>= 1.0)")
    for deb in out.glob("*.deb"):
        deb.chmod(0o644)  # the machine's root is an unprivileged uid on the host
    out.chmod(0o755)
    return out


def bind(debs: Path) -> str:
    # /mnt exists, empty, in every Debian: binding onto it creates nothing in the layer or the upper dir.
    return f"--bind={debs}:/mnt:ro"


def make_base_and_child(store: Store, debian_tree: Path, debs: Path) -> None:
    """Revision 1 of image 'deb' has libdemo 1.0; machine c1 on it made CHILD_CHANGES (hello-local, alice,
    its own motd, sources.list moved away, /root replaced)."""
    store.veneer("image", "create", "deb", "--from-dir", os.fspath(debian_tree))
    store.veneer(
        "image", "update", "deb", "--network", "none", bind(debs), "--",
        "dpkg", "-i", "/mnt/libdemo_1.0_all.deb",
    )  # fmt: skip
    assert json.loads(store.veneer("image", "show", "deb", "--json").stdout)["current"] == 1
    store.veneer("create", "c1", "--from", "deb", "--network", "none")
    assert store.machine_json("c1")["revision"] == 1
    store.veneer(
        "run", bind(debs), "c1", "--", "sh", "-euc",
        CHILD_CHANGES,
    )  # fmt: skip
    assert inside(store, "c1", "hello-local") == "hello-local 1.0 on libdemo 1.0\n"


def check_id_clashes(actions: dict[str, dict[str, Any]]) -> None:
    """Each side's useradd took the next free uid and gid, the same ones: the rebase keeps both users and
    groups, and reports each clash."""
    for path, what in (("/etc/passwd", "uid"), ("/etc/group", "gid")):
        action = actions[path]
        assert action["verdict"] == "conflict", action
        (clash,) = action["conflicts"]
        assert clash.startswith(f"{what} ") and "taken by alice (child) and bob (base)" in clash, clash
    for path in ("/etc/shadow", "/etc/gshadow", f"/{DPKG_STATUS}"):
        assert (actions[path]["verdict"], actions[path]["conflicts"]) == ("merge", []), actions[path]


def check_conflicts(actions: dict[str, dict[str, Any]], *, prefer: str) -> None:
    """The files both sides changed, the file the child deleted and the directory it replaced while the
    base changed them are conflicts, each resolved for `prefer`."""
    for path in ("/etc/motd", "/etc/apt/sources.list", "/root"):
        action = actions[path]
        assert action["verdict"] == "conflict", action
        assert action["operation"] == ("none" if prefer == "child" else "remove"), action
        assert action["reason"].endswith(f"the {prefer}'s kept"), action
    check_id_clashes(actions)


def check_child_after_rebase(store: Store, *, prefer: str) -> None:
    """Both sides' packages, users and files are in c1 and dpkg's database agrees with its files; the
    conflicts went to `prefer`."""
    assert inside(store, "c1", "libdemo") == "libdemo 2.0\n"
    assert inside(store, "c1", "hello-local") == "hello-local 1.0 on libdemo 2.0\n"
    listed = inside(store, "c1", "dpkg -l libdemo hello-local | grep '^[a-z][a-z] '")
    rows = {line.split()[1]: (line.split()[0], line.split()[2]) for line in listed.splitlines()}
    assert rows == {"libdemo": ("ii", "2.0"), "hello-local": ("ii", "1.0")}
    assert inside(store, "c1", "dpkg --audit") == ""
    assert inside(store, "c1", "dpkg --verify") == ""  # every package's files match its md5sums
    # Each package's file list names exactly what is there; the old version's list is gone.
    for package, program in (("libdemo", "/usr/bin/libdemo"), ("hello-local", "/usr/bin/hello-local")):
        files = inside(store, "c1", f"dpkg -L {package}").split()
        assert program in files
        assert (
            inside(store, "c1", f"for f in {' '.join(files)}; do test -e $f || echo missing $f; done") == ""
        )
    assert inside(store, "c1", "dpkg -S /usr/bin/libdemo /usr/bin/hello-local") == (
        "libdemo: /usr/bin/libdemo\nhello-local: /usr/bin/hello-local\n"
    )
    # Both users, their homes, and the files each side created for them.
    assert inside(store, "c1", "id alice >/dev/null && id bob >/dev/null && echo both") == "both\n"
    for user in ("alice", "bob"):
        assert inside(store, "c1", f"getent passwd {user} | cut -d: -f1,6") == f"{user}:/home/{user}\n"
        assert inside(store, "c1", f"getent shadow {user} | cut -d: -f1") == f"{user}\n"
        assert inside(store, "c1", f"test -d /home/{user} && echo yes") == "yes\n"
    # passwd and shadow, group and gshadow still name the same accounts.
    inside(store, "c1", "pwck -r -q && grpck -r")
    # The child's own files that did not conflict, and the conflicts.
    assert inside(store, "c1", "cat /etc/apt/sources.list.d/debian.list") == (
        "deb http://deb.debian.org/debian bookworm main\n"
    )
    if prefer == "child":
        assert inside(store, "c1", "cat /etc/motd") == CHILD_MOTD
        probe = "cat /root/notes; test ! -e /root/.bashrc -a ! -e /etc/apt/sources.list"
        assert inside(store, "c1", probe) == "the child\n"
    else:
        assert inside(store, "c1", "cat /etc/motd") == BASE_MOTD
        assert inside(
            store, "c1", "tail -n1 /etc/apt/sources.list /root/.bashrc; test ! -e /root/notes"
        ) == ("==> /etc/apt/sources.list <==\n# the base\n\n==> /root/.bashrc <==\n# the base\n")


def test_rebase_of_a_debian_child_keeps_both_sides_and_undoes_exactly(
    store: Store, debian_tree: Path, debs: Path
) -> None:
    make_base_and_child(store, debian_tree, debs)
    store.veneer("image", "update", "deb", "--network", "none", bind(debs), "--", "sh", "-euc", BASE_UPDATE)
    assert json.loads(store.veneer("image", "show", "deb", "--json").stdout)["current"] == 2
    upper = store.upper("c1")
    before = snapshot(upper)
    # What undo must restore holds a whiteout (0/0 character device) and an opaque directory.
    assert stat.S_ISCHR(before["etc/apt/sources.list"][0]) and before["etc/apt/sources.list"][7] == 0
    assert any(name.endswith("overlay.opaque") for name, _ in before["root"][8]), before["root"]

    # The dry run says what will happen and changes nothing.
    (plan,) = json.loads(store.veneer("rebase", "c1", "--dry-run", "--json").stdout)
    assert (plan["from"], plan["to"], plan["applied"]) == ({"image": "deb", "revision": 1}, {
        "image": "deb", "revision": 2}, False)  # fmt: skip
    actions = actions_by_path(plan)
    check_conflicts(actions, prefer="child")
    assert differences(before, snapshot(upper)) == []
    assert store.machine_json("c1")["revision"] == 1

    # The real rebase reports the same plan, on stdout for people.
    out = store.veneer("rebase", "c1").stdout
    assert "c1: 'deb' revision 1 -> 'deb' revision 2" in out
    assert any(line.split()[:2] == ["conflict", "/etc/motd"] for line in out.splitlines()), out
    assert "taken by alice (child) and bob (base)" in out
    assert "rebase --undo c1" in out
    assert store.machine_json("c1")["revision"] == 2

    # Undo gives back the upper dir byte for byte, and the revision.
    undo = store.veneer("rebase", "--undo", "c1").stdout
    assert "back on 'deb' revision 1" in undo
    assert differences(before, snapshot(upper)) == []
    assert store.machine_json("c1")["revision"] == 1
    assert inside(store, "c1", "libdemo; cat /etc/motd") == "libdemo 1.0\n" + CHILD_MOTD

    # Again, with the report as JSON this time; then look inside.
    (report,) = json.loads(store.veneer("rebase", "c1", "--json").stdout)
    assert report["applied"] is True and report["to"] == {"image": "deb", "revision": 2}
    assert [(a["path"], a["verdict"]) for a in report["actions"]] == [
        (a["path"], a["verdict"]) for a in plan["actions"]
    ]
    actions = actions_by_path(report)
    check_conflicts(actions, prefer="child")
    check_child_after_rebase(store, prefer="child")
    # The rebase record kept beside the backup holds the same report.
    kept = json.loads((store.root / "machines/c1/rebase/plan.json").read_text())
    assert [(a["path"], a["verdict"]) for a in kept["actions"]] == [
        (a["path"], a["verdict"]) for a in report["actions"]
    ]

    # A second undo puts the machine back again: on revision 1, its own motd and libdemo 1.0.
    store.veneer("rebase", "--undo", "c1")
    assert store.machine_json("c1")["revision"] == 1
    assert inside(store, "c1", "libdemo; cat /etc/motd") == "libdemo 1.0\n" + CHILD_MOTD


def test_rebase_preferring_the_base_keeps_the_childs_other_changes(
    store: Store, debian_tree: Path, debs: Path
) -> None:
    make_base_and_child(store, debian_tree, debs)
    before = snapshot(store.upper("c1"))
    out = store.veneer(
        "image", "update", "deb", "--network", "none", bind(debs), "--rebase", "--prefer", "base", "--",
        "sh", "-euc", BASE_UPDATE,
    ).stdout  # fmt: skip
    assert "Image 'deb' is at revision 2." in out
    assert any(line.split()[:2] == ["conflict", "/etc/motd"] for line in out.splitlines()), out
    assert "the base's kept" in out
    assert "taken by alice (child) and bob (base)" in out
    assert store.machine_json("c1")["revision"] == 2
    # Undo, byte for byte: preferring the base moved the child's motd, whiteout and opaque /root into
    # the backup.
    store.veneer("rebase", "--undo", "c1")
    assert differences(before, snapshot(store.upper("c1"))) == []
    assert store.machine_json("c1")["revision"] == 1
    (report,) = json.loads(store.veneer("rebase", "c1", "--prefer", "base", "--json").stdout)
    check_conflicts(actions_by_path(report), prefer="base")
    check_child_after_rebase(store, prefer="base")


def machine_state(store: Store, machine: str) -> tuple[str, int]:
    (info,) = [m for m in json.loads(store.veneer("list", "--json").stdout) if m["name"] == machine]
    return info["state"], info["revision"]


def test_running_child_is_stopped_rebased_and_started_again(
    store: Store, debian_tree: Path, debs: Path
) -> None:
    make_base_and_child(store, debian_tree, debs)
    try:
        store.veneer("start", "c1", "--wait", "--timeout", "60")
        out = store.veneer(
            "image", "update", "deb", "--network", "none", bind(debs), "--rebase", "--",
            "sh", "-euc", BASE_UPDATE,
        ).stdout  # fmt: skip
        assert "c1: 'deb' revision 1 -> 'deb' revision 2" in out and "Restarted." in out, out
        assert any(line.split()[:2] == ["conflict", "/etc/motd"] for line in out.splitlines()), out
        assert machine_state(store, "c1") == ("running", 2)
        probe = "libdemo; hello-local; cat /etc/motd; id -u alice >/dev/null; id -u bob >/dev/null"
        seen = store.veneer("exec", "c1", "--", "sh", "-euc", probe).stdout
        assert seen == "libdemo 2.0\nhello-local 1.0 on libdemo 2.0\n" + CHILD_MOTD
        # What the booted machine wrote (its machine-id, journal) is its own and stays through a rebase.
        machine_id = store.veneer("exec", "c1", "--", "cat", "/etc/machine-id").stdout
        store.veneer("stop", "c1", "--timeout", "30")
    finally:
        store.veneer("stop", "c1", "--timeout", "5", ok=(0, 1))
    check_child_after_rebase(store, prefer="child")
    assert (store.upper("c1") / "etc/machine-id").read_text() == machine_id

    # Undo puts back the child's own side: revision 1, libdemo 1.0, its motd, no bob.
    store.veneer("rebase", "--undo", "c1")
    assert machine_state(store, "c1") == ("stopped", 1)
    assert inside(store, "c1", "libdemo; hello-local; cat /etc/motd") == (
        "libdemo 1.0\nhello-local 1.0 on libdemo 1.0\n" + CHILD_MOTD
    )
    assert inside(store, "c1", "id -u alice >/dev/null; id bob", ok=(1,)) == ""
    assert inside(store, "c1", "dpkg --audit; dpkg --verify") == ""


def without_times(tree: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    return {path: entry[:-1] for path, entry in tree.items()}


def test_kill_9_at_any_step_of_a_rebase_or_its_undo_loses_nothing(
    store: Store, debian_tree: Path, debs: Path
) -> None:
    make_base_and_child(store, debian_tree, debs)
    store.veneer("image", "update", "deb", "--network", "none", bind(debs), "--", "sh", "-euc", BASE_UPDATE)
    upper = store.upper("c1")
    before = snapshot(upper)
    store.veneer("rebase", "c1")
    rebased = without_times(snapshot(upper))
    store.veneer("rebase", "--undo", "c1")
    assert differences(before, snapshot(upper)) == []

    step = 1
    while killed_at(store, step, "rebase", "c1"):
        # The next command that takes the machine finishes the rebase, or forgets one not yet begun.
        store.veneer("rebase", "c1", "--dry-run")
        if store.machine_json("c1")["revision"] == 1:
            assert differences(before, snapshot(upper)) == [], f"killed at step {step}"
        else:
            assert differences(rebased, without_times(snapshot(upper))) == [], f"killed at step {step}"
            store.veneer("rebase", "--undo", "c1")
            assert differences(before, snapshot(upper)) == [], f"killed at step {step}"
        step += 1
    assert step > 10  # every action's move, every journal and record write was a kill point
    assert store.machine_json("c1")["revision"] == 2
    assert differences(rebased, without_times(snapshot(upper))) == []

    step = 1
    while killed_at(store, step, "rebase", "--undo", "c1"):
        # Asked again, the undo finishes (or does all of it, if it was killed before it began).
        out = store.veneer("rebase", "--undo", "c1").stdout
        assert "back on 'deb' revision 1" in out
        assert differences(before, snapshot(upper)) == [], f"killed at step {step} of the undo"
        store.veneer("rebase", "c1")
        step += 1
    assert step > 10
    assert store.machine_json("c1")["revision"] == 1
    assert differences(before, snapshot(upper)) == []
