"""The collection across two hosts: this one, and a "second host" reached over SSH on 127.0.0.1 (an sshd
of the test's own, with keys of its own, stopped afterwards) behind which is a second veneer store.

busybox machines have no Python: tasks are `raw` and `script` (exec, put_file), and a small action
plugin of the test's own calls the connection's fetch_file, which Ansible's `fetch` reaches only
through a Python module.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers import Store, private_store
from tests.integration.test_ansible import ansible_env, tool, write_wrapper
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
"""

FETCH_ACTION = '''\
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    """Only the connection's fetch_file: no module runs in the machine."""

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        self._connection.fetch_file(self._task.args["src"], self._task.args["dest"])
        result["changed"] = True
        return result
'''


@dataclass
class SshHost:
    port: int
    ssh_args: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def ssh_host(tmp_path: Path) -> Iterator[SshHost]:
    """sshd on 127.0.0.1 that lets in root with a key made here, and only that key."""
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / name])
    (keys / "authorized_keys").write_text((keys / "client_key.pub").read_text())
    port = free_port()
    (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {(keys / 'host_key.pub').read_text()}")
    (keys / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=keys))
    privsep = Path("/run/sshd")  # sshd's privilege separation directory, as the package's unit makes it
    made_privsep = not privsep.exists()
    privsep.mkdir(mode=0o755, exist_ok=True)
    with open(keys / "sshd.log", "wb") as log:
        sshd = proc.spawn_piped(["/usr/sbin/sshd", "-D", "-e", "-f", keys / "sshd_config"],
                                stdin=proc.DEVNULL, stdout=log.fileno(), stderr=log.fileno())  # fmt: skip
    try:
        assert proc.wait_until(lambda: accepts(port) or sshd.poll() is not None, timeout=30)
        assert sshd.poll() is None, (keys / "sshd.log").read_text()
        known = keys / "known_hosts"
        ssh_args = (f"-F /dev/null -p {port} -i {keys / 'client_key'} -o IdentitiesOnly=yes "
                    f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes")  # fmt: skip
        yield SshHost(port=port, ssh_args=ssh_args)
    finally:
        sshd.terminate()
        sshd.wait()
        if made_privsep:
            with contextlib.suppress(OSError):
                privsep.rmdir()


@pytest.fixture
def second_store(busybox: Store, tmp_path: Path) -> Iterator[Store]:
    """Another store on this host, sharing its registry of uid ranges as every store of a host does."""
    with private_store(tmp_path / "second") as own:
        yield Store(root=own.root, run=own.run, uids=busybox.uids)


def test_playbook_and_inventory_across_two_hosts(
    busybox: Store, second_store: Store, ssh_host: SshHost, tmp_path: Path
) -> None:
    local, remote = busybox, second_store
    local.veneer("create", "a1", "--from", "bb", "--network", "none")
    remote.veneer("image", "create", "bb", "--busybox")
    remote.veneer("create", "r1", "--from", "bb", "--network", "none")
    remote.veneer("create", "r2", "--from", "bb", "--network", "none")
    try:
        local.veneer("start", "a1", "--wait")
        remote.veneer("start", "r1", "--wait")
        work = tmp_path / "ansible"
        (work / "action_plugins").mkdir(parents=True)
        (work / "action_plugins/fetch_raw.py").write_text(FETCH_ACTION)
        local_wrapper = write_wrapper(local, work / "veneer-local")
        remote_wrapper = write_wrapper(remote, work / "veneer-remote")
        (work / "machines.veneer.yml").write_text(json.dumps({
            "plugin": "veneer.machines.veneer",
            "veneer_command": str(local_wrapper),
            "hosts": ["local", {"host": "root@127.0.0.1", "veneer_command": str(remote_wrapper),
                                "ssh_args": ssh_host.ssh_args}],
        }))  # fmt: skip
        env = {**ansible_env(work), "ANSIBLE_ACTION_PLUGINS": str(work / "action_plugins")}
        listing = json.loads(proc.run([tool("ansible-inventory"), "-i", "machines.veneer.yml", "--list"],
                                      cwd=work, capture=True, env=env).stdout)  # fmt: skip
        assert listing["veneer_host_local"]["hosts"] == ["a1"]
        assert sorted(listing["veneer_host_root_127_0_0_1"]["hosts"]) == [
            "r1@root@127.0.0.1",
            "r2@root@127.0.0.1",
        ]
        assert sorted(listing["veneer_state_running"]["hosts"]) == ["a1", "r1@root@127.0.0.1"]

        (work / "hello.sh").write_text('echo "hello from $(hostname)" > /root/hello\n')
        (work / "play.yml").write_text("""
- hosts: veneer_state_running
  gather_facts: false
  tasks:
    - ansible.builtin.raw: hostname
      register: inside
    - ansible.builtin.assert:
        that: inside.stdout_lines == [veneer_name]
    - ansible.builtin.script: hello.sh
    - fetch_raw: {src: /root/hello, dest: "fetched-{{ veneer_name }}"}
    - ansible.builtin.raw: "exit 3"
      when: veneer_host != "local"
""")  # fmt: skip
        play = proc.run([tool("ansible-playbook"), "-i", "machines.veneer.yml", "play.yml"],
                        cwd=work, capture=True, check=False, env=env)  # fmt: skip
        out = play.stdout + play.stderr
        assert play.returncode == 2, out
        assert '"rc": 3' in play.stdout and "r1@root@127.0.0.1          : ok=4" in play.stdout, out
        assert (work / "fetched-a1").read_text() == "hello from a1\n"
        assert (work / "fetched-r1").read_text() == "hello from r1\n", "fetched over ssh"
        assert remote.veneer("exec", "r1", "--", "cat", "/root/hello").stdout == "hello from r1\n"

        (work / "play.yml").write_text("- hosts: veneer_state_stopped\n  gather_facts: false\n"
                                       "  tasks:\n    - raw: 'true'\n")  # fmt: skip
        stopped = proc.run([tool("ansible-playbook"), "-i", "machines.veneer.yml", "play.yml"],
                           cwd=work, capture=True, check=False, env=env)  # fmt: skip
        assert stopped.returncode == 4, stopped.stdout + stopped.stderr
        assert "veneer machine 'r2' on root@127.0.0.1: Machine 'r2' is not running" in stopped.stdout
    finally:
        local.veneer("stop", "a1", "--timeout", "5", ok=(0, 1))
        remote.veneer("stop", "r1", "--timeout", "5", ok=(0, 1))


APT_PLAY = """
- hosts: local
  gather_facts: false
  module_defaults:
    veneer.machines.veneer_machine: {{veneer_command: {local_veneer}}}
  tasks:
    - veneer.machines.veneer_machine: {{name: d1, image: deb, network: none, state: stopped}}

- hosts: ssh_hosts
  gather_facts: false
  module_defaults:
    veneer.machines.veneer_machine: {{veneer_command: {remote_veneer}}}
  tasks:
    - name: Copied from the first host (the test's sshd again, in front of the first store), started
      veneer.machines.veneer_machine:
        name: d1
        copy_from: root@127.0.0.1
        copy_options: {copy_options}
        state: started

- hosts: remote_machines
  gather_facts: false
  tasks:
    - ansible.builtin.copy: {{src: repo/, dest: /srv/repo/}}
    - ansible.builtin.copy:
        content: "deb [trusted=yes] file:/srv/repo ./\\n"
        dest: /etc/apt/sources.list
    - ansible.builtin.apt: {{name: veneer-hello, update_cache: true}}
    - ansible.builtin.command: veneer-hello
      register: hello
      changed_when: false
    - ansible.builtin.assert:
        that: hello.stdout == "hello from a local repository"
"""


def test_playbook_installs_with_apt_and_copies_a_debian_machine_across_hosts(
    store: Store, debian_tree: Path, ssh_host: SshHost, tmp_path: Path
) -> None:
    from tests.integration.test_rebase_debian import build_deb

    local = store
    with private_store(tmp_path / "second") as own:
        remote = Store(root=own.root, run=own.run, uids=local.uids)
        # Ansible's modules need python3 and python3-apt in the machine: from the Debian mirror, once.
        local.veneer("image", "create", "deb", "--from-dir", str(debian_tree))
        local.veneer("image", "update", "deb", "--", "sh", "-c",
                     "apt-get update -q && apt-get install -y -q --no-install-recommends python3 "
                     "python3-apt && apt-get clean && rm -rf /var/lib/apt/lists/*")  # fmt: skip
        work = tmp_path / "ansible"
        repo = work / "repo"
        repo.mkdir(parents=True)
        build_deb(repo, "veneer-hello", "1.0", 'echo "hello from a local repository"')
        for built in repo.iterdir():
            if built.is_dir():
                proc.run(["rm", "-rf", "--", str(built)])
        packages = proc.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, capture=True).stdout
        (repo / "Packages").write_text(packages)
        local_veneer = write_wrapper(local, work / "veneer-local")
        remote_veneer = write_wrapper(remote, work / "veneer-remote")
        keys = tmp_path / "ssh"
        known = f"UserKnownHostsFile={keys / 'known_hosts'}"
        copy_options = ["-p", str(ssh_host.port), "-i", str(keys / "client_key"), "-o",
                        "IdentitiesOnly=yes", "-o", known, "--remote-veneer", str(local_veneer)]  # fmt: skip
        (work / "hosts.ini").write_text(
            f"[local]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
            f"[ssh_hosts]\nsecond ansible_host=127.0.0.1 ansible_port={ssh_host.port} ansible_user=root "
            f"ansible_ssh_private_key_file={keys / 'client_key'} "
            f"ansible_ssh_common_args='-o IdentitiesOnly=yes -o {known}' "
            f"ansible_python_interpreter={sys.executable}\n"
            f"[remote_machines]\nd1@second ansible_connection=veneer.machines.veneer "
            f"ansible_veneer_machine=d1 ansible_veneer_host=root@127.0.0.1 "
            f"ansible_veneer_command={remote_veneer} ansible_veneer_ssh_args='{ssh_host.ssh_args}' "
            "ansible_python_interpreter=/usr/bin/python3\n"
        )
        play = APT_PLAY.format(local_veneer=local_veneer, remote_veneer=remote_veneer,
                               copy_options=json.dumps(copy_options))  # fmt: skip
        (work / "play.yml").write_text(play)
        # No ssh master left behind to linger after the test (Ansible's default is ControlPersist=60s).
        env = {**ansible_env(work), "ANSIBLE_SSH_ARGS": "-o ControlMaster=no", "ANSIBLE_PIPELINING": "1"}
        run = [tool("ansible-playbook"), "-i", "hosts.ini", "play.yml"]
        try:
            first = proc.run(run, cwd=work, capture=True, check=False, env=env)
            assert first.returncode == 0, first.stdout + first.stderr
            assert "d1@second                  : ok=5    changed=3" in first.stdout, first.stdout
            assert "second                     : ok=1    changed=1" in first.stdout, first.stdout
            assert json.loads(remote.veneer("status", "d1", "--json").stdout)["state"] == "running"
            assert json.loads(local.veneer("status", "d1", "--json").stdout)["state"] == "stopped"
            installed = remote.veneer("exec", "d1", "--", "dpkg-query", "-W", "veneer-hello").stdout
            assert installed.split() == ["veneer-hello", "1.0"]
            again = proc.run(run, cwd=work, capture=True, check=False, env=env)
            assert again.returncode == 0 and again.stdout.count("changed=0") == 3, (
                again.stdout + again.stderr
            )
        finally:
            remote.veneer("stop", "d1", "--timeout", "20", ok=(0, 1))
