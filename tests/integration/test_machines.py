"""Machines end to end through the CLI: real overlay mounts, idmapped layers and systemd-nspawn."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import DEBIAN_USER
from tests.integration.helpers import Store, mounts_under
from veneer.config.layout import Layout
from veneer.config.settings import UID_RANGE_SIZE
from veneer.runtime.cgroups import Hierarchies
from veneer.runtime.nspawn import NSPAWN_STATE_DIR, needs_private_state_dir
from veneer.util import proc, procfs

pytestmark = [pytest.mark.integration, pytest.mark.root]


def upper_listing(store: Store, machine: str) -> dict[str, tuple[int, int]]:
    upper = store.upper(machine)
    entries = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            entries["/" + str(path.relative_to(upper))] = (st.st_uid, st.st_gid)
    return entries


def tree_fingerprint(tree: Path) -> list[tuple[str, int, int, int, int]]:
    rows = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            rows.append((os.path.join(dirpath, name), st.st_uid, st.st_gid, st.st_mode, st.st_size))
    return sorted(rows)


def test_upper_holds_only_the_commands_writes(busybox: Store) -> None:
    store = busybox
    base_before = tree_fingerprint(store.layer_tree("bb"))
    store.veneer("create", "m1", "--from", "bb")
    result = store.veneer("run", "m1", "--", "sh", "-c", "echo x > /root/f; id -u; stat -c %u /etc/passwd")
    assert result.stdout.split() == ["0", "0"], "container root and the base's root files are uid 0 inside"
    assert result.stderr == "", "a run prints nothing of its own (nspawn's state dir is a tmpfs for it)"
    base = store.machine_json("m1")["uid_base"]
    assert isinstance(base, int) and base >= 0x10000
    assert upper_listing(store, "m1") == {"/root": (base, base), "/root/f": (base, base)}
    assert (store.upper("m1") / "root/f").read_text() == "x\n"
    assert tree_fingerprint(store.layer_tree("bb")) == base_before
    assert not mounts_under(store.root, store.run), "run unmounts what it mounted"


def test_two_children_write_the_same_path_apart(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "one", "--from", "bb")
    store.veneer("create", "two", "--from", "bb")
    store.veneer("run", "one", "--", "sh", "-c", "echo one > /etc/motd")
    store.veneer("run", "two", "--", "sh", "-c", "echo two > /etc/motd")
    assert store.veneer("run", "one", "--", "cat", "/etc/motd").stdout == "one\n"
    assert store.veneer("run", "two", "--", "cat", "/etc/motd").stdout == "two\n"
    one, two = store.machine_json("one")["uid_base"], store.machine_json("two")["uid_base"]
    assert isinstance(one, int) and isinstance(two, int)
    assert abs(one - two) >= UID_RANGE_SIZE, "each machine has a uid range of its own"
    assert not (store.layer_tree("bb") / "etc/motd").exists()


def test_host_sees_the_uid_range(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb")
    base = store.machine_json("m1")["uid_base"]
    # The process runs as container root; on the host it is the first uid of the machine's range.
    out = store.veneer("run", "m1", "--", "sh", "-c", "sleep 0.1; cat /proc/self/uid_map").stdout.split()
    assert out[:3] == ["0", str(base), "65536"]


def test_base_is_read_only_inside(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb")
    # Writing a base file copies it up into the machine; the layer itself never changes.
    store.veneer("run", "m1", "--", "sh", "-c", "echo changed >> /etc/group")
    assert b"changed" not in (store.layer_tree("bb") / "etc/group").read_bytes()
    assert b"changed" in (store.upper("m1") / "etc/group").read_bytes()


def test_exit_status_stdin_env_workdir_bind(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb")
    assert store.veneer("run", "m1", "--", "sh", "-c", "exit 7", ok=(7,)).returncode == 7
    assert store.veneer("run", "m1", "--", "cat", input="piped\n").stdout == "piped\n"
    out = store.veneer(
        "run", "--env", "GREETING=hi", "--workdir", "/etc", "m1", "--", "sh", "-c", "echo $GREETING; pwd"
    ).stdout
    assert out.split() == ["hi", "/etc"]
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello").write_text("from host\n")
    out = store.veneer("run", "--bind", f"{shared}:/mnt:ro", "m1", "--", "cat", "/mnt/hello").stdout
    assert out == "from host\n"


def test_run_as_user(store: Store) -> None:
    store.veneer("image", "create", "bbu", "--busybox", "--user", "kang")
    store.veneer("create", "m1", "--from", "bbu")
    assert store.veneer("run", "--user", "kang", "m1", "--", "id", "-un").stdout == "kang\n"


def test_ephemeral_run_leaves_nothing(busybox: Store) -> None:
    store = busybox
    out = store.veneer("run", "--ephemeral", "--from", "bb", "--", "sh", "-c", "echo hi > /f; cat /f")
    assert out.stdout == "hi\n"
    assert store.veneer("list", "--json").stdout.strip() == "[]"
    assert not list((store.root / "machines").iterdir())


def test_privileged_is_visible_and_has_no_user_namespace(busybox: Store) -> None:
    store = busybox
    created = store.veneer("create", "p1", "--from", "bb", "--privileged")
    assert "privileged" in created.stdout
    store.veneer("run", "p1", "--", "sh", "-c", "touch /root/f")
    assert upper_listing(store, "p1")["/root/f"] == (0, 0)
    assert "privileged" in store.veneer("list").stdout


@contextlib.contextmanager
def sleeping_run(store: Store) -> Iterator[proc.Process]:
    """`veneer run m1 -- sleep 60` (a new machine from bb) in the background; ended on the way out."""
    store.veneer("create", "m1", "--from", "bb")
    runner = store.spawn("run", "m1", "--", "sleep", "60")
    try:
        yield runner
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)  # veneer ends nspawn and cleans up
            runner.wait(timeout=30)


def test_running_machine_is_refused_and_kill_9_is_recovered(busybox: Store) -> None:
    store = busybox
    with sleeping_run(store) as runner:
        deadline = time.monotonic() + 20
        while '"state": "running"' not in store.veneer("status", "m1", "--json").stdout:
            assert time.monotonic() < deadline, "the machine never showed as running"
            time.sleep(0.1)
        refused = store.veneer("run", "m1", "--", "true", ok=(1,))
        assert "Machine 'm1' is running" in refused.stderr
        refused = store.veneer("rm", "m1", ok=(1,))
        assert "is running" in refused.stderr
        # kill -9 veneer and the nspawn it started: the record now points at dead processes.
        pid = json.loads(store.veneer("status", "m1", "--json").stdout)["pid"]
        os.kill(runner.pid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        runner.wait()
        deadline = time.monotonic() + 20
        while '"state": "stopped"' not in store.veneer("status", "m1", "--json").stdout:
            assert time.monotonic() < deadline, "status keeps saying running after kill -9"
            time.sleep(0.1)
    # The next command cleans up the dead run's mount, and the machine works again.
    assert store.veneer("run", "m1", "--", "echo", "again").stdout == "again\n"
    assert not mounts_under(store.root)


def test_a_runs_nspawn_starts_in_the_machines_cgroups_with_a_state_dir_of_its_own(busybox: Store) -> None:
    # run launches nspawn without wrapper processes (runtime.nspawn.launch_in_child): nspawn itself is in
    # the machine's cgroups, and where the host's state dir is on a disk it has a tmpfs there that only
    # its own mount namespace (a slave of the host's) sees.
    store = busybox
    with sleeping_run(store) as runner:
        deadline = time.monotonic() + 20
        while not procfs.child_pids(runner.pid) or not Path(f"/proc/{runner.pid}/exe").exists():
            assert time.monotonic() < deadline, "veneer never started nspawn"
            time.sleep(0.05)
        time.sleep(0.5)  # past the exec
        (nspawn,) = procfs.child_pids(runner.pid)  # veneer forks nspawn itself: no wrapper in between
        assert os.readlink(f"/proc/{nspawn}/exe").endswith("systemd-nspawn")
        assert json.loads(store.veneer("status", "m1", "--json").stdout)["pid"] == nspawn
        cgroup = Layout(root=store.root, run=store.run).cgroup("m1")
        # Every hierarchy veneer made the machine's cgroup in (nspawn moves itself on below, on some).
        groups = dict(line.split(":", 2)[1:] for line in Path(f"/proc/{nspawn}/cgroup").read_text().split())
        made = {"": Hierarchies.detect().unified, **Hierarchies.detect().v1}
        for controllers, group in groups.items():
            if any(c in made for c in controllers.split(",")):
                assert group == f"/{cgroup}" or group.startswith(f"/{cgroup}/"), (controllers, group)
        theirs = Path(f"/proc/{nspawn}/mountinfo").read_text()
        state = f" {NSPAWN_STATE_DIR} "
        if needs_private_state_dir():
            assert os.readlink(f"/proc/{nspawn}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
            assert any(state in line and " - tmpfs " in line for line in theirs.splitlines())
            assert not any(
                state in line and " - tmpfs " in line
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
            )
            # A slave of the host's: what the host mounts later still shows inside, nothing goes back.
            ours = Path("/proc/self/mountinfo").read_text()
            shared = set(re.findall(r" shared:(\d+)", ours))
            assert shared <= set(re.findall(r" master:(\d+)", theirs)), "not a slave of the host's mounts"
            assert not set(re.findall(r" shared:(\d+)", theirs)) & shared, "not a peer of the host's"
        else:
            assert os.readlink(f"/proc/{nspawn}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    assert not mounts_under(store.root)


def test_diff_reports_added_changed_deleted(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb")
    store.veneer(
        "run",
        "m1",
        "--",
        "sh",
        "-c",
        "mkdir -p /srv/app && echo a > /srv/app/new; echo c >> /etc/passwd; rm /etc/os-release",
    )
    lines = store.veneer("diff", "m1").stdout.splitlines()
    assert "A /srv" in lines and "A /srv/app/new" in lines
    assert "C /etc/passwd" in lines
    assert "D /etc/os-release" in lines
    assert not any(line.endswith(" /etc") for line in lines), "an untouched parent dir is not a change"


def test_clone_and_rename(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb")
    store.veneer("run", "m1", "--", "sh", "-c", "echo mine > /root/f")
    store.veneer("clone", "m1", "m2")
    b1, b2 = store.machine_json("m1")["uid_base"], store.machine_json("m2")["uid_base"]
    assert b1 != b2 and isinstance(b2, int)
    assert upper_listing(store, "m2") == {"/root": (b2, b2), "/root/f": (b2, b2)}
    assert store.veneer("run", "m2", "--", "cat", "/root/f").stdout == "mine\n"
    store.veneer("rename", "m2", "m3")
    assert store.veneer("run", "m3", "--", "cat", "/root/f").stdout == "mine\n"
    names = [m["name"] for m in __import__("json").loads(store.veneer("list", "--json").stdout)]
    assert names == ["m1", "m3"]


def test_mount_and_umount(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb")
    root = Path(store.veneer("mount", "m1").stdout.strip())
    assert (root / "bin/busybox").exists()
    assert "is mounted" in store.veneer("rename", "m1", "m2", ok=(1,)).stderr
    # A run while mounted by the user leaves the mount in place.
    store.veneer("run", "m1", "--", "true")
    assert mounts_under(root) == [str(root)]
    store.veneer("umount", "m1")
    assert not mounts_under(store.root)


def test_bad_input_gives_clear_errors(busybox: Store) -> None:
    store = busybox
    bad = store.veneer("create", "Bad/Name", "--from", "bb", ok=(2,))
    assert "Invalid machine name 'Bad/Name'" in bad.stderr
    store.veneer("create", "m1", "--from", "bb")
    dup = store.veneer("create", "m1", "--from", "bb", ok=(1,))
    assert "Machine 'm1' exists already" in dup.stderr
    unknown = store.veneer("create", "m2", "--from", "nope", ok=(1,))
    assert "No image named 'nope'" in unknown.stderr and "veneer image list" in unknown.stderr
    in_use = store.veneer("image", "rm", "bb", ok=(1,))
    assert "used by 1 machine(s): m1" in in_use.stderr
    missing = store.veneer("run", "ghost", "--", "true", ok=(1,))
    assert "No machine named 'ghost'" in missing.stderr
    assert "Traceback" not in bad.stderr + dup.stderr + unknown.stderr + in_use.stderr
    store.veneer("rm", "m1")
    store.veneer("image", "rm", "bb")
    assert store.veneer("image", "list", "--json").stdout.strip() == "[]"
    assert not list((store.root / "layers").iterdir())


def test_kill_9_during_image_create_leaves_no_half_image(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.mkdir()
    proc.run(["cp", "-a", "/usr/lib/python3", str(source)])  # enough files to be caught mid-copy
    for delay in (0.05, 0.15, 0.3, 0.6, 1.2):
        creator = store.spawn("image", "create", "big", "--from-dir", str(source))
        time.sleep(delay)
        creator.send_signal(signal.SIGKILL)
        creator.wait()
        listed = store.veneer("image", "list", "--json").stdout
        if '"big"' in listed:
            # It finished before the kill: it must be whole, and removable.
            assert (store.layer_tree("big") / "python3").is_dir()
            store.veneer("image", "rm", "big")
        store.veneer("image", "create", "probe", "--busybox")  # any mutation sweeps leftovers
        store.veneer("image", "rm", "probe")
        assert not list((store.root / ".staging").iterdir()), f"leftovers after a kill at {delay}s"
        assert not list((store.root / "layers").iterdir())


def test_debian_base_runs_in_a_user_namespace(store: Store, debian_tree: Path) -> None:
    store.veneer("image", "create", "deb", "--from-dir", str(debian_tree))
    store.veneer("create", "d1", "--from", "deb")
    base = store.machine_json("d1")["uid_base"]
    out = store.veneer(
        "run", "d1", "--", "sh", "-c", "id -u; cat /etc/debian_version; dpkg -l dpkg | tail -1"
    )
    uid, version, dpkg = out.stdout.splitlines()
    assert uid == "0" and version.startswith("12.") and dpkg.startswith("ii  dpkg")
    # setuid binaries and real users work as in any Debian: `su` drops to the image's own user.
    who = store.veneer(
        "run", "d1", "--", "su", "-s", "/bin/sh", "-c", "id -un; touch /tmp/mine", DEBIAN_USER
    )
    assert who.stdout == f"{DEBIAN_USER}\n"
    assert store.veneer("run", "--user", DEBIAN_USER, "d1", "--", "id", "-un").stdout == f"{DEBIAN_USER}\n"
    # apt's own state writes land in the machine, owned by its range; the base stays as it was.
    store.veneer("run", "d1", "--", "sh", "-c", "echo 'deb-test' > /etc/apt/note")
    st = (store.upper("d1") / "etc/apt/note").lstat()
    assert (st.st_uid, st.st_gid) == (base, base)
    assert not (store.layer_tree("deb") / "etc/apt/note").exists()


def test_hostile_tarball_is_refused_and_leaves_a_clean_store(store: Store, tmp_path: Path) -> None:
    import io
    import tarfile

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("etc/", "../escaped"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            data = b"" if info.isdir() else b"pwned\n"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    refused = store.veneer("image", "create", "evil", "--from-tar", str(archive), ok=(1,))
    assert "../escaped" in refused.stderr and "nothing was imported" in refused.stderr
    assert not (tmp_path / "escaped").exists() and not (store.root / "escaped").exists()
    assert store.veneer("image", "list", "--json").stdout.strip() == "[]"
    assert not list((store.root / ".staging").iterdir())
    assert not list((store.root / "layers").iterdir())


def test_image_names_are_checked_everywhere(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "image.json").write_text("{}")
    for verb in ("show", "rm"):
        refused = store.veneer("image", verb, f"../../{victim.name}", ok=(2,))
        assert "Invalid image name" in refused.stderr
    assert (victim / "image.json").exists()


def test_leftover_cleanup_never_reaches_through_a_mount(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me\n")
    # A leftover of a killed build with something still mounted in it (as debootstrap leaves /proc).
    leftover = store.root / ".staging" / "image-dead-000000000000" / "layer" / "tree" / "proc"
    leftover.mkdir(parents=True)
    proc.run(["mount", "--bind", str(outside), str(leftover)])
    try:
        store.veneer("create", "m1", "--from", "bb")  # sweeps the leftover
        assert (outside / "precious").read_text() == "keep me\n"
        assert not (store.root / ".staging" / "image-dead-000000000000").exists()
    finally:
        if mounts_under(leftover):
            proc.run(["umount", "--lazy", str(leftover)])


def test_clone_keeps_file_capabilities(busybox: Store) -> None:
    store = busybox
    store.veneer("create", "m1", "--from", "bb")
    store.veneer("run", "m1", "--", "sh", "-c", "cp /bin/busybox /root/tool")
    tool = store.upper("m1") / "root/tool"
    v2_cap_net_raw = bytes.fromhex("01000002") + (1 << 13).to_bytes(4, "little") + bytes(12)
    os.setxattr(tool, "security.capability", v2_cap_net_raw)
    store.veneer("clone", "m1", "m2")
    assert os.getxattr(store.upper("m2") / "root/tool", "security.capability") == v2_cap_net_raw


@pytest.fixture
def nspawn_settings() -> Iterator[tuple[str, Path]]:
    """A unique machine name and the path of a host .nspawn file for that name (removed afterwards)."""
    directory = Path("/etc/systemd/nspawn")
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"ns{os.urandom(4).hex()}"
    path = directory / f"{name}.nspawn"
    try:
        yield name, path
    finally:
        path.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                directory.rmdir()


def test_host_nspawn_settings_do_not_apply(
    busybox: Store, tmp_path: Path, nspawn_settings: tuple[str, Path]
) -> None:
    store = busybox
    name, settings = nspawn_settings
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "marker").write_text("host file\n")
    # A settings file meant for some other container of the same name: a host bind, an extra variable.
    settings.write_text(f"[Exec]\nEnvironment=LEAKED=yes\n[Files]\nBind={secret}:/mnt/leak\n")
    store.veneer("create", name, "--from", "bb", "--network", "none")
    out = store.veneer("run", name, "--", "sh", "-c", "cat /mnt/leak/marker; echo leaked=$LEAKED").stdout
    assert "host file" not in out and out.endswith("leaked=\n"), out
