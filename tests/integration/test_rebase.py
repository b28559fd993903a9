"""Image revisions and rebases on the busybox image, through the real CLI, real overlays and nspawn."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.helpers import Store, killed_at, mounts_under, tree_snapshot

pytestmark = pytest.mark.integration


def image(store: Store, name: str = "bb") -> dict[str, object]:
    data: dict[str, object] = json.loads(store.veneer("image", "show", name, "--json").stdout)
    return data


def revisions(store: Store, name: str = "bb") -> list[int]:
    return [int(r["revision"]) for r in image(store, name)["revisions"]]  # type: ignore[attr-defined]


def sh(store: Store, machine: str, script: str) -> str:
    return store.veneer("run", machine, "--", "sh", "-c", script).stdout


def update(store: Store, script: str, *extra: str, name: str = "bb") -> str:
    return store.veneer(
        "image", "update", name, "--network", "none", *extra, "--", "sh", "-c", script
    ).stdout


def layer_of(store: Store, revision: int, name: str = "bb") -> Path:
    record = json.loads((store.root / "images" / name / "image.json").read_text())
    layers = next(r["layers"] for r in record["revisions"] if r["number"] == revision)
    return store.root / "layers" / str(layers[-1]) / "tree"


def test_update_publishes_only_what_the_command_changed(busybox: Store) -> None:
    store = busybox
    update(store, "echo v2 > /etc/version; mkdir -p /srv/app; chown 1000:1000 /srv/app; rm /usr/bin/getent")
    assert revisions(store) == [0, 1] and image(store)["current"] == 1
    tree = layer_of(store, 1)
    assert (tree / "etc/version").read_text() == "v2\n"
    # Layers hold real ids, not the update's uid range; the machine's identity stays out.
    assert os.stat(tree / "etc/version").st_uid == 0 and os.stat(tree / "srv/app").st_uid == 1000
    assert not (tree / "etc/machine-id").exists()
    assert os.stat(tree / "usr/bin/getent").st_rdev == 0, "a deletion is a whiteout in the layer"
    assert store.veneer("list", "--json").stdout.strip() == "[]", "the update's throwaway machine is gone"
    store.veneer("create", "new", "--from", "bb", "--network", "none")
    assert sh(store, "new", "cat /etc/version") == "v2\n"


def test_failed_or_interrupted_update_changes_nothing(busybox: Store) -> None:
    store = busybox
    failed = store.veneer(
        "image", "update", "bb", "--network", "none", "--", "sh", "-c", "touch /x; exit 3", ok=(1,)
    )
    assert "exited with status 3" in failed.stderr and "still at revision 0" in failed.stderr
    assert revisions(store) == [0]
    process = store.spawn(
        "image", "update", "bb", "--network", "none", "--", "sh", "-c", "touch /y; sleep 60"
    )
    deadline = time.monotonic() + 20
    while not any(
        p.name.startswith("upd-") for p in (store.root / "machines").iterdir()
    ) or not mounts_under(store.root):
        assert time.monotonic() < deadline, "the update did not start"
        time.sleep(0.1)
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # The next command cleans the throwaway machine away; nothing was published.
    deadline = time.monotonic() + 20
    while store.veneer("list", "--json").stdout.strip() != "[]" or mounts_under(store.root, store.run):
        assert time.monotonic() < deadline, "the killed update's machine was not cleaned up"
        time.sleep(0.2)
    assert revisions(store) == [0]
    assert len(list((store.root / "layers").iterdir())) == 1


def test_rollback_branches_squash_flattens_prune_keeps_what_is_used(busybox: Store) -> None:
    store = busybox
    update(store, "echo 1 > /etc/one")
    update(store, "echo 2 > /etc/two; rm /etc/one")
    store.veneer("image", "rollback", "bb")
    assert image(store)["current"] == 1
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    assert store.machine_json("m1")["revision"] == 1
    update(store, "echo 3 > /etc/three")  # branches off revision 1
    assert revisions(store) == [0, 1, 2, 3] and image(store)["current"] == 3
    store.veneer("create", "m3", "--from", "bb", "--network", "none")
    assert sh(store, "m3", "cat /etc/one /etc/three; test ! -e /etc/two && echo no-two") == "1\n3\nno-two\n"
    store.veneer("image", "squash", "bb")
    assert image(store)["current"] == 4
    again = store.veneer("image", "squash", "bb").stdout  # repeatable: one layer stays as it is
    assert again.startswith("Image 'bb' revision 4 is one layer already (") and image(store)["current"] == 4
    record = json.loads((store.root / "images/bb/image.json").read_text())
    assert len(record["revisions"][-1]["layers"]) == 1
    store.veneer("create", "m4", "--from", "bb", "--network", "none")
    assert sh(store, "m4", "cat /etc/one /etc/three; test ! -e /etc/two && echo no-two") == "1\n3\nno-two\n"
    assert not (layer_of(store, 4) / "etc/two").exists()
    layers_before = set(os.listdir(store.root / "layers"))
    out = store.veneer("image", "prune").stdout
    assert "dropped revision(s) 0, 2" in out
    assert revisions(store) == [1, 3, 4]  # m1 uses 1, m3 uses 3, 4 is current
    gone = layers_before - set(os.listdir(store.root / "layers"))
    assert len(gone) == 1, "the layer only revision 2 used is deleted; revision 0's layer is still under 1"
    assert sh(store, "m1", "cat /etc/one") == "1\n"


def test_commit_makes_an_image_or_a_revision(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    sh(
        store,
        "m1",
        "echo app > /etc/app; echo svc:x:1500:1500::/home/svc:/bin/sh >> /etc/passwd; mkdir /home/svc;"
        " chown 1500 /home/svc; rm /usr/bin/getent; echo id > /etc/hostname",
    )
    store.veneer("commit", "m1", "app")
    app = json.loads((store.root / "images/app/image.json").read_text())
    base = json.loads((store.root / "images/bb/image.json").read_text())
    assert app["revisions"][0]["layers"][0] == base["revisions"][0]["layers"][0], "the base layer is shared"
    tree = layer_of(store, 0, "app")
    assert os.stat(tree / "etc/app").st_uid == 0 and os.stat(tree / "home/svc").st_uid == 1500
    assert not (tree / "etc/hostname").exists(), "a machine's identity is not committed"
    store.veneer("create", "m2", "--from", "app", "--network", "none")
    assert (
        sh(store, "m2", "cat /etc/app; id -u svc; test -e /usr/bin/getent || echo gone")
        == "app\n1500\ngone\n"
    )
    store.veneer("commit", "m1", "--revision")
    assert revisions(store) == [0, 1]
    assert store.veneer("commit", "m1", ok=(2,)).returncode == 2


def test_many_revisions_still_mount(busybox: Store) -> None:
    from veneer.config.layout import Layout
    from veneer.images.store import add_revision

    store = busybox
    layout = Layout(root=store.root, run=store.run)
    for n in range(150):

        def build(tree: Path, _scratch: Path, n: int = n) -> None:
            (tree / "etc").mkdir()
            (tree / "etc" / f"rev{n}").write_text(f"{n}\n")

        add_revision(layout, "bb", command=f"step {n}", build=build)
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    assert sh(store, "m1", "ls /etc | grep -c '^rev'") == "150\n"


def _setup_child_and_update(store: Store) -> None:
    """A child (on revision 1) and a base update (revision 2) that touch the same paths in every way the
    rules tell apart."""
    update(store, "echo p > /etc/profile; mkdir -p /usr/share/app /srv; echo a > /usr/share/app/a")
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    sh(
        store,
        "m1",
        "echo child > /etc/motd; echo own > /root/own; rm /etc/profile;"
        " echo alice:x:1001:1001::/:/bin/sh >> /etc/passwd;"
        " rm -rf /usr/share/app && mkdir -p /usr/share/app && echo mine > /usr/share/app/x;"
        " cp /etc/group /tmp/g && cp /tmp/g /etc/group;"  # copied up, unchanged
        " chmod 700 /srv; echo same > /etc/same; touch /home/h",
    )
    update(
        store,
        "echo base > /etc/motd; echo changed >> /etc/profile;"
        " echo bob:x:1002:1002::/:/bin/sh >> /etc/passwd; echo bob:x:1002: >> /etc/group;"
        " echo new > /usr/share/app/b; echo same > /etc/same; chmod 750 /srv; mkdir /opt; chmod 751 /home",
    )


def test_rebase_reconciles_and_undo_restores_exactly(busybox: Store) -> None:
    store = busybox
    _setup_child_and_update(store)
    before = tree_snapshot(store.upper("m1"))
    plan = json.loads(store.veneer("rebase", "m1", "--dry-run", "--json").stdout)[0]
    assert tree_snapshot(store.upper("m1")) == before, "a dry run changes nothing"
    verdicts = {a["path"]: (a["verdict"], a["operation"]) for a in plan["actions"]}
    assert verdicts["/etc/motd"] == ("conflict", "none")
    assert verdicts["/etc/passwd"] == ("merge", "write")
    assert verdicts["/etc/group"] == ("drop", "remove"), "copied up but unchanged: the base's new one shows"
    assert verdicts["/etc/same"] == ("drop", "remove")
    assert verdicts["/etc/profile"] == ("conflict", "none"), "deleted by the child, changed by the base"
    assert verdicts["/usr/share/app"] == ("conflict", "none"), "replaced by the child, changed by the base"
    assert verdicts["/srv"] == ("conflict", "none")
    assert verdicts["/home"] == ("drop", "setattr"), "the base's new mode, the child's file in it"
    assert "/root/own" not in verdicts and "/root" not in verdicts, "untouched by the base: not even listed"
    out = store.veneer("rebase", "m1").stdout
    assert "conflict /etc/motd" in out and "Undo with 'veneer rebase --undo m1'" in out
    assert store.machine_json("m1")["revision"] == 2
    seen = sh(
        store,
        "m1",
        "cat /etc/motd /root/own; id -u alice; id -u bob; ls /usr/share/app; test -d /opt && echo o",
    )
    assert seen == "child\nown\n1001\n1002\nx\no\n"
    assert sh(store, "m1", "test -e /etc/profile || echo deleted; stat -c %a /home") == "deleted\n751\n"
    report = json.loads((store.root / "machines/m1/rebase/plan.json").read_text())
    assert {a["path"] for a in report["actions"]} == set(verdicts), "the report is kept with the backup"
    assert "revision 2 already" in store.veneer("rebase", "m1").stdout, "a no-op keeps the backup for undo"
    last = json.loads(store.veneer("status", "m1", "--json").stdout)["last_rebase"]
    assert last["from"]["revision"] == 1 and last["to"]["revision"] == 2 and "4 conflict" in last["summary"]
    assert "veneer rebase --undo m1" in store.veneer("status", "m1").stdout
    store.veneer("rebase", "--undo", "m1")
    assert json.loads(store.veneer("status", "m1", "--json").stdout)["last_rebase"] is None
    assert tree_snapshot(store.upper("m1")) == before
    assert store.machine_json("m1")["revision"] == 1
    assert not (store.root / "machines/m1/rebase").exists()
    assert store.veneer("rebase", "--undo", "m1", ok=(1,)).stderr.count("no rebase to undo") == 1


def test_prefer_base_takes_the_bases_version_and_saves_the_childs(busybox: Store) -> None:
    store = busybox
    _setup_child_and_update(store)
    before = tree_snapshot(store.upper("m1"))
    store.veneer("rebase", "m1", "--prefer", "base")
    seen = sh(
        store, "m1", "cat /etc/motd /root/own; tail -1 /etc/profile; ls /usr/share/app; stat -c %a /srv"
    )
    assert seen == "base\nown\nchanged\na\nb\n750\n"
    saved = store.root / "machines/m1/rebase/saved"
    assert any(p.read_bytes() == b"child\n" for p in saved.iterdir() if p.is_file()), (
        "the child's motd is saved"
    )
    store.veneer("rebase", "--undo", "m1")
    assert tree_snapshot(store.upper("m1")) == before


def test_running_machine_is_stopped_rebased_and_started_again(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    store.veneer("start", "m1", "--wait")
    store.veneer("exec", "m1", "--", "sh", "-c", "echo kept > /root/note")
    update(store, "echo fresh > /etc/fresh")
    assert store.veneer("rebase", "m1", "--no-restart", ok=(1,)).stderr.count("is running") == 1
    out = store.veneer("rebase", "m1").stdout
    assert "Restarted." in out
    status = json.loads(store.veneer("status", "m1", "--json").stdout)
    assert status["state"] == "running" and status["revision"] == 1
    got = store.veneer("exec", "m1", "--", "cat", "/etc/fresh", "/root/note").stdout
    assert got == "fresh\nkept\n"
    store.veneer("stop", "m1")


def test_update_rebase_moves_every_child_with_a_summary(busybox: Store) -> None:
    store = busybox
    for name in ("a1", "a2"):
        store.veneer("create", name, "--from", "bb", "--network", "none")
    sh(store, "a1", "echo a1 > /etc/motd")
    out = update(store, "echo base > /etc/motd", "--rebase")
    assert (
        "a1: 'bb' revision 0 -> 'bb' revision 1" in out and "a2: 'bb' revision 0 -> 'bb' revision 1" in out
    )
    assert "1 conflict" in out and "nothing to do" in out
    assert [store.machine_json(n)["revision"] for n in ("a1", "a2")] == [1, 1]
    assert sh(store, "a2", "cat /etc/motd") == "base\n"
    assert sh(store, "a1", "cat /etc/motd") == "a1\n"


def test_kill_9_at_any_step_of_a_rebase_resumes_or_rolls_back(busybox: Store) -> None:
    store = busybox
    _setup_child_and_update(store)
    upper = store.upper("m1")
    before, before_loose = tree_snapshot(upper), tree_snapshot(upper, times=False)
    store.veneer("rebase", "m1")
    after = tree_snapshot(upper, times=False)
    store.veneer("rebase", "--undo", "m1")
    assert tree_snapshot(upper) == before
    outcomes: list[int] = []
    step = 1
    while killed_at(store, step, "rebase", "m1"):
        store.veneer("status", "m1")  # any command finishes (or forgets) the cut-short rebase
        revision = int(str(store.machine_json("m1")["revision"]))
        expected = after if revision == 2 else before_loose
        assert tree_snapshot(upper, times=False) == expected, f"step {step}"
        outcomes.append(revision)
        if revision == 2:
            store.veneer("rebase", "--undo", "m1")
        assert tree_snapshot(upper) == before, f"step {step}"
        step += 1
    # Killed before the journal was complete, the rebase is forgotten; after, it is finished. Every move
    # of an entry, every write of the journal's state and of the machine record was a kill point.
    assert outcomes[0] == 1 and outcomes[-1] == 2 and sorted(outcomes) == outcomes
    assert len(outcomes) > 8
    assert store.machine_json("m1")["revision"] == 2
    assert tree_snapshot(upper, times=False) == after


def test_kill_9_at_any_step_of_an_undo_finishes_the_undo(busybox: Store) -> None:
    store = busybox
    _setup_child_and_update(store)
    upper = store.upper("m1")
    before = tree_snapshot(upper)
    store.veneer("rebase", "m1")
    after = tree_snapshot(upper, times=False)
    finished_by_list = 0
    step = 1
    while killed_at(store, step, "rebase", "--undo", "m1"):
        store.veneer("list")  # any command finishes an undo that has begun
        if store.machine_json("m1")["revision"] == 2:  # killed before it began: nothing changed
            assert tree_snapshot(upper, times=False) == after, f"step {step}"
            store.veneer("rebase", "--undo", "m1")
        else:
            finished_by_list += 1
        assert tree_snapshot(upper) == before, f"step {step}"
        assert store.machine_json("m1")["revision"] == 1
        store.veneer("rebase", "m1")
        step += 1
    assert finished_by_list > 3
    assert tree_snapshot(upper) == before
    assert store.machine_json("m1")["revision"] == 1
