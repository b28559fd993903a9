"""Host-side readers of a machine's upper dir (diff, list, journal, rebase) against trees a hostile machine
plants there: symlinks into the host, and trees deeper than any reader should follow."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"


def plant_symlink(store: Store, machine: str, relative: str, target: Path) -> None:
    """What root in the machine gets with `mkdir -p; ln -s TARGET RELATIVE`: the link in its upper dir."""
    base = store.machine_json(machine)["uid_base"]
    assert isinstance(base, int)
    link = store.upper(machine) / relative
    link.parent.mkdir(parents=True, exist_ok=True)
    for path in [link.parent, *link.parent.parents]:
        if path == store.upper(machine):
            break
        os.chown(path, base, base)
    link.symlink_to(target)
    os.chown(link, base, base, follow_symlinks=False)


def plant_deep_tree(upper: Path, depth: int) -> None:
    """`srv/d/d/d/...` nested `depth` times, made through dir fds (the path is longer than PATH_MAX)."""
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ["srv"] + ["d"] * depth:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def host_journal(directory: Path, marker: str) -> Path:
    """A real journal file holding one entry with `marker` as its message."""
    directory.mkdir(parents=True, exist_ok=True)
    entry = (
        "__REALTIME_TIMESTAMP=1700000000000000\n__MONOTONIC_TIMESTAMP=1000\n"
        f"_BOOT_ID={'0' * 32}\n_HOSTNAME=host\nMESSAGE={marker}\n\n"
    )
    path = directory / "system.journal"
    proc.run([JOURNAL_REMOTE, f"--output={path}", "-"], input=entry, capture=True)
    assert marker in proc.run(["journalctl", f"--file={path}", "--no-pager"], capture=True).stdout
    return path


def test_journal_of_a_stopped_machine_never_reads_the_hosts(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    store.veneer("create", "m2", "--from", "bb", "--network", "none")
    machine_id = str(store.machine_json("m1")["machine_id"])
    host = tmp_path / "host-journal"
    journal_file = host_journal(host / machine_id, "host-marker-1")
    # The whole journal directory is a link to a host directory holding a journal for this machine id.
    plant_symlink(store, "m1", "var/log/journal", host)
    result = store.veneer("journal", "m1", ok=(0, 1))
    assert "host-marker-1" not in result.stdout + result.stderr
    # The machine's own journal directory holds a link to a host journal file.
    plant_symlink(store, "m2", f"var/log/journal/{store.machine_json('m2')['machine_id']}/system.journal",
                  journal_file)  # fmt: skip
    result = store.veneer("journal", "m2", ok=(0, 1))
    assert "host-marker-1" not in result.stdout + result.stderr
    # The machine's own journal, in its own directories, is read.
    store.veneer("create", "m3", "--from", "bb", "--network", "none")
    host_journal(store.upper("m3") / f"var/log/journal/{store.machine_json('m3')['machine_id']}", "own-3")
    assert "own-3" in store.veneer("journal", "m3").stdout


def test_diff_and_list_never_follow_links_to_the_host(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.write(b"\1" * (32 << 20))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "host-only-name").write_text("x")
    plant_symlink(store, "m1", "srv/big", big)
    plant_symlink(store, "m1", "srv/dir", secrets)
    plant_symlink(store, "m1", "etc", Path("/"))
    lines = store.veneer("diff", "m1").stdout.splitlines()
    assert "C /etc" in lines and "A /srv/dir" in lines and "A /srv/big" in lines
    assert not any("host-only-name" in line or "/etc/passwd" in line for line in lines), lines
    (listed,) = json.loads(store.veneer("list", "--json").stdout)
    assert listed["disk_bytes"] < 1 << 20, "a host file behind a link is not the machine's"


def test_a_planted_deep_tree_gets_a_clear_error_not_a_crash(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    plant_deep_tree(store.upper("m1"), 3000)
    failed = store.veneer("diff", "m1", ok=(1,))
    assert "deeper than" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
    listed = store.veneer("list", "--json")
    (machine,) = json.loads(listed.stdout)
    assert machine["name"] == "m1" and "deeper than" in listed.stderr
    # The commands that copy or re-own all of it with tools of their own refuse it the same way.
    for command in (["commit", "m1", "img2"], ["export", "m1", "/dev/null"], ["clone", "m1", "m2"]):
        failed = store.veneer(*command, ok=(1,))
        assert "deeper than" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
    store.veneer("rm", "m1")


def test_rebase_never_reads_or_moves_host_files_behind_a_link(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    host_db = tmp_path / "host-pacman"
    (host_db / "local/hostpkg-1.0-1").mkdir(parents=True)
    (host_db / "local/hostpkg-1.0-1/desc").write_text("%NAME%\nhostpkg\n")
    # The machine's pacman database is a link to the host's.
    plant_symlink(store, "m1", "var/lib/pacman", host_db)
    store.veneer("image", "update", "bb", "--network", "none", "--", "sh", "-c", "echo v2 > /etc/version")
    planned = store.veneer("rebase", "--dry-run", "--json", "m1").stdout
    assert "hostpkg" not in planned, planned
    store.veneer("rebase", "m1")
    assert (host_db / "local/hostpkg-1.0-1/desc").read_text() == "%NAME%\nhostpkg\n"
    assert (store.upper("m1") / "var/lib/pacman").is_symlink(), "the machine's own link stays as it was"


def test_the_view_readers_use_follows_no_link_anywhere(busybox: Store, tmp_path: Path) -> None:
    """What makes the readers safe while the machine runs and swaps a directory for a link mid-read."""
    from veneer.overlay.view import nofollow_view

    store = busybox
    store.veneer("create", "m1", "--from", "bb", "--network", "none")
    plant_symlink(store, "m1", "etc", Path("/"))
    (store.upper("m1") / "srv").mkdir()
    (store.upper("m1") / "srv/own").write_text("own\n")
    with nofollow_view(store.upper("m1")) as view:
        assert (view / "srv/own").read_text() == "own\n"
        assert os.readlink(view / "etc") == "/"
        for path in (view / "etc/passwd", view / "etc"):
            with pytest.raises(OSError) as refused:
                path.read_bytes() if path.name == "passwd" else os.listdir(path)
            assert refused.value.errno == errno.ELOOP
        # journalctl and other commands veneer starts resolve the same path the same way.
        assert proc.run(["cat", str(view / "srv/own")], capture=True).stdout == "own\n"
        refused_cat = proc.run(["cat", str(view / "etc/passwd")], check=False, capture=True)
        assert "Too many levels of symbolic links" in refused_cat.stderr
        with pytest.raises(OSError) as refused:
            (view / "srv/new").write_text("x")
        assert refused.value.errno == errno.EROFS
