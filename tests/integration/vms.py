"""Real systemd hosts for the tests: QEMU virtual machines booted from cached debootstrap roots.

This host has no systemd as PID 1, so what veneer does on the hosts most users run (machined, units,
cgroup v2 owned by systemd) is tested in VMs, a harness like the local registry of the pull tests:

- **Image.** A Debian root (one per suite) with systemd as init, veneer's runtime tools, Debian's kernel
  and qemu-guest-agent, made by debootstrap on the host (installing under emulation takes many times
  as long) and written into an ext4 disk image by `mkfs.ext4 -d`. Kernel and initrd are copied out
  beside it: this host's own kernel is not in /boot. The three files are cached in
  `CACHE/SUITE-KEY/`, KEY a hash of the recipe (packages, files, the build steps' source), so only a
  changed recipe builds anew; older builds of the suite are removed then.
- **Boot.** `qemu-system-x86_64 -accel tcg` (nested KVM hangs on these hosts) with `-kernel`,
  `-initrd` and `-append` (cgroup v2, console on the serial port, kept in `console.log`); the disk
  with `snapshot=on`, so the cache is never written, every VM starts from the same state and a guest
  reboot keeps its writes (they live as long as the qemu process); this checkout read-only at
  /veneer through 9p (`veneer` in the guest runs it); no network device.
- **Commands.** qemu-guest-agent listens on a virtio-serial port that qemu connects to a unix socket:
  `guest-exec` runs an argv and hands back its exit status, stdout and stderr (once both pipes close: a
  daemon a command leaves holding them makes the command time out). A VM is ready once the agent
  answers and `systemctl is-system-running --wait` has returned.
- **Cleanup.** qemu is the test's child, started through `setpriv --pdeathsig KILL` so it dies with
  pytest, and killed by its pid when the fixture ends: nothing is left running.

Adding a scenario: take the `systemd_vm` fixture (conftest.py), call `vm.veneer(...)` and
`vm.run([...])`, and remove what the test made (machines, images) before it ends: the VM is shared by
every test of the session.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import inspect
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from veneer.util import proc

logger = logging.getLogger(__name__)

CACHE = Path("/var/cache/veneer-tests/vm")
CHECKOUT = Path(__file__).resolve().parents[2]
MIRROR = "http://deb.debian.org/debian"
GUEST_CHECKOUT = "/veneer"
# Debian's stable and testing: systemd 252 and 257, Linux 6.1 and 6.12.
SUITES = ("bookworm", "trixie")
# Debian unstable (systemd >= 260: .mstack machines), booted only by the tests that need it (`sid_vm`).
SID = "sid"
BOOT_TIMEOUT = 600.0  # seconds: a VM is ready in 25-45 s here, a busy CI host may take many times that

PACKAGES = (
    "systemd", "systemd-sysv", "systemd-container", "udev", "dbus", "linux-image-amd64",
    "qemu-guest-agent", "util-linux", "procps", "iproute2", "nftables", "dnsmasq-base", "tmux",
    "busybox-static", "python3", "python3-zstandard",
    # debootstrap's resolver installs no virtual packages: python3-zstandard's cffi API, by name.
    "python3-cffi-backend",
)  # fmt: skip

# The tree at GUEST_DEBIAN_TREE that Debian machines in the VM are made from (`image create --from-dir`).
MACHINE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
GUEST_DEBIAN_TREE = "/srv/debian"

GUEST_FILES = (
    ("etc/hostname", "vm\n"),
    ("etc/hosts", "127.0.0.1 localhost vm\n"),
    (
        "etc/fstab",
        "/dev/vda / ext4 rw,errors=remount-ro 0 1\n"
        f"veneer {GUEST_CHECKOUT} 9p trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose 0 0\n",
    ),
    # The 9p transport is a module: loaded before local-fs.target mounts the checkout.
    ("etc/modules-load.d/veneer-vm.conf", "9p\n9pnet_virtio\n"),
    # An initrd with only what mounts the root: Debian's default (most modules) boots seconds slower.
    ("etc/initramfs-tools/conf.d/veneer-vm.conf", "MODULES=list\n"),
    ("etc/initramfs-tools/modules", "virtio_pci\nvirtio_blk\next4\n"),
    (
        "usr/local/bin/veneer",
        "#!/bin/sh\n"
        "# veneer from the host's checkout (read-only): its bytecode is cached on the VM's disk.\n"
        f"export PYTHONPATH={GUEST_CHECKOUT}/src PYTHONPYCACHEPREFIX=/var/cache/veneer-pycache\n"
        'exec python3 -m veneer "$@"\n',
    ),
)
EXECUTABLES = ("usr/local/bin/veneer",)
# Timers that would start work (downloads, scrubs) in the middle of a test.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer")
KERNEL_ARGS = (
    "root=/dev/vda", "rw", "console=ttyS0", "systemd.unified_cgroup_hierarchy=1", "panic=-1",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    """What goes into a VM image; its key names the cache entry."""

    suite: str
    packages: tuple[str, ...] = PACKAGES
    machine_packages: tuple[str, ...] = MACHINE_PACKAGES
    files: tuple[tuple[str, str], ...] = GUEST_FILES
    executables: tuple[str, ...] = EXECUTABLES
    masked: tuple[str, ...] = MASKED_UNITS
    disk_size: str = "8G"


@dataclass(frozen=True, slots=True)
class GuestImage:
    """A built VM image: `disk.img`, `vmlinuz` and `initrd.img` in one cache directory."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "disk.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"


def debootstrap(suite: str, packages: Sequence[str], target: Path, *, debs: Path) -> None:
    """A Debian minbase root with `packages`, downloads kept in `debs` for the next call; in a mount
    namespace of its own, so the /proc and /sys debootstrap mounts in the root go with it."""
    proc.run(
        ["unshare", "--mount", "--propagation", "private", "--",
         "debootstrap", "--variant=minbase", f"--cache-dir={debs}", f"--include={','.join(packages)}",
         suite, target, MIRROR],
        capture=True,
    )  # fmt: skip


def configure_root(recipe: Recipe, root: Path) -> None:
    """Write the recipe's files, mask its units and drop the downloaded packages."""
    for relative, text in recipe.files:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for relative in recipe.executables:
        (root / relative).chmod(0o755)
    (root / GUEST_CHECKOUT.lstrip("/")).mkdir(exist_ok=True)
    for unit in recipe.masked:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    for tree in (root, root / GUEST_DEBIAN_TREE.lstrip("/")):
        for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()


def make_initrd(root: Path) -> None:
    """Remake the root's initrd after `configure_root` changed what goes into it."""
    proc.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'mount -t proc proc "$0/proc" && exec chroot "$0" update-initramfs -u -k all', root],
        capture=True,
    )  # fmt: skip


def copy_boot_files(root: Path, image: GuestImage) -> None:
    """Copy the root's kernel and initrd out, for qemu's -kernel and -initrd."""
    for pattern, target in (("vmlinuz-*", image.kernel), ("initrd.img-*", image.initrd)):
        (found,) = (root / "boot").glob(pattern)
        target.write_bytes(found.read_bytes())


def make_disk(recipe: Recipe, root: Path, disk: Path) -> None:
    """An ext4 image holding `root` (a sparse file: only what is written takes room)."""
    proc.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, disk, recipe.disk_size], capture=True)


BUILD_STEPS = (debootstrap, configure_root, make_initrd, copy_boot_files, make_disk)


def recipe_key(recipe: Recipe) -> str:
    """A hash of the recipe and of the build steps' source: any change to either builds anew."""
    digest = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    for step in BUILD_STEPS:
        digest.update(inspect.getsource(step).encode())
    return digest.hexdigest()[:16]


def remove_tree(path: Path) -> None:
    proc.run(["rm", "-rf", "--one-file-system", "--", path])


def build_image(recipe: Recipe, staging: Path) -> GuestImage:
    """Build the image in `staging` (root tree and downloads removed at the end) and return it."""
    root = staging / "root"
    root.mkdir()
    image = GuestImage(staging / "image")
    image.directory.mkdir()
    started = time.monotonic()
    debs = staging / "debs"
    debs.mkdir()
    debootstrap(recipe.suite, recipe.packages, root, debs=debs)
    debootstrap(recipe.suite, recipe.machine_packages, root / GUEST_DEBIAN_TREE.lstrip("/"), debs=debs)
    configure_root(recipe, root)
    make_initrd(root)
    copy_boot_files(root, image)
    make_disk(recipe, root, image.disk)
    remove_tree(root)
    remove_tree(debs)
    logger.info("Built the %s VM image in %.0f s", recipe.suite, time.monotonic() - started)
    return image


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting for it: parallel test runs share the cache."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def cached_image(recipe: Recipe, *, cache: Path = CACHE) -> GuestImage:
    """The recipe's image from the cache, built first if missing (older builds of its suite go)."""
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{recipe.suite}-{recipe_key(recipe)}"
    with locked(cache / ".lock"):
        if final.is_dir():
            return GuestImage(final)
        # Under the lock, a staging dir is what an interrupted build left.
        for entry in cache.glob(".build-*"):
            remove_tree(entry)
        staging = cache / f".build-{final.name}"
        staging.mkdir()
        built = build_image(recipe, staging)
        built.directory.rename(final)
        remove_tree(staging)
        for old in cache.glob(f"{recipe.suite}-*"):
            if old != final:
                remove_tree(old)
    return GuestImage(final)


def qemu_argv(image: GuestImage, *, agent: Path, console: Path, cpus: int, memory: str) -> list[str]:
    """The qemu command line that boots `image` with this checkout shared and the agent's port."""
    # qemu64 without SVM: no kvm or CPU-specific crypto modules to load, and every emulated instruction
    # is one TCG translates fast (with "max" the same boot takes seconds longer).
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,-svm", "-smp", str(cpus), "-m", memory,
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", os.fspath(image.kernel), "-initrd", os.fspath(image.initrd),
        "-append", " ".join(KERNEL_ARGS),
        "-drive", f"if=virtio,format=raw,snapshot=on,file={image.disk}",
        "-virtfs", f"local,path={CHECKOUT},mount_tag=veneer,security_model=none,readonly=on",
        "-device", "virtio-rng-pci",
        "-chardev", f"socket,id=agent,path={agent},server=on,wait=off",
        "-device", "virtio-serial",
        "-device", "virtserialport,chardev=agent,name=org.qemu.guest_agent.0",
        "-serial", f"file:{console}",
    ]  # fmt: skip


class AgentError(Exception):
    """The guest agent refused a request, or did not answer in time."""


class AgentFailed(Exception):
    """A request the agent runs without answering (guest-shutdown) failed."""


class AgentRestarted(AgentError):
    """The agent that ran a command is gone: the guest rebooted, or its agent was restarted."""


class Agent:
    """A client of qemu-guest-agent's JSON protocol on the unix socket qemu connects to its port.

    Every request carries an id that the agent copies into its answer, and only the answer with the
    request's id is taken: a reboot leaves answers behind that belong to no request still waiting. qemu
    holds what is written to the socket while no agent has the port open, so the agent of the next boot
    reads requests sent to the last one (a `guest-exec-status` of a pid it never started) and answers
    them; an agent killed by the shutdown answers none of those it had read.
    """

    def __init__(self, path: Path) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.connect(os.fspath(path))
        self.buffer = b""
        self.next_id = int(time.time() * 1000)

    def close(self) -> None:
        self.socket.close()

    def send(self, command: str, arguments: dict[str, object] | None = None, *, reset: bool = False) -> int:
        """Send a request; return its id."""
        self.next_id += 1
        request: dict[str, object] = {"execute": command, "id": self.next_id}
        if arguments is not None:
            request["arguments"] = arguments
        # 0xFF is never valid JSON: the agent drops what it had read so far (a request cut by a reboot).
        self.socket.sendall((b"\xff" if reset else b"") + json.dumps(request).encode() + b"\n")
        logger.debug("agent <- %s #%d", command, self.next_id)
        return self.next_id

    def receive(self, timeout: float) -> dict[str, object]:
        """The next JSON message, without the 0xFF that precedes a delimited sync's answer."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentError("the guest agent did not answer in time")
            self.socket.settimeout(remaining)
            try:
                chunk = self.socket.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise AgentError("qemu closed the guest agent's socket")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        # The 0xFF before a sync's answer starts a new message (an agent killed mid-write left half of one).
        line = line[line.rfind(b"\xff") + 1 :].strip()
        if not line:
            return self.receive(max(deadline - time.monotonic(), 0.01))
        try:
            message: dict[str, object] = json.loads(line)
        except ValueError:
            logger.debug("agent -> unreadable %r, dropped", line)
            return self.receive(max(deadline - time.monotonic(), 0.01))
        return message

    def answer(self, request: int, command: str, timeout: float) -> object:
        """The "return" value of the answer to `request`; answers to other requests are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(deadline - time.monotonic(), 0.0))
            if message.get("id") != request:
                logger.debug("agent -> %s, not #%d: dropped", message, request)
                continue
            if "error" in message:
                error = message["error"]
                desc = str(error.get("desc", "")) if isinstance(error, dict) else ""
                if command == "guest-exec-status" and desc.endswith("does not exist"):
                    raise AgentRestarted(f"{command}: {error}")
                raise AgentError(f"{command}: {error}")
            return message["return"]

    def sync(self, timeout: float) -> bool:
        """Whether the agent answered a fresh sync in time."""
        request = self.send("guest-sync-delimited", {"id": self.next_id + 1}, reset=True)
        try:
            return self.answer(request, "guest-sync-delimited", timeout) == request
        except AgentError:
            return False

    def execute(self, command: str, arguments: dict[str, object], *, timeout: float = 30.0) -> object:
        """Send one request and return its answer's "return" value."""
        return self.answer(self.send(command, arguments), command, timeout)

    def execute_unanswered(
        self, command: str, arguments: dict[str, object], *, timeout: float = 30.0
    ) -> None:
        """Send a request that is answered only when it fails (guest-shutdown), and raise if it did.

        The agent runs one request at a time, so a sync sent after it is answered once it has run; an
        agent that does not answer the sync was stopped by what the request started.
        """
        request = self.send(command, arguments)
        sync = self.send("guest-sync-delimited", {"id": self.next_id + 1})
        deadline = time.monotonic() + timeout
        with contextlib.suppress(AgentError):
            while (message := self.receive(max(deadline - time.monotonic(), 0.0))).get("id") != sync:
                if message.get("id") == request:
                    raise AgentFailed(f"{command}: {message.get('error')}")


GUEST_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "HOME=/root",
)


class VirtualMachine:
    """A booted VM: run commands in it, reboot it. Made by `booted_vm`."""

    def __init__(self, process: proc.Process, agent: Agent, console: Path) -> None:
        self.process = process
        self.agent = agent
        self.console = console

    def console_tail(self, lines: int = 40) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, *, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until the agent answers and systemd has finished booting."""
        deadline = time.monotonic() + timeout
        while not self.agent.sync(5.0):
            if self.process.poll() is not None:
                raise AgentError(f"qemu exited with {self.process.returncode}:\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise AgentError(f"the VM did not boot in {timeout:.0f} s:\n{self.console_tail()}")
        state = self.run(["systemctl", "is-system-running", "--wait"], ok=None, timeout=timeout).stdout
        assert state.strip() in ("running", "degraded"), f"systemd is {state.strip()!r} after boot"

    def run(
        self,
        argv: Sequence[str],
        *,
        ok: Sequence[int] | None = (0,),
        input: str | None = None,
        timeout: float = 600.0,
    ) -> proc.Completed:
        """Run argv in the guest as root; fail the test unless its exit status is in `ok` (None: any)."""
        arguments: dict[str, object] = {
            "path": argv[0], "arg": list(argv[1:]), "env": list(GUEST_ENV), "capture-output": True,
        }  # fmt: skip
        if input is not None:
            arguments["input-data"] = base64.b64encode(input.encode()).decode()
        started = self.agent.execute("guest-exec", arguments)
        assert isinstance(started, dict)
        deadline = time.monotonic() + timeout
        while True:
            status = self.agent.execute("guest-exec-status", {"pid": started["pid"]})
            assert isinstance(status, dict)
            if status["exited"]:
                break
            if time.monotonic() > deadline:
                raise AgentError(f"{' '.join(argv)} did not end in {timeout:.0f} s")
            time.sleep(0.1)
        # A command killed by a signal has no exit code: report it as a shell would.
        returncode = int(status.get("exitcode", 128 + int(status.get("signal", 0))))
        result = proc.Completed(
            list(argv), returncode, _decode(status.get("out-data")), _decode(status.get("err-data"))
        )
        assert ok is None or returncode in ok, (
            f"{' '.join(argv)} exited {returncode} in the VM\n{result.stdout}\n{result.stderr}"
        )
        return result

    def veneer(self, *args: str, ok: Sequence[int] | None = (0,), timeout: float = 600.0) -> proc.Completed:
        """Run the checkout's veneer in the guest (state in its /var/lib/veneer and /run/veneer)."""
        return self.run(["veneer", *args], ok=ok, timeout=timeout)

    def boot_id(self) -> str:
        return self.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()

    def reboot(self, *, timeout: float = BOOT_TIMEOUT) -> None:
        """Reboot the guest (its disk's writes stay) and wait until the new boot is ready."""
        before = self.boot_id()
        self.agent.execute_unanswered("guest-shutdown", {"mode": "reboot"})
        deadline = time.monotonic() + timeout
        # The old agent answers until the shutdown stops it, the new one once the guest is up again: only
        # a boot id other than the old one says the reboot happened.
        while not self._booted_since(before):
            assert time.monotonic() < deadline, f"the VM did not reboot:\n{self.console_tail()}"
        self.wait_ready(timeout=max(deadline - time.monotonic(), 1.0))

    def _booted_since(self, boot_id: str) -> bool:
        """Whether the agent answers, from a boot other than `boot_id`."""
        try:
            return self.agent.sync(5.0) and self.boot_id() != boot_id
        except AgentError as e:
            # An agent stopped by the shutdown between a guest-exec and its status, or slow to start.
            logger.debug("Not booted yet: %s", e)
            return False


def _decode(data: object) -> str:
    return base64.b64decode(data).decode(errors="replace") if isinstance(data, str) else ""


def _connect(path: Path, process: proc.Process, timeout: float = 30.0) -> Agent:
    """Connect to the agent's socket once qemu has made it."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
            return Agent(path)
        assert process.poll() is None, f"qemu exited with {process.returncode}"
        assert time.monotonic() < deadline, f"qemu made no socket {path}"
        time.sleep(0.1)


@contextlib.contextmanager
def booted_vm(
    image: GuestImage, directory: Path, *, cpus: int = 2, memory: str = "2G"
) -> Iterator[VirtualMachine]:
    """Boot `image` (files of this VM in `directory`), yield it once ready, kill qemu on the way out."""
    agent_socket, console, log = directory / "agent.sock", directory / "console.log", directory / "qemu.log"
    argv = qemu_argv(image, agent=agent_socket, console=console, cpus=cpus, memory=memory)
    process = proc.spawn(
        ["setpriv", "--pdeathsig", "KILL", "--", "sh", "-c", 'exec "$@" >"$0" 2>&1', log, *argv]
    )
    try:
        started = time.monotonic()
        vm = VirtualMachine(process, _connect(agent_socket, process), console)
        try:
            vm.wait_ready()
            logger.info("The VM booted in %.0f s", time.monotonic() - started)
            yield vm
        finally:
            vm.agent.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
