"""uid ranges are unique per host: stores share one registry, and a removed machine's range is not handed to
the next machine while files it left behind (on a bind directory) still carry its uids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store, private_store
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two stores (two --root) on one host, each with the busybox image 'bb'. They share the registry of
    uid ranges, as every store on a host does by default (here one of the test's own)."""
    with private_store(tmp_path / "a") as a, private_store(tmp_path / "b") as b:
        a.uids = b.uids = tmp_path / "uids"
        for store in (a, b):
            store.veneer("image", "create", "bb", "--busybox")
        yield a, b


def uid_base(store: Store, machine: str) -> int:
    base = store.machine_json(machine)["uid_base"]
    assert isinstance(base, int)
    return base


def registry(store: Store) -> list[dict[str, object]]:
    ranges: list[dict[str, object]] = json.loads((store.uids / "ranges.json").read_text())["ranges"]
    return ranges


def test_two_stores_get_disjoint_ranges(two_stores: tuple[Store, Store]) -> None:
    a, b = two_stores
    a.veneer("create", "m1", "--from", "bb", "--network", "none")
    b.veneer("create", "m1", "--from", "bb", "--network", "none")
    b.veneer("clone", "m1", "m2")
    bases = [uid_base(a, "m1"), uid_base(b, "m1"), uid_base(b, "m2")]
    assert len(set(bases)) == 3, bases
    b.veneer("rename", "m2", "m3")
    a.veneer("create", "m2", "--from", "bb", "--network", "none")
    assert uid_base(a, "m2") not in [*bases, uid_base(b, "m3")]
    used = {(r["store"], r["machine"]): r["base"] for r in registry(a) if r["state"] == "used"}
    assert used[(str(b.root), "m3")] == bases[2], "a renamed machine keeps its range"


def test_a_removed_machines_files_do_not_go_to_the_next_machine(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)  # a directory every machine may write to, as /tmp
    bind = f"{shared}:/data"
    store.veneer("create", "old", "--from", "bb", "--network", "none", "--bind", bind)
    store.veneer("run", "old", "--", "sh", "-c", "echo private > /data/secret; chmod 600 /data/secret")
    old_base = uid_base(store, "old")
    store.veneer("rm", "old")
    store.veneer("create", "new", "--from", "bb", "--network", "none", "--bind", bind)
    assert uid_base(store, "new") != old_base
    read = store.veneer("run", "new", "--", "cat", "/data/secret", ok=(0, 1))
    assert "private" not in read.stdout, "the next machine's root does not own what the removed one left"
    (retired,) = [r for r in registry(store) if r["state"] == "retired"]
    assert retired["base"] == old_base and retired["machine"] == "old"


def test_throwaway_machines_without_binds_do_not_use_up_ranges(busybox: Store) -> None:
    store = busybox
    store.veneer("run", "--ephemeral", "--from", "bb", "--", "true")
    store.veneer("image", "update", "bb", "--network", "none", "--", "touch", "/etc/updated")
    assert registry(store) == [], "nothing of theirs can be left anywhere: their ranges are free again"


def test_machines_made_before_the_registry_keep_their_ranges(two_stores: tuple[Store, Store]) -> None:
    a, b = two_stores
    shared = a.uids
    a.uids = shared.with_name("older-veneer")  # a store whose machines no registry has seen yet
    a.veneer("create", "legacy", "--from", "bb", "--network", "none")
    a.uids = shared
    a.veneer("create", "m2", "--from", "bb", "--network", "none")
    b.veneer("create", "n1", "--from", "bb", "--network", "none")
    bases = [uid_base(a, "legacy"), uid_base(a, "m2"), uid_base(b, "n1")]
    assert len(set(bases)) == 3, bases


def test_concurrent_creates_in_two_stores_do_not_collide(two_stores: tuple[Store, Store]) -> None:
    a, b = two_stores
    names = [f"c{i}" for i in range(3)]
    started = [
        (
            store,
            name,
            proc.spawn(store.argv("create", name, "--from", "bb", "--network", "none"), env=store.env()),
        )
        for store in (a, b)
        for name in names
    ]
    for _store, _name, process in started:
        assert process.wait() == 0
    bases = [uid_base(store, name) for store, name, _ in started]
    assert len(set(bases)) == len(bases), bases
