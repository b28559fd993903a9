"""`veneer cp` end to end: running and stopped machines, owners and modes, tar streams, hostile machines.

The hostile cases plant symlinks in the machine that name host paths (which exist on the host, not in
the machine) and a `tar` of the machine's own that writes a malicious archive: a copy must neither read
nor write anything outside the machine.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture(params=["stopped", "running"])
def machine(request: pytest.FixtureRequest, busybox: Store) -> Iterator[Store]:
    """Machine 'c1' of image 'bb', stopped or booted."""
    busybox.veneer("create", "c1", "--from", "bb", "--network", "none")
    if request.param == "running":
        busybox.veneer("start", "c1", "--wait")
    yield busybox
    busybox.veneer("stop", "c1", "--timeout", "5", ok=(0, 1))


def inside(store: Store, script: str) -> str:
    """Run a shell script in c1 (exec while it runs, run while it is stopped); its stdout."""
    running = json.loads(store.veneer("status", "c1", "--json").stdout)["state"] == "running"
    return store.veneer("exec" if running else "run", "c1", "--", "sh", "-c", script).stdout


def uid_base(store: Store) -> int:
    base = store.machine_json("c1")["uid_base"]
    assert isinstance(base, int)
    return base


def test_files_and_directories_both_ways(machine: Store, tmp_path: Path) -> None:
    store = machine
    (tmp_path / "f.txt").write_text("hello\n")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "y").write_text("y\n")
    (tmp_path / "d" / "link").symlink_to("sub/y")
    store.veneer("cp", str(tmp_path / "f.txt"), "c1:/root/")  # into a directory
    store.veneer("cp", str(tmp_path / "f.txt"), "c1:/root/renamed")  # as a new name
    store.veneer("cp", str(tmp_path / "d"), "c1:/root/dd")
    listing = inside(store, "cat /root/f.txt /root/renamed /root/dd/sub/y; readlink /root/dd/link; "
                            "stat -c '%u:%g %a' /root/f.txt")  # fmt: skip
    assert listing.split() == ["hello", "hello", "y", "sub/y", "0:0", "644"]
    # Owned by the machine's root: its host uid in the upper dir.
    base = uid_base(store)
    upper = store.upper("c1") / "root"
    assert (upper / "dd/sub/y").stat().st_uid == base and (upper / "f.txt").stat().st_gid == base
    out = tmp_path / "out"
    out.mkdir()
    store.veneer("cp", "c1:/root/dd", str(out))
    store.veneer("cp", "c1:/root/f.txt", str(out / "g.txt"))
    assert (out / "dd/sub/y").read_text() == "y\n" and os.readlink(out / "dd/link") == "sub/y"
    assert (out / "g.txt").read_text() == "hello\n" and (out / "g.txt").stat().st_uid == os.getuid()
    # A file is replaced in place, a missing source is a clear error.
    (tmp_path / "f.txt").write_text("again\n")
    store.veneer("cp", str(tmp_path / "f.txt"), "c1:/root/f.txt")
    assert inside(store, "cat /root/f.txt") == "again\n"
    missing = store.veneer("cp", "c1:/root/nope", str(out), ok=(1,))
    assert "/root/nope: no such file or directory in the machine" in missing.stderr
    nodir = store.veneer("cp", str(tmp_path / "f.txt"), "c1:/nodir/x", ok=(1,))
    assert "/nodir: no such directory in the machine" in nodir.stderr


def test_owner_and_mode_are_the_machines_ids(machine: Store, tmp_path: Path) -> None:
    store = machine
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "g").write_text("g")
    store.veneer("cp", "--uid", "1000", "--gid", "100", "--mode", "600", str(tmp_path / "f"), "c1:/root/f")
    store.veneer("cp", "--uid", "5", "--mode", "640", str(tmp_path / "d"), "c1:/root/d")
    stats = inside(store, "stat -c '%u:%g:%a' /root/f /root/d /root/d/g").split()
    assert stats == ["1000:100:600", "5:0:750", "5:0:640"]
    base = uid_base(store)
    st = (store.upper("c1") / "root/f").stat()
    assert (st.st_uid, st.st_gid) == (base + 1000, base + 100)
    refused = store.veneer("cp", "--uid", "65536", str(tmp_path / "f"), "c1:/root/f", ok=(2,))
    assert "Invalid uid 65536" in refused.stderr
    # Out of the machine, the ids are the host's.
    store.veneer("cp", "--uid", "1234", "--gid", "4321", "--mode", "604", "c1:/root/f", str(tmp_path / "o"))
    st = (tmp_path / "o").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 4321, 0o604)


def test_tar_streams_both_ways(machine: Store, tmp_path: Path) -> None:
    store = machine
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("in/a.txt")
        info.size, info.uid, info.gid, info.mode = 3, 7, 8, 0o600
        archive.addfile(info, io.BytesIO(b"abc"))
    stream = tmp_path / "in.tar"
    stream.write_bytes(buffer.getvalue())
    cp = store.argv("cp", "-", "c1:/root")
    with open(stream, "rb") as stdin:
        assert (
            proc.spawn_piped(cp, stdin=stdin.fileno(), stdout=None, stderr=None, env=store.env()).wait() == 0
        )
    assert inside(store, "cat /root/in/a.txt; stat -c ' %u:%g:%a' /root/in/a.txt") == "abc 7:8:600\n"
    with open(stream, "rb") as stdin:
        cp = store.argv("cp", "--uid", "9", "-", "c1:/root")
        assert (
            proc.spawn_piped(cp, stdin=stdin.fileno(), stdout=None, stderr=None, env=store.env()).wait() == 0
        )
    assert inside(store, "stat -c '%u:%g' /root/in/a.txt") == "9:8\n"
    out = tmp_path / "out.tar"
    with open(out, "wb") as stdout:
        cp = store.argv("cp", "c1:/root/in", "-")
        assert (
            proc.spawn_piped(cp, stdin=None, stdout=stdout.fileno(), stderr=None, env=store.env()).wait()
            == 0
        )
    with tarfile.open(out) as archive:
        members = {m.name.removeprefix("./"): (m.uid, m.gid) for m in archive.getmembers()}
    assert members == {"in": (0, 0), "in/a.txt": (9, 8)}, "a stream keeps the machine's own ids"
    garbage = "not a tar archive\n" * 64
    assert (
        "Not a valid tar stream"
        in store.veneer("cp", "--uid", "1", "-", "c1:/root", input=garbage, ok=(2,)).stderr
    )
    assert (
        "Failed to copy into machine 'c1'"
        in store.veneer("cp", "-", "c1:/root", input=garbage, ok=(1,)).stderr
    )


def test_symlinks_in_the_machine_resolve_inside(machine: Store, tmp_path: Path) -> None:
    store = machine
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("host secret\n")
    (host / "target").write_text("host file\n")
    (tmp_path / "f").write_text("planted\n")
    # /srv/x names a host directory (absent in the machine), /srv/e the machine's /etc, /srv/t a host file.
    inside(store, f"mkdir -p /srv && ln -s {host} /srv/x && ln -s /etc /srv/e && ln -s {host}/target /srv/t")
    # Reading: through /srv/x there is nothing (the host's directory is not in the machine).
    store.veneer("cp", "c1:/srv/x/secret", str(tmp_path / "got"), ok=(1,))
    store.veneer("cp", "-L", "c1:/srv/t", str(tmp_path / "got"), ok=(1,))
    assert not (tmp_path / "got").exists()
    store.veneer("cp", "c1:/srv/e/passwd", str(tmp_path / "passwd"))
    assert (tmp_path / "passwd").read_text() == inside(store, "cat /etc/passwd")
    # Writing: through /srv/x and /srv/e the writes land in the machine, never on the host.
    store.veneer("cp", str(tmp_path / "f"), "c1:/srv/x/planted", ok=(1,))
    store.veneer("cp", str(tmp_path / "f"), "c1:/srv/e/veneer-cp-planted")
    store.veneer("cp", str(tmp_path / "f"), "c1:/srv/e/")  # into the machine's /etc as "f"
    store.veneer("cp", str(tmp_path / "f"), "c1:/srv/t")  # replaces the symlink itself, in the machine
    assert sorted(p.name for p in host.iterdir()) == ["secret", "target"]
    assert (host / "target").read_text() == "host file\n"
    assert not Path("/etc/veneer-cp-planted").exists()
    assert (store.upper("c1") / "etc/veneer-cp-planted").read_text() == "planted\n"
    assert (
        inside(store, "cat /etc/f /srv/t; [ -L /srv/t ] || echo replaced") == "planted\n" * 2 + "replaced\n"
    )


def test_a_hostile_tar_in_the_machine_writes_nothing_outside(machine: Store, tmp_path: Path) -> None:
    store = machine
    # The machine's root makes the copy's script write an archive whose member escapes its destination.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("../escaped")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    (tmp_path / "evil.tar").write_bytes(buffer.getvalue())
    store.veneer("cp", str(tmp_path / "evil.tar"), "c1:/root/evil.tar")
    # busybox runs its own applets whatever PATH says, so the machine's root replaces what starts the
    # script: /bin/sh (nspawn runs it) and an env first on PATH (nsenter runs it).
    fake = "#!/bin/busybox sh\\ncat /root/evil.tar\\n"
    plant = f"printf '{fake}' > /usr/local/bin/env && chmod 755 /usr/local/bin/env && rm /bin/sh && "
    inside(store, f"mkdir -p /usr/local/bin && {plant} cp /usr/local/bin/env /bin/sh")
    out = tmp_path / "out" / "in"
    out.mkdir(parents=True)
    refused = store.veneer("cp", "c1:/etc/passwd", str(out / "p"), ok=(1,))
    assert "'..' component" in refused.stderr
    assert os.listdir(tmp_path / "out") == ["in"] and os.listdir(out) == [], "nothing written, no leftovers"


def test_a_stopped_machine_copies_without_its_network(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    store.veneer("create", "n1", "--from", "bb")  # nat, the default
    (tmp_path / "f").write_text("no network needed\n")
    store.veneer("cp", str(tmp_path / "f"), "n1:/root/f")
    store.veneer("cp", "n1:/root/f", str(tmp_path / "g"))
    assert (tmp_path / "g").read_text() == "no network needed\n"
    # The throwaway run that copies is `run --network none`: only loopback inside.
    links = store.veneer("run", "--network", "none", "n1", "--", "sh", "-c", "ls /sys/class/net").stdout
    assert links.split() == ["lo"]
    assert store.machine_json("n1")["network"] != "none", "the machine keeps its own network"
