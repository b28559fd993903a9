"""Names and DNS for the nat network: one dnsmasq per store, answering on the bridge's gateway address
with the machines' names and forwarding everything else to the host's real upstream servers.

dnsmasq's config, hosts file and pid file live in a runtime directory the caller owns. dnsmasq runs as
a daemon of its own (it outlives the veneer command that starts it); it does no DHCP: veneer configures
each machine's address itself. Reading the host's resolvers is a pure parser plus a thin loader.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import stat
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path

from veneer.errors import CommandFailed, NetworkError
from veneer.network.ipam import Pool
from veneer.util.fs import atomic_write
from veneer.util.proc import run
from veneer.util.procfs import process_start_time, wait_for_exit

logger = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
# systemd-resolved's list of its uplinks, for hosts whose /etc/resolv.conf points at its stub.
RESOLVED_UPLINKS = Path("/run/systemd/resolve/resolv.conf")
CONFIG_NAME = "dnsmasq.conf"
HOSTS_NAME = "dnsmasq.hosts"
PID_NAME = "dnsmasq.pid"


def parse_nameservers(text: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, in order, without duplicates or invalid entries."""
    servers: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        address, _, zone = fields[1].partition("%")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        # dnsmasq names a link-local server's interface with '@', resolv.conf with '%'.
        server = f"{ip}@{zone}" if zone else str(ip)
        if server not in servers:
            servers.append(server)
    return servers


def is_local_stub(server: str) -> bool:
    """Whether a resolver listens on the host's loopback (systemd-resolved's 127.0.0.53, a local dnsmasq)."""
    return ipaddress.ip_address(server.partition("@")[0]).is_loopback


def choose_upstream(resolv_conf: str, resolved_uplinks: str | None) -> list[str]:
    """The upstream servers for the machines, from the host's resolv.conf and resolved's uplink list.

    When the host uses only local stubs, resolved's uplinks take their place; without those the stubs stay
    (dnsmasq runs on the host, so it can still reach them, though the machines could not).
    """
    servers = parse_nameservers(resolv_conf)
    if servers and not all(is_local_stub(s) for s in servers):
        return [s for s in servers if not is_local_stub(s)]
    uplinks = [s for s in parse_nameservers(resolved_uplinks or "") if not is_local_stub(s)]
    return uplinks or servers


def upstream_servers(
    resolv_conf: Path = RESOLV_CONF, *, resolved_uplinks: Path = RESOLVED_UPLINKS
) -> list[str]:
    """The host's upstream DNS servers, looking through a local stub to its real servers."""

    def read(path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    return choose_upstream(read(resolv_conf) or "", read(resolved_uplinks))


def resolv_conf_text(pool: Pool) -> str:
    """The machines' /etc/resolv.conf: dnsmasq on the gateway."""
    return f"# Made by veneer: dnsmasq on the nat network's gateway.\nnameserver {pool.gateway}\n"


def hosts_text(hosts: Mapping[str, IPv4Address]) -> str:
    """The hosts file dnsmasq answers machine names from."""
    return "".join(f"{address}\t{name}\n" for name, address in sorted(hosts.items()))


def dnsmasq_config(run_dir: Path, *, bridge: str, pool: Pool, upstream: Sequence[str], user: str) -> str:
    """dnsmasq's config file: DNS on the gateway only, machine names from the hosts file, no DHCP."""
    lines = [
        "# Made by veneer: DNS for the nat network. Rewritten when the network changes.",
        # Bound to the gateway alone, never to 0.0.0.0:53, where the host's own resolver may listen.
        f"listen-address={pool.gateway}",
        "bind-interfaces",
        "except-interface=lo",
        f"no-dhcp-interface={bridge}",
        # Only what veneer says: not /etc/resolv.conf, /etc/hosts or /etc/dnsmasq.d.
        "no-resolv",
        "no-hosts",
        "domain-needed",
        f"addn-hosts={run_dir / HOSTS_NAME}",
        f"pid-file={run_dir / PID_NAME}",
        f"user={user}",
        *(f"server={server}" for server in upstream),
    ]
    return "\n".join(lines) + "\n"


def _readable_by_others(path: Path) -> bool:
    """Whether any user can read `path`: dnsmasq reads its hosts file after dropping to nobody."""
    for directory in path.parents:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def _read_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _is_our_dnsmasq(pid: int, config: Path) -> bool:
    """Whether pid is a dnsmasq started with our config (not a recycled pid, not libvirt's dnsmasq)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == b"dnsmasq" and f"--conf-file={config}".encode() in argv


def running_pid(run_dir: Path) -> int | None:
    """The pid of this run directory's dnsmasq, or None if it does not run."""
    config = run_dir / CONFIG_NAME
    pid = _read_pid(run_dir)
    if pid is not None and _is_our_dnsmasq(pid, config):
        return pid
    # A crash may have lost the pid file while dnsmasq went on holding the gateway's port 53.
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _is_our_dnsmasq(int(entry.name), config):
            return int(entry.name)
    return None


def setup_dns(
    run_dir: Path,
    *,
    bridge: str,
    pool: Pool,
    upstream: Sequence[str],
    hosts: Mapping[str, IPv4Address],
) -> None:
    """Start dnsmasq for the bridge, or have the running one pick up the new hosts (SIGHUP).

    The bridge must be up with the gateway address. A changed config (pool, upstream) restarts dnsmasq.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / CONFIG_NAME
    hosts_path = run_dir / HOSTS_NAME
    atomic_write(hosts_path, hosts_text(hosts), mode=0o644, durable=False)
    user = "nobody" if _readable_by_others(hosts_path) else "root"
    config = dnsmasq_config(run_dir, bridge=bridge, pool=pool, upstream=upstream, user=user)
    pid = running_pid(run_dir)
    if pid is not None:
        try:
            unchanged = config_path.read_text() == config
        except OSError:
            unchanged = False
        if unchanged:
            try:
                # dnsmasq re-reads its addn-hosts files on SIGHUP.
                os.kill(pid, signal.SIGHUP)
                return
            except ProcessLookupError:
                pass
        else:
            _stop(pid, config_path)
    atomic_write(config_path, config, mode=0o644, durable=False)
    with contextlib.suppress(FileNotFoundError):
        (run_dir / PID_NAME).unlink()
    try:
        # dnsmasq forks and detaches; the parent exits only once the child listens, or fails.
        run(["dnsmasq", f"--conf-file={config_path}"], capture=True, die_with_parent=False)
    except CommandFailed as e:
        raise NetworkError(
            f"Failed to start dnsmasq for '{bridge}': {e.message}",
            hint="Install dnsmasq-base, and check that nothing else listens on "
            f"{pool.gateway}:53 ('ss -lunp'); 'veneer doctor' checks the rest.",
        ) from e


def _stop(pid: int, config: Path) -> None:
    logger.debug("Stopping dnsmasq (pid %d)", pid)
    started = process_start_time(pid)
    if started is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        # Woken as it exits (a pidfd), not by looking every few ms: this is on every last nat machine's stop.
        if not wait_for_exit(pid, started, timeout=2.0) and _is_our_dnsmasq(pid, config):
            os.kill(pid, signal.SIGKILL)
            wait_for_exit(pid, started, timeout=2.0)


def remove_dns(run_dir: Path) -> None:
    """Stop this run directory's dnsmasq and remove its files; nothing happens if it does not run."""
    pid = running_pid(run_dir)
    if pid is not None:
        _stop(pid, run_dir / CONFIG_NAME)
    for name in (PID_NAME, HOSTS_NAME, CONFIG_NAME):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
