"""`veneer copy` and `veneer move` to a "second host": the test's own sshd on 127.0.0.1 (see
test_ansible_ssh) in front of a second store, which shares this host's registry of uid ranges, so a copy
always lands in another range than its source's.

Also: a transfer cut short (ssh killed mid-stream) leaves nothing on either side, and `veneer _receive`
refuses hostile streams without writing outside its staging dir.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import struct
import sys
import tarfile
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from tests.integration.test_ansible_ssh import SshHost, second_store, ssh_host
from veneer.util import proc, procfs

pytestmark = [pytest.mark.integration, pytest.mark.root]

__all__ = ["second_store", "ssh_host"]  # fixtures used here

# An ACL granting one named user read access: version 2, then (tag, perm, id) entries in tag order.
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
NO_ID = 0xFFFFFFFF


def acl(user: int) -> bytes:
    entries = [(ACL_USER_OBJ, 6, NO_ID), (ACL_USER, 4, user), (ACL_GROUP_OBJ, 4, NO_ID),
               (ACL_MASK, 4, NO_ID), (ACL_OTHER, 0, NO_ID)]  # fmt: skip
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def capability(*, rootid: int) -> bytes:
    """A v3 file capability (CAP_NET_RAW, effective) of the user namespace whose root is `rootid`."""
    return struct.pack("<IIIIII", 0x03000001, 1 << 13, 0, 0, 0, rootid)


def remote_wrapper(store: Store, path: Path, *, stall: Path | None = None) -> Path:
    """The veneer command of the second host. With `stall`, `_receive` gets the first 64 KiB of the stream
    and then nothing more: it waits until the pid in `stall` (a sleep the test ends) is gone."""
    exports = " ".join(f"{k}={v}" for k, v in store.env().items())
    run = f'{sys.executable} -m veneer "$@"'
    if stall is None:
        body = f"exec {run}"
    else:
        body = (
            f'if [ "$1" = _receive ] && [ "$2" != --layers ]; then\n'
            f"  {{ head -c 65536; sleep 600 & echo $! > {stall}; wait; }} | {run}\n"
            f"else\n  exec {run}\nfi"
        )
    path.write_text(f"#!/bin/sh\nexport {exports}\n{body}\n")
    path.chmod(0o755)
    return path


def ssh_options(ssh: SshHost) -> list[str]:
    keys = Path(ssh.ssh_args.split(" -i ")[1].split()[0]).parent
    return ["-p", str(ssh.port), "-i", str(keys / "client_key"), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={keys / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes"]  # fmt: skip


def owners(store: Store, machine: str, path: str) -> str:
    return store.veneer(
        "run", "--network", "none", machine, "--", "stat", "-c", "%u:%g", path
    ).stdout.strip()


def test_copy_then_move_keeps_files_owners_and_sends_only_missing_layers(
    busybox: Store, second_store: Store, ssh_host: SshHost, tmp_path: Path
) -> None:
    local, remote = busybox, second_store
    wrapper = remote_wrapper(remote, tmp_path / "veneer-remote")
    local.veneer("create", "m1", "--from", "bb", "--network", "none")
    # A hard link, a fifo, a symlink, a whiteout (inittab), an opaque directory (/usr/lib made anew, with
    # the image's init kept).
    script = ("mkdir -p /srv/data && echo hello > /srv/data/a && chown 1000:1001 /srv/data/a && "
              "ln /srv/data/a /srv/data/hard && mknod /srv/fifo p && ln -s /etc/passwd /srv/link && "
              "rm /etc/inittab && cp /usr/lib/os-release /os && cp -a /usr/lib/veneer /v && "
              "rm -rf /usr/lib && mkdir /usr/lib && mv /os /usr/lib/os-release && mv /v /usr/lib/veneer && "
              "echo new > /usr/lib/only")  # fmt: skip
    local.veneer("run", "--network", "none", "m1", "--", "sh", "-c", script)
    base = int(str(local.machine_json("m1")["uid_base"]))
    upper = local.upper("m1")
    os.setxattr(upper / "srv/data/a", "user.note", b"kept")
    os.setxattr(upper / "srv/data/a", "system.posix_acl_access", acl(base + 33))
    os.setxattr(upper / "srv/data/hard", "security.capability", capability(rootid=base))
    options = [*ssh_options(ssh_host), "--remote-veneer", str(wrapper)]

    first = local.veneer("copy", "m1", "root@127.0.0.1:c1", *options).stdout
    assert "(1 of 1 image layers sent" in first, first
    remote_base = int(str(remote.machine_json("c1")["uid_base"]))
    assert remote_base != base, "the receiving host gave it a range of its own"
    assert remote.machine_json("c1")["machine_id"] != local.machine_json("m1")["machine_id"]
    assert owners(remote, "c1", "/srv/data/a") == "1000:1001"
    got = remote.upper("c1")
    assert (got / "srv/data/a").stat().st_uid == remote_base + 1000
    assert (got / "srv/data/a").stat().st_ino == (got / "srv/data/hard").stat().st_ino
    assert os.getxattr(got / "srv/data/a", "user.note") == b"kept"
    assert os.getxattr(got / "srv/data/a", "system.posix_acl_access") == acl(remote_base + 33)
    assert os.getxattr(got / "srv/data/a", "security.capability") == capability(rootid=remote_base)
    assert stat.S_ISFIFO((got / "srv/fifo").lstat().st_mode)
    assert os.readlink(got / "srv/link") == "/etc/passwd"
    whiteout = (got / "etc/inittab").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(got / "usr/lib", "trusted.overlay.opaque") == b"y"
    script = "cat /srv/data/a; ls /usr/lib; test -e /etc/inittab || echo gone"
    seen = remote.veneer("run", "--network", "none", "c1", "--", "sh", "-c", script).stdout
    assert seen.split() == ["hello", "only", "os-release", "veneer", "gone"]

    # The image's layer is there now: a move sends none, and removes the machine here once it arrived.
    local.veneer("clone", "m1", "m2")
    local.veneer("snapshot", "m2", "s1")
    refused = local.veneer("move", "m2", "root@127.0.0.1", *options, ok=(1,))
    assert "Machine 'm2' has snapshots, which do not travel" in refused.stderr
    local.veneer("snapshot", "rm", "m2", "s1")
    second = local.veneer("move", "m2", "root@127.0.0.1", *options).stdout
    assert "(0 of 1 image layers sent" in second, second
    assert "m2" not in local.veneer("list").stdout
    assert owners(remote, "m2", "/srv/data/a") == "1000:1001"
    images = json.loads(remote.veneer("image", "list", "--json").stdout)
    assert [(i["name"], sorted(i["machines"])) for i in images] == [("bb", ["c1", "m2"])], images

    # Back again, fetched by this host: copy --from and move --from.
    fetched = local.veneer("copy", "--from", "root@127.0.0.1", "c1", "back", *options).stdout
    assert "as 'back' (0 image layers received)" in fetched, fetched
    assert owners(local, "back", "/srv/data/a") == "1000:1001"
    local.veneer("move", "--from", "root@127.0.0.1", "m2", *options)
    assert "m2" not in remote.veneer("list").stdout
    assert owners(local, "m2", "/srv/data/a") == "1000:1001"

    again = local.veneer("copy", "m1", "root@127.0.0.1:c1", *options, ok=(1,))
    assert "Machine 'c1' exists already" in again.stderr
    remote.veneer("start", "c1", "--wait")
    try:
        assert remote.veneer("exec", "c1", "--", "cat", "/srv/data/a").stdout == "hello\n"
    finally:
        remote.veneer("stop", "c1", "--timeout", "5")


def test_cut_short_transfer_leaves_nothing_on_either_side(
    busybox: Store, second_store: Store, ssh_host: SshHost, tmp_path: Path
) -> None:
    local, remote = busybox, second_store
    stall = tmp_path / "stall.pid"
    wrapper = remote_wrapper(remote, tmp_path / "veneer-remote", stall=stall)
    local.veneer("create", "m1", "--from", "bb", "--network", "none")
    (local.upper("m1") / "big").write_bytes(os.urandom(4 << 20))
    sender = proc.spawn_piped(
        local.argv("move", "m1", "root@127.0.0.1", *ssh_options(ssh_host), "--remote-veneer", str(wrapper)),
        stdin=proc.DEVNULL, stdout=proc.PIPE, stderr=proc.PIPE, env=local.env(),
    )  # fmt: skip
    try:
        assert proc.wait_until(lambda: stall.exists() and stall.read_text().strip() != "", timeout=60)
        assert proc.wait_until(
            lambda: bool(list((remote.root / ".staging").glob("receive-m1-*"))), timeout=60
        )
        ssh = [
            pid for pid in procfs.child_pids(sender.pid) if "ssh" in Path(f"/proc/{pid}/comm").read_text()
        ]
        assert len(ssh) == 1
        os.kill(ssh[0], signal.SIGKILL)
        _, err = sender.communicate()
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        os.kill(int(stall.read_text()), signal.SIGTERM)  # the stalled receiver reads its end of stream
    assert sender.returncode == 1
    assert b"Failed to copy machine 'm1' to root@127.0.0.1" in err, err
    assert "m1" in local.veneer("list").stdout, "the source stays when the move did not complete"
    assert (local.upper("m1") / "big").stat().st_size == 4 << 20
    remote.veneer("image", "prune")  # any command of the store's removes what a killed one left
    assert remote.veneer("list", "--json").stdout.strip() == "[]"
    assert not list((remote.root / ".staging").iterdir())
    assert not (remote.root / "images" / "bb").exists()
    assert not list((remote.root / "layers").iterdir())


def manifest(base: int, *, sent: list[str], layers: list[str] | None = None) -> bytes:
    stack = layers if layers is not None else ["0123456789abcdef"]
    record = {"version": 1, "name": "evil", "image": "bb", "revision": 0, "created": 1.0,
              "machine_id": "0" * 32, "uid_base": base, "network": "none"}  # fmt: skip
    data = {
        "version": 1,
        "machine": record,
        "image_created": 1.0,
        "revision": {"number": 0, "created": 1.0, "command": "x", "layers": stack},
        "layers": [{"version": 1, "id": x, "created": 1.0, "origin": "x", "size_bytes": 1} for x in stack],
        "sent": sent,
    }
    return json.dumps(data).encode() + b"\n"


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def member(
    name: str, kind: bytes = tarfile.REGTYPE, *, uid: int, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.uid, info.gid, info.linkname = kind, uid, uid, link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, b"owned" if kind == tarfile.REGTYPE else b""


BASE = 0x7FF00000
HOSTILE = {
    "dotdot": (manifest(BASE, sent=["0123456789abcdef"]),
               [member("upper", tarfile.DIRTYPE, uid=BASE), member("upper/../../../escaped", uid=BASE)]),
    "symlink": (manifest(BASE, sent=["0123456789abcdef"]),
                [member("upper/link", tarfile.SYMTYPE, uid=BASE, link="{outside}"),
                 member("upper/link/escaped", uid=BASE)]),
    "host uid": (manifest(BASE, sent=["0123456789abcdef"]), [member("upper/setuid-root", uid=0)]),
    "layer path": (manifest(BASE, sent=["0123456789abcdef"]),
                   [member("layers/0123456789abcdef/../../escaped", uid=0)]),
    "other section": (manifest(BASE, sent=[]), [member("layers/0123456789abcdef/tree/x", uid=0)]),
    "bad layer id": (manifest(BASE, sent=["../../etc"], layers=["../../etc"]), []),
    "bad range": (manifest(12345, sent=["0123456789abcdef"]), [member("upper/x", uid=12345)]),
    "no end": (manifest(BASE, sent=["0123456789abcdef"]), [member("upper/x", uid=BASE)]),
}  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_stream_is_refused_without_writing_outside_staging(
    busybox: Store, case: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    head, members = HOSTILE[case]
    for info, _ in members:
        info.linkname = info.linkname.replace("{outside}", str(outside))
    ended = [*members, member(".end", uid=0)] if case != "no end" else members
    stream = head + tar_of(*[(i, d if i.name != ".end" else b"") for i, d in ended])
    before = sorted(p.name for p in busybox.root.rglob("*"))
    result = _receive(busybox, stream)
    assert result[0] == 1, result
    assert "Refusing" in result[1] or "ended early" in result[1], result
    assert not list(outside.iterdir())
    assert not (tmp_path / "escaped").exists() and not (busybox.root / "escaped").exists()
    assert not list((busybox.root / ".staging").iterdir())
    assert sorted(p.name for p in busybox.root.rglob("*")) == before
    assert "evil" not in busybox.veneer("list").stdout


def _receive(store: Store, stream: bytes) -> tuple[int, str]:
    path = store.root.parent / "stream"
    path.write_bytes(stream)
    with open(path, "rb") as f:
        child = proc.spawn_piped(store.argv("_receive"), stdin=f.fileno(), stdout=proc.PIPE,
                                 stderr=proc.PIPE, env=store.env())  # fmt: skip
        out, err = child.communicate()
    path.unlink()
    return child.returncode, err.decode()


def test_veneer_machine_copies_an_absent_machine_once_and_plans_it_in_check_mode(
    busybox: Store, second_store: Store, ssh_host: SshHost, tmp_path: Path
) -> None:
    from tests.integration.test_ansible import ansible_env, tool, write_wrapper

    local, remote = busybox, second_store
    local.veneer("create", "src1", "--from", "bb", "--network", "none")
    local_veneer = write_wrapper(local, tmp_path / "veneer-local")
    remote_veneer = write_wrapper(remote, tmp_path / "veneer-remote")
    options = [*ssh_options(ssh_host), "--remote-veneer", str(local_veneer)]
    (tmp_path / "play.yml").write_text(f"""
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: {sys.executable}
  tasks:
    - veneer.machines.veneer_machine:
        name: src1
        state: present
        copy_from: root@127.0.0.1
        copy_options: {json.dumps(options)}
        veneer_command: {remote_veneer}
""")  # fmt: skip
    run = [tool("ansible-playbook"), "-i", "localhost,", "play.yml"]
    check = proc.run([*run, "--check"], cwd=tmp_path, capture=True, check=False, env=ansible_env(tmp_path))
    assert check.returncode == 0 and "changed=1" in check.stdout, check.stdout + check.stderr
    assert "src1" not in remote.veneer("list").stdout, "check mode copies nothing"
    first = proc.run(run, cwd=tmp_path, capture=True, check=False, env=ansible_env(tmp_path))
    assert first.returncode == 0 and "changed=1" in first.stdout, first.stdout + first.stderr
    assert json.loads(remote.veneer("status", "src1", "--json").stdout)["state"] == "stopped"
    again = proc.run(run, cwd=tmp_path, capture=True, check=False, env=ansible_env(tmp_path))
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout + again.stderr
