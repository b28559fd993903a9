"""systemd's own overlay machines on Debian sid (systemd >= 260), in one VM boot for the module: a veneer
machine exported as an `.mstack` is booted by `systemd-nspawn --mstack=` with its files in a private
user namespace (`--private-users=managed`), and the mstack, with what that boot wrote, imports back as a
veneer image; an application image runs as an enabled service machine under systemd 262."""

from __future__ import annotations

import pytest

from tests.integration.vms import GUEST_DEBIAN_TREE, VirtualMachine

pytestmark = [pytest.mark.root]

STACK = "/var/tmp/m.mstack"


def test_exported_mstack_boots_in_nspawn_and_imports_back(sid_vm: VirtualMachine) -> None:
    vm = sid_vm
    version = int(vm.run(["systemd-nspawn", "--version"]).stdout.split()[1])
    assert version >= 260, f"sid has systemd {version}, without .mstack"
    vm.veneer("image", "create", "deb", "--from-dir", GUEST_DEBIAN_TREE)
    try:
        vm.veneer("create", "m", "--from", "deb", "--network", "none")
        vm.veneer("run", "m", "--", "sh", "-c", "echo from-veneer > /etc/marker; rm /etc/issue")
        vm.veneer("export", "m", STACK, "--format", "mstack")
        # Booted by systemd's own nspawn in a user namespace systemd-nsresourced allocates: the stack is in
        # the foreign UID range, which systemd-mountfsd maps into it (nspawn takes no other user namespace
        # for an mstack). debootstrap applies no presets: their sockets are started here.
        vm.run(["systemctl", "start", "systemd-nsresourced.socket", "systemd-mountfsd.socket"])
        vm.run(["systemd-run", "--unit=mstack-boot", "--", "systemd-nspawn", "--quiet", f"--mstack={STACK}",
                "--private-users=managed", "--private-network", "--machine=mst", "--boot"])  # fmt: skip
        try:
            in_machine = ["timeout", "60", "systemd-run", "-M", "mst", "--wait", "--pipe", "--quiet", "--"]
            # Until the machine has registered and its systemd runs commands.
            ready = ("for i in $(seq 200); do out=$(timeout 20 systemd-run -M mst --wait --pipe --quiet -- "
                     "cat /etc/marker 2>&1) && break; sleep 1; done; echo $out")  # fmt: skip
            state = vm.run(["sh", "-c", ready], ok=None, timeout=500).stdout
            journal = vm.run(["journalctl", "-u", "mstack-boot", "--no-pager", "-n", "30"], ok=None).stdout
            assert state.strip() == "from-veneer", f"{state}\n{journal}"
            inside = vm.run([*in_machine, "sh", "-c",
                             "cat /proc/1/comm; test -e /etc/issue || echo no-issue; "
                             "echo from-nspawn > /etc/written; stat -c %u /etc/marker"]).stdout  # fmt: skip
            assert inside.split() == ["systemd", "no-issue", "0"]
        finally:
            vm.run(["machinectl", "poweroff", "mst"], ok=None)
            vm.run(["sh", "-c", "for i in $(seq 300); do systemctl is-active -q mstack-boot || exit 0; "
                    "sleep 0.2; done; systemctl kill -s KILL mstack-boot"], ok=None)  # fmt: skip
            vm.run(["systemctl", "reset-failed", "mstack-boot"], ok=None)
        # What that boot wrote is in rw/data: it comes back as the image's top layer.
        vm.veneer("image", "import", "back", STACK)
        vm.veneer("create", "b", "--from", "back", "--network", "none")
        out = vm.veneer("run", "b", "--", "sh", "-c", "cat /etc/marker /etc/written; "
                        "test -e /etc/issue || echo no-issue").stdout  # fmt: skip
        assert out.split() == ["from-veneer", "from-nspawn", "no-issue"]
    finally:
        vm.veneer("rm", "--force", "m", "b", ok=None)
        vm.veneer("image", "rm", "--force", "back", "deb", ok=None)
        vm.run(["rm", "-rf", STACK], ok=None)


# Run in the VM (this checkout is at /veneer): an application image of the VM's static busybox.
APP_LAYOUT = """
import sys
from pathlib import Path
from tests.integration.layouts import entry, layer_tar, write_layout
script = "echo app-up; trap 'echo app-stopped; exit 0' TERM; while :; do sleep 1 & wait $!; done"
members = [entry("bin/", b"5", mode=0o755), entry("usr/", b"5", mode=0o755),
           entry("bin/busybox", data=Path("/bin/busybox").read_bytes(), mode=0o755)]
members += [entry(f"bin/{a}", b"2", linkname="busybox") for a in ("sh", "sleep")]
write_layout(Path(sys.argv[1]), [layer_tar(members)], run_config={"Entrypoint": ["/bin/sh", "-c", script]})
"""


def test_application_machine_is_a_service_that_starts_at_boot(sid_vm: VirtualMachine) -> None:
    vm = sid_vm
    layout = "/var/tmp/app.oci"
    vm.run(["env", "PYTHONPATH=/veneer", "python3", "-c", APP_LAYOUT, layout])
    try:
        vm.veneer("image", "import", "app", layout)
        vm.veneer("create", "a", "--from", "app", "--network", "none")
        vm.veneer("enable", "a")
        vm.veneer("start", "a")
        logs = vm.run(["sh", "-c", "for i in $(seq 300); do veneer logs a | grep -q app-up && exit 0; "
                       "sleep 0.2; done; exit 1"], ok=None)  # fmt: skip
        assert logs.returncode == 0, vm.veneer("logs", "a").stdout
        assert vm.run(["systemctl", "is-enabled", "veneer-a.service"], ok=None).stdout.strip() == "enabled"
        vm.veneer("stop", "a")
        assert "app-stopped" in vm.veneer("logs", "a").stdout  # SIGTERM reached the application
    finally:
        vm.veneer("disable", "a", ok=None)
        vm.veneer("rm", "--force", "a", ok=None)
        vm.veneer("image", "rm", "--force", "app", ok=None)
        vm.run(["rm", "-rf", layout], ok=None)
