"""Application images: a buildah-made image with every run-config field set, pushed to a local registry,
pulled, shown, run (`veneer run`, overrides), started as a service machine (nspawn's PID 2, its stop signal)
and exported, then run by podman, which must behave as it does with the original image."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Store
from tests.integration.registries import (
    BUSYBOX_APPLETS,
    Registry,
    podman,
    run_registry,
)
from veneer.util import proc
from veneer.util.proc import wait_until

pytestmark = [pytest.mark.root]

ENTRY = """#!/bin/sh
echo "uid=$(id -u) gid=$(id -g) pwd=$(pwd) greeting=$GREETING home=$HOME args=$*"
if [ "$1" = serve ]; then
    trap 'echo stopped-by-usr1; exit 0' USR1
    echo serving
    while :; do sleep 1 & wait $!; done
fi
"""
ONCE = "uid=1000 gid=1001 pwd=/srv greeting=hello home=/home/app args=once"


@pytest.fixture(scope="module")
def app_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An OCI layout with `once` (Cmd once) and `serve` (Cmd serve), built by buildah from a busybox-static
    root filesystem: Entrypoint, Env, User, WorkingDir, ExposedPorts, Labels and StopSignal all set."""
    directory = tmp_path_factory.mktemp("app-image")
    rootfs = directory / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "usr/bin").mkdir(parents=True)  # nspawn wants a /usr
    (rootfs / "etc").mkdir()
    (rootfs / "srv").mkdir()
    (rootfs / "home/app").mkdir(parents=True)
    proc.run(["cp", "/bin/busybox", rootfs / "bin/busybox"])
    for applet in (*BUSYBOX_APPLETS, "sleep", "pwd"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "bin/app-entry").write_text(ENTRY)
    (rootfs / "bin/app-entry").chmod(0o755)
    (rootfs / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\napp:x:1001:\n")
    storage = directory / "storage"
    base: list[str | Path] = [
        "buildah",
        "--root",
        storage / "root",
        "--runroot",
        storage / "run",
        "--storage-driver",
        "vfs",
    ]
    layout = directory / "layout"
    try:
        container = proc.run([*base, "from", "scratch"], capture=True).stdout.strip()
        proc.run([*base, "copy", container, f"{rootfs}/", "/"], capture=True)
        proc.run([*base, "config", "--entrypoint", '["/bin/app-entry"]', "--cmd", "once",
                  "--env", "GREETING=hello", "--env", "PATH=/bin", "--user", "app", "--workingdir", "/srv",
                  "--port", "8080/tcp", "--label", "org.example.app=demo", "--stop-signal", "SIGUSR1",
                  container], capture=True)  # fmt: skip
        proc.run([*base, "commit", "--quiet", container, f"oci:{layout}:once"], capture=True)
        proc.run([*base, "config", "--cmd", "serve", container], capture=True)
        proc.run([*base, "commit", "--quiet", container, f"oci:{layout}:serve"], capture=True)
        yield layout
    finally:
        proc.run([*base, "rm", "--all"], check=False, capture=True)
        proc.run([*base, "rmi", "--all", "--force"], check=False, capture=True)
        proc.run(["rm", "-rf", "--one-file-system", storage], check=False)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, app_layout: Path) -> Iterator[Registry]:
    with run_registry(tmp_path_factory.mktemp("app-registry") / "r", auth="none") as running:
        running.push(f"oci:{app_layout}:once", "app/demo:once")
        running.push(f"oci:{app_layout}:serve", "app/demo:serve")
        yield running


def pull(store: Store, registry: Registry, tag: str) -> None:
    env = {"DOCKER_CONFIG": str(store.root.parent / "docker")}
    store.veneer("image", "pull", "app", f"{registry.host}/app/demo:{tag}", env=env)


def test_pulled_config_is_shown_run_and_overridden(store: Store, registry: Registry) -> None:
    pull(store, registry, "once")
    shown = store.veneer("image", "show", "app").stdout
    for line in ("Entrypoint:   /bin/app-entry", "Cmd:          once", "User:         app",
                 "WorkingDir:   /srv", "ExposedPorts: 8080/tcp", "StopSignal:   SIGUSR1",
                 "Env:          GREETING=hello", "Label:        org.example.app=demo"):  # fmt: skip
        assert line in shown
    config = json.loads(store.veneer("image", "show", "app", "--json").stdout)["revisions"][0]["config"]
    assert config["User"] == "app" and config["ExposedPorts"] == {"8080/tcp": {}}
    store.veneer("create", "m", "--from", "app", "--network", "none")
    assert store.veneer("run", "m").stdout == ONCE + "\n"
    # An explicit command replaces Cmd, not the entrypoint; the caller's settings win over the image's.
    out = store.veneer("run", "--user", "root", "-w", "/", "-e", "GREETING=hi", "m", "--", "x", "y").stdout
    assert out == "uid=0 gid=0 pwd=/ greeting=hi home=/root args=x y\n"
    assert store.veneer("run", "--entrypoint", "id", "m").stdout == "uid=1000(app) gid=1001(app)\n"
    numeric = store.veneer("run", "--user", "4242:7", "--entrypoint", '["id", "-u"]', "m").stdout
    assert numeric == "4242\n"
    # An image update runs its command as the caller says, and the revision keeps the image's config.
    store.veneer("image", "update", "app", "--network", "none", "--", "mkdir", "/updated")
    config = json.loads(store.veneer("image", "show", "app", "--json").stdout)["revisions"][1]["config"]
    assert config["Entrypoint"] == ["/bin/app-entry"]


def test_application_machine_runs_as_a_service(store: Store, registry: Registry) -> None:
    pull(store, registry, "serve")
    store.veneer("create", "svc", "--from", "app", "--network", "none")
    store.veneer("start", "svc")
    try:
        assert wait_until(lambda: "serving" in store.veneer("logs", "svc").stdout, timeout=30, interval=0.1)
        assert "args=serve" in store.veneer("logs", "svc").stdout
        listed = json.loads(store.veneer("list", "--json").stdout)
        assert [m["state"] for m in listed if m["name"] == "svc"] == ["running"]
    finally:
        store.veneer("stop", "svc")
    assert "stopped-by-usr1" in store.veneer("logs", "svc").stdout  # its StopSignal, not a kill
    listed = json.loads(store.veneer("list", "--json").stdout)
    assert [m["state"] for m in listed if m["name"] == "svc"] == ["stopped"]


def test_export_runs_in_podman_as_the_original(
    store: Store, registry: Registry, app_layout: Path, tmp_path: Path, podman_storage: Path
) -> None:
    pull(store, registry, "once")
    dest = tmp_path / "app.tar"
    store.veneer("image", "export", "app", str(dest), "--format", "oci-archive", "--tag", "localhost/exp:1")
    podman(podman_storage, "load", "--input", dest)
    podman(podman_storage, "pull", "--quiet", f"oci:{app_layout}:once")
    exported = podman(podman_storage, "run", "--rm", "localhost/exp:1", run_flags=True).stdout
    original = podman(podman_storage, "run", "--rm", f"oci:{app_layout}:once", run_flags=True).stdout
    assert exported == original == ONCE + "\n"
    inspected = json.loads(podman(podman_storage, "image", "inspect", "localhost/exp:1").stdout)[0]["Config"]
    assert inspected["StopSignal"] == "SIGUSR1" and inspected["Labels"]["org.example.app"] == "demo"
