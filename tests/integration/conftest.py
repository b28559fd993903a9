"""Integration tests: every test here is marked `integration`; those marked `root` skip unless uid 0;
those that take `systemd_vm` or `sid_vm` are marked `vm`.

`debian_tree` debootstraps Debian bookworm (minbase) once per test run, for every test that needs a
real distribution tree. Tests must not change it: copy it first (`cp -a`).

`systemd_vm` boots a QEMU VM with systemd as PID 1 on cgroup v2 once per suite and test run (`vms.py`);
`busybox_vm` and `debian_vm` are that VM with an image made in it. `sid_vm` is Debian sid, for what only
systemd's newest does (.mstack).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store, private_store
from tests.integration.registries import BuiltImages, build_test_images, remove_podman_storage
from tests.integration.vms import (
    GUEST_DEBIAN_TREE,
    SID,
    SUITES,
    Recipe,
    VirtualMachine,
    booted_vm,
    cached_image,
)
from veneer.config.layout import Layout
from veneer.images.bootstrap import BuildSpec, Provisioning, SourceKind, build_tree
from veneer.util import proc

HERE = Path(__file__).resolve().parent

# The user the shared Debian tree is provisioned with (primary group users, also in group audio).
DEBIAN_USER = "tester"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    not_root = pytest.mark.skip(reason="needs root (uid 0)")
    for item in items:
        if not item.path.resolve().is_relative_to(HERE):
            continue
        item.add_marker(pytest.mark.integration)
        if {"systemd_vm", "sid_vm"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vm)
        if os.geteuid() != 0 and item.get_closest_marker("root") is not None:
            item.add_marker(not_root)


def remove_tree(path: Path) -> None:
    """Remove a test's tree, never crossing into a mount that a failed test may have left."""
    proc.run(["rm", "-rf", "--one-file-system", "--", os.fspath(path)], check=False)


@pytest.fixture(scope="session")
def debian_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Debian bookworm minbase tree made by `build_tree` (about a minute); read-only for tests."""
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root (uid 0)")
    base = tmp_path_factory.mktemp("debian")
    tree = base / "tree"
    tree.mkdir()
    spec = BuildSpec(
        source=SourceKind.DEBOOTSTRAP,
        suite="bookworm",
        provisioning=Provisioning(users=(f"{DEBIAN_USER}:users,audio",)),
    )
    try:
        build_tree(spec, tree, layout=Layout(root=base / "state", run=base / "run", uids=base / "uids"))
        yield tree
    finally:
        remove_tree(base)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A veneer store of the test's own, driven through the CLI; its mounts and files go afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root (uid 0)")
    with private_store(tmp_path) as s:
        yield s


@pytest.fixture
def busybox(store: Store) -> Store:
    """A store holding the image 'bb' made with --busybox."""
    store.veneer("image", "create", "bb", "--busybox")
    return store


@pytest.fixture(scope="session")
def built_images(tmp_path_factory: pytest.TempPathFactory) -> BuiltImages:
    """Test images built by buildah into one OCI layout (see `registries.build_test_images`)."""
    if os.geteuid() != 0:
        pytest.skip("buildah needs root (uid 0)")
    return build_test_images(tmp_path_factory.mktemp("oci-images"))


@pytest.fixture(scope="session", params=SUITES)
def systemd_vm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VirtualMachine]:
    """A Debian VM of each suite in turn, systemd as PID 1 on cgroup v2, this checkout's veneer in it;
    shared by the session's VM tests, so each removes what it made."""
    if os.geteuid() != 0:
        pytest.skip("building the VM image needs root (uid 0)")
    suite: str = request.param
    image = cached_image(Recipe(suite=suite))
    with booted_vm(image, tmp_path_factory.mktemp(f"vm-{suite}")) as vm:
        yield vm


@pytest.fixture(scope="session")
def sid_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualMachine]:
    """A Debian sid VM (systemd >= 260), booted once for the few tests that need systemd's newest."""
    if os.geteuid() != 0:
        pytest.skip("building the VM image needs root (uid 0)")
    with booted_vm(cached_image(Recipe(suite=SID)), tmp_path_factory.mktemp("vm-sid")) as vm:
        yield vm


@pytest.fixture(scope="session")
def busybox_vm(systemd_vm: VirtualMachine) -> VirtualMachine:
    """`systemd_vm` with the image 'bb' (--busybox), made once per VM: tests must not change it."""
    systemd_vm.veneer("image", "create", "bb", "--busybox")
    return systemd_vm


@pytest.fixture(scope="session")
def debian_vm(systemd_vm: VirtualMachine) -> VirtualMachine:
    """`systemd_vm` with the image 'deb' (Debian with systemd, from the VM's tree), made once per VM:
    tests must not change it."""
    systemd_vm.veneer("image", "create", "deb", "--from-dir", GUEST_DEBIAN_TREE)
    return systemd_vm


@pytest.fixture
def podman_storage() -> Iterator[Path]:
    """A podman store of the test's own; in /tmp since podman refuses a run root over 50 characters."""
    storage = Path(tempfile.mkdtemp(prefix="veneer-podman-"))
    try:
        yield storage
    finally:
        remove_podman_storage(storage)
