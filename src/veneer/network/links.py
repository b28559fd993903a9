"""Links of the nat network: the bridge on the host (a machine's veth into it is made by systemd-nspawn's
`--network-bridge`).

`setup_bridge` is idempotent and repairs what a crash left half made instead of failing; `remove_bridge`
is idempotent too. Links and addresses are set over rtnetlink (`netlink`); sysctls are written under
/proc/sys directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from veneer.errors import NetworkError
from veneer.network.ipam import Pool
from veneer.util.fs import save_json
from veneer.util.proc import StrPath

logger = logging.getLogger(__name__)

_HINT = "See 'veneer doctor' for what stops networking on this host."
FORWARDING_RECORD = "ip_forward.json"


# A fixed key, so a bridge keeps its MAC across restarts and hosts, and other tools' hashes differ.
_MAC_KEY = b"veneer-mac-v1"


def mac_for(name: str) -> str:
    """A locally administered unicast MAC derived from `name`, the same on every call."""
    import hashlib  # loads OpenSSL: for nat machines, not for every run that passes through here

    octets = bytearray(hashlib.blake2b(name.encode(), key=_MAC_KEY, digest_size=6).digest())
    # Clear the multicast bit, set the locally administered bit (IEEE 802), as nspawn generate_mac().
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def machine_port(machine: str) -> str:
    """The host side of a nat machine's veth, as systemd-nspawn's `--network-bridge` names it."""
    return f"vb-{machine}"


def link_exists(name: str) -> bool:
    """Whether a link of that name exists in the host's network namespace."""
    return os.path.lexists(f"/sys/class/net/{name}")


def link_counters(name: str) -> dict[str, int] | None:
    """The kernel's rx/tx byte and packet counters of a host link (as the host sees them), or None if
    there is no such link."""
    counters = {}
    for key in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
        try:
            counters[key] = int(Path(f"/sys/class/net/{name}/statistics/{key}").read_text())
        except (OSError, ValueError):
            return None
    return counters


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """Turn a failed netlink request or sysctl write into a `NetworkError` saying what was being done."""
    try:
        yield
    except OSError as e:
        raise NetworkError(f"Failed to {what}: {e}", hint=_HINT) from e


def _write_sysctl(path: StrPath, value: str) -> bool:
    """Set a sysctl; whether it had another value."""
    with open(path) as f:
        if f.read().strip() == value:
            return False
    logger.debug("%s = %s", path, value)
    with open(path, "w") as f:
        f.write(value)
    return True


def setup_bridge(name: str, pool: Pool) -> bool:
    """Make the bridge `name` with the pool's gateway address, up, and the sysctls the network needs;
    whether this turned on IPv4 forwarding, host-wide."""
    from veneer.network.netlink import Netlink  # not for `link_exists` and `mac_for`, which every run uses

    with _failing(f"set up the bridge '{name}'"), Netlink() as netlink:
        if link_exists(name) and not os.path.isdir(f"/sys/class/net/{name}/bridge"):
            raise NetworkError(
                f"Interface '{name}' exists and is no bridge",
                hint=f"Remove it ('ip link del {name}') or set another bridge name in network.json.",
            )
        # A fixed MAC: otherwise the bridge takes the lowest MAC of its ports, and every machine that
        # comes or goes could change the gateway's MAC under the others' ARP caches.
        netlink.add_bridge(name, mac_for(name))  # or it is there already
        netlink.replace_addresses(name, pool.gateway_interface)
        # Port forwards from 127.0.0.1 are DNATed to a machine and leave through the bridge with a loopback
        # source (masqueraded only afterwards, in postrouting); the kernel drops such packets as martians
        # unless route_localnet is set on the interface (ip_route_output_key_hash(), ip_route_input_slow()).
        # It would let the machines reach the host's loopback as well: nat.ruleset's input chain drops that.
        _write_sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")
        # Without forwarding the host routes nothing between the bridge and its uplinks. Setting it is
        # host-wide: the host then routes between all its interfaces, as far as its firewall lets it, and
        # stops accepting ICMP redirects (it acts as a router). It is left on at removal, since other tools
        # may rely on it by then; the caller records that veneer turned it on, and `doctor` says so.
        forwarding = _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        netlink.set_link(name, up=True)
    return forwarding


def save_forwarding_record(run_dir: Path) -> None:
    """Note in the network's run dir that veneer turned on IPv4 forwarding (for `doctor`)."""
    save_json(run_dir / FORWARDING_RECORD, {"version": 1, "enabled_at": time.time()})


def load_forwarding_record(run_dir: Path) -> float | None:
    """When veneer turned on IPv4 forwarding for this network, if it did (as seconds since the epoch)."""
    try:
        data = json.loads((run_dir / FORWARDING_RECORD).read_text())
        return float(data["enabled_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_bridge(name: str) -> None:
    """Delete the bridge; nothing happens if it is gone already."""
    if not link_exists(name):
        return
    from veneer.network.netlink import Netlink

    with _failing(f"remove the bridge '{name}'"), Netlink() as netlink:
        netlink.delete_link(name)  # or another command removed it meanwhile
