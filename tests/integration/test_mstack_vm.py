"""systemd's own overlay machines on Debian sid (systemd >= 260), in one VM boot for the module: a veneer
machine exported as an `.mstack` is booted by `systemd-nspawn --mstack=` with its files and a private
user range, and the mstack, with what that boot wrote, imports back as a veneer image."""

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
        # Booted by systemd's own nspawn with a private uid range picked by nspawn: the layers hold image
        # ids (0-65535), which nspawn maps with idmapped mounts, as for any directory tree.
        vm.run(["systemd-run", "--unit=mstack-boot", "--", "systemd-nspawn", "--quiet", f"--mstack={STACK}",
                "--private-users=pick", "--private-users-ownership=auto", "--private-network",
                "--machine=mst", "--boot"])  # fmt: skip
        try:
            in_machine = ["systemd-run", "-M", "mst", "--wait", "--pipe", "--quiet", "--"]
            ready = [*in_machine, "systemctl", "is-system-running", "--wait"]
            state = vm.run(ready, ok=None, timeout=300).stdout
            assert state.strip() in ("running", "degraded"), state
            inside = vm.run([*in_machine, "sh", "-c",
                             "cat /etc/marker; test -e /etc/issue || echo no-issue; "
                             "echo from-nspawn > /etc/written; stat -c %u /etc/marker"]).stdout  # fmt: skip
            assert inside.split() == ["from-veneer", "no-issue", "0"]
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
