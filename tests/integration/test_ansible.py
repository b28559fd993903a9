"""The Ansible collection `veneer.machines` from this checkout, driven by the real ansible-playbook and
ansible-inventory against real machines of a private store on this host.

busybox machines have no Python, so they run `raw` and `script` tasks (exec, put_file); a Debian machine
with python3 runs modules (command, copy, fetch, become), when the session's Debian image is built.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]

CHECKOUT = Path(__file__).resolve().parents[2]


def ansible_env(workdir: Path) -> dict[str, str]:
    return {
        "ANSIBLE_COLLECTIONS_PATH": str(CHECKOUT),
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "HOME": str(workdir),
    }


def tool(name: str) -> str:
    """An ansible command installed next to this Python (pip puts them in its bin directory)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def write_wrapper(store: Store, path: Path) -> Path:
    """A `veneer` command for this store, as the plugins run it."""
    exports = " ".join(f"{k}={v}" for k, v in store.env().items())
    path.write_text(f'#!/bin/sh\nexport {exports}\nexec {sys.executable} -m veneer "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def machines(busybox: Store, tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    """Machines 'a1' (running) and 'a2' (stopped) of image 'bb', and an inventory of them."""
    store = busybox
    store.veneer("create", "a1", "--from", "bb", "--network", "none")
    store.veneer("create", "a2", "--from", "bb", "--network", "none")
    store.veneer("start", "a1", "--wait")
    work = tmp_path / "ansible"
    work.mkdir()
    wrapper = write_wrapper(store, work / "veneer")
    (work / "machines.veneer.yml").write_text(
        f"plugin: veneer.machines.veneer\nveneer_command: {wrapper}\n"
        "keyed_groups:\n  - key: veneer_network\n    prefix: net\n"
        "compose:\n  color: \"'blue' if veneer_state == 'running' else 'grey'\"\n"
    )
    yield store, work
    store.veneer("stop", "a1", "--timeout", "5", ok=(0, 1))


def playbook(work: Path, text: str, *, inventory: str = "machines.veneer.yml") -> proc.Completed:
    (work / "play.yml").write_text(text)
    argv = [tool("ansible-playbook"), "-i", inventory, "play.yml"]
    return proc.run(argv, cwd=work, capture=True, check=False, env=ansible_env(work))


def test_inventory_lists_machines_with_groups_and_vars(machines: tuple[Store, Path]) -> None:
    _store, work = machines
    argv = [tool("ansible-inventory"), "-i", "machines.veneer.yml", "--list"]
    listing = json.loads(proc.run(argv, cwd=work, capture=True, env=ansible_env(work)).stdout)
    assert listing["veneer_state_running"]["hosts"] == ["a1"]
    assert listing["veneer_state_stopped"]["hosts"] == ["a2"]
    assert sorted(listing["veneer_image_bb"]["hosts"]) == ["a1", "a2"]
    assert sorted(listing["net_none"]["hosts"]) == ["a1", "a2"], "keyed_groups"
    a1 = listing["_meta"]["hostvars"]["a1"]
    plain = {k: v["__ansible_unsafe"] if isinstance(v, dict) else v for k, v in a1.items()}
    assert (
        plain["veneer_image"] == "bb" and plain["veneer_revision"] == 0 and plain["veneer_host"] == "local"
    )
    assert plain["color"] == "blue", "compose"


def test_playbook_runs_in_the_machine_with_real_exit_codes(machines: tuple[Store, Path]) -> None:
    store, work = machines
    (work / "hello.sh").write_text('echo "from $(hostname): $1" > /root/hello.out\n')
    result = playbook(work, """
- hosts: veneer_state_running
  gather_facts: false
  tasks:
    - ansible.builtin.raw: hostname; id -u
      register: out
    - ansible.builtin.assert:
        that: out.stdout_lines == [inventory_hostname, "0"]
    - ansible.builtin.script: hello.sh arg1
    - ansible.builtin.raw: exit 7
      register: bad
      ignore_errors: true
    - ansible.builtin.assert:
        that: bad is failed and bad.rc == 7
    - ansible.builtin.raw: exit 3
""")  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert '"rc": 3' in result.stdout and "ok=5" in result.stdout and "failed=1" in result.stdout
    assert store.veneer("exec", "a1", "--", "cat", "/root/hello.out").stdout == "from a1: arg1\n"


def test_missing_or_stopped_machine_is_unreachable(machines: tuple[Store, Path]) -> None:
    _store, work = machines
    (work / "static.ini").write_text(f"ghost ansible_connection=veneer.machines.veneer "
                                     f"ansible_veneer_command={work / 'veneer'}\n")  # fmt: skip
    (work / "play.yml").write_text("- hosts: a2:ghost\n  gather_facts: false\n  tasks:\n    - raw: 'true'\n")
    argv = [tool("ansible-playbook"), "-i", "machines.veneer.yml", "-i", "static.ini", "play.yml"]
    result = proc.run(argv, cwd=work, capture=True, check=False, env=ansible_env(work))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "veneer machine 'a2': Machine 'a2' is not running" in result.stdout
    assert "veneer machine 'ghost': No machine named 'ghost'" in result.stdout


def test_modules_are_idempotent_with_check_mode(busybox: Store, tmp_path: Path) -> None:
    store = busybox
    wrapper = write_wrapper(store, tmp_path / "veneer")
    play = f"""
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: {sys.executable}
  module_defaults:
    veneer.machines.veneer_image: {{veneer_command: {wrapper}}}
    veneer.machines.veneer_machine: {{veneer_command: {wrapper}}}
  tasks:
    - veneer.machines.veneer_image: {{name: bb2, source: busybox}}
    - veneer.machines.veneer_machine: {{name: k1, image: bb2, network: none, pids: PIDS, enabled: false}}
    - veneer.machines.veneer_machine: {{name: k2, image: bb2, state: present}}
"""
    try:
        (tmp_path / "play.yml").write_text(play.replace("PIDS", "100"))
        run = [tool("ansible-playbook"), "-i", "localhost,", "play.yml"]
        first = proc.run(run, cwd=tmp_path, capture=True, check=False, env=ansible_env(tmp_path))
        assert first.returncode == 0 and "changed=3" in first.stdout, first.stdout + first.stderr
        again = proc.run(run, cwd=tmp_path, capture=True, check=False, env=ansible_env(tmp_path))
        assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout + again.stderr
        status = json.loads(store.veneer("status", "k1", "--json").stdout)
        assert status["state"] == "running" and status["limits"]["pids"] == 100
        assert json.loads(store.veneer("status", "k2", "--json").stdout)["state"] == "stopped"
        # A changed limit: check mode says what it would do and does nothing; then it is done.
        (tmp_path / "play.yml").write_text(play.replace("PIDS", "120"))
        check = proc.run([*run, "--check", "--diff"], cwd=tmp_path, capture=True, check=False,
                         env=ansible_env(tmp_path))  # fmt: skip
        assert "changed=1" in check.stdout and '"set k1 --pids 120"' in check.stdout, check.stdout
        assert json.loads(store.veneer("status", "k1", "--json").stdout)["limits"]["pids"] == 100
        changed = proc.run(run, cwd=tmp_path, capture=True, check=False, env=ansible_env(tmp_path))
        assert "changed=1" in changed.stdout, changed.stdout + changed.stderr
        status = json.loads(store.veneer("status", "k1", "--json").stdout)
        assert status["state"] == "running" and status["limits"]["pids"] == 120
    finally:
        store.veneer("stop", "k1", "--timeout", "5", ok=(0, 1))


@pytest.mark.network
def test_debian_machine_runs_modules_copies_fetches_and_becomes(store: Store, tmp_path: Path) -> None:
    # python3 for Ansible's modules; debootstrap from the Debian mirror (about 90 seconds).
    created = store.veneer("image", "create", "deb", "--debootstrap", "bookworm", "--variant", "minbase",
                           "--packages", "python3")  # fmt: skip
    # Piped, debootstrap's progress is its phases, once each: no carriage returns, no line per package.
    assert created.stderr.splitlines() == [
        "Bootstrapping Debian bookworm",
        "Retrieving packages",
        "Extracting packages",
        "Unpacking packages",
        "Configuring packages",
    ]
    store.veneer("create", "d1", "--from", "deb", "--network", "none")
    store.veneer("start", "d1", "--wait", "--timeout", "60")
    try:
        work = tmp_path / "ansible"
        work.mkdir()
        wrapper = write_wrapper(store, work / "veneer")
        (work / "machines.veneer.yml").write_text(
            f"plugin: veneer.machines.veneer\nveneer_command: {wrapper}\n"
        )
        (work / "in.txt").write_text("hello in\n")
        result = playbook(work, """
- hosts: veneer_image_deb
  gather_facts: false
  vars:
    ansible_python_interpreter: /usr/bin/python3
  tasks:
    - ansible.builtin.command: cat /etc/debian_version
      register: version
    - ansible.builtin.assert:
        that: version.stdout.startswith("12.")
    - ansible.builtin.copy: {src: in.txt, dest: /root/in.txt, mode: "0640"}
    - ansible.builtin.user: {name: tester, shell: /bin/sh}
    - ansible.builtin.copy: {src: in.txt, dest: /home/tester/t.txt}
      become: true
      become_user: tester
      become_method: su
    - ansible.builtin.command: id -un
      become: true
      become_user: tester
      become_method: su
      register: who
    - ansible.builtin.assert:
        that: who.stdout == "tester"
    - ansible.builtin.fetch: {src: /etc/os-release, dest: fetched/os-release, flat: true}
    - ansible.builtin.command: sh -c 'exit 5'
""")  # fmt: skip
        assert result.returncode == 2 and '"rc": 5' in result.stdout, result.stdout + result.stderr
        assert "ok=8" in result.stdout and "failed=1" in result.stdout, result.stdout
        assert "bookworm" in (work / "fetched/os-release").read_text()
        files = store.veneer("exec", "d1", "--", "stat", "-c", "%U %a", "/root/in.txt", "/home/tester/t.txt")
        assert files.stdout.split("\n")[:2] == ["root 640", "tester 644"]
    finally:
        store.veneer("stop", "d1", "--timeout", "20", ok=(0, 1))
