"""veneer's rtnetlink requests against a real network namespace of the test's own, checked with `ip`."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from veneer.network.netlink import Netlink
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]

BRIDGE = "vnlbr0"


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"vnl-{os.getpid()}"
    proc.run(["ip", "netns", "add", name])
    try:
        yield name
    finally:
        proc.run(["ip", "netns", "delete", name])


def _ip(netns: str, *args: str) -> Any:
    return json.loads(proc.run(["ip", "-n", netns, "-j", *args], capture=True).stdout or "[]")


def _this_threads_netns() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def test_a_bridge_its_address_and_a_default_route(netns: str) -> None:
    before = _this_threads_netns()
    with Netlink(netns=Path("/run/netns", netns)) as netlink:
        assert _this_threads_netns() == before  # entered for the socket() call only
        assert netlink.add_bridge(BRIDGE, "02:00:00:00:0a:01") is True
        assert netlink.add_bridge(BRIDGE, "02:00:00:00:0a:01") is False
        netlink.replace_addresses(BRIDGE, IPv4Interface("10.251.7.1/24"))
        # A changed address replaces the old one rather than joining it.
        netlink.replace_addresses(BRIDGE, IPv4Interface("10.251.8.1/24"))
        netlink.replace_addresses(BRIDGE, IPv4Interface("10.251.8.1/24"))
        netlink.set_link(BRIDGE, up=True, mac="02:00:00:00:0a:02")
        netlink.replace_default_route(BRIDGE, IPv4Address("10.251.8.9"))
        netlink.replace_default_route(BRIDGE, IPv4Address("10.251.8.10"))
        index = netlink.link_index(BRIDGE)
        addresses = netlink.addresses()
        routes = netlink.routes()
    assert not os.path.lexists(f"/sys/class/net/{BRIDGE}")  # made in the namespace, not here
    (link,) = _ip(netns, "link", "show", "dev", BRIDGE)
    assert link["ifindex"] == index
    assert link["address"] == "02:00:00:00:0a:02" and "UP" in link["flags"]
    (info,) = _ip(netns, "-d", "link", "show", "dev", BRIDGE)
    assert info["linkinfo"]["info_kind"] == "bridge"
    shown = [
        (a["local"], a["prefixlen"]) for a in _ip(netns, "-4", "addr", "show", "dev", BRIDGE)[0]["addr_info"]
    ]
    assert shown == [("10.251.8.1", 24)]
    assert [(a.index, str(a.interface)) for a in addresses] == [(index, "10.251.8.1/24")]
    (default,) = _ip(netns, "-4", "route", "show", "default")
    assert default["gateway"] == "10.251.8.10" and default["dev"] == BRIDGE
    destinations = {(r.destination, r.index) for r in routes}
    assert (IPv4Network("0.0.0.0/0"), index) in destinations
    assert (IPv4Network("10.251.8.0/24"), index) in destinations


def test_deleting_and_missing_links(netns: str) -> None:
    with Netlink(netns=f"/run/netns/{netns}") as netlink:
        assert netlink.link_index(BRIDGE) is None
        assert netlink.delete_link(BRIDGE) is False
        with pytest.raises(OSError) as e:
            netlink.set_link(BRIDGE, up=True)
        assert e.value.errno == errno.ENODEV and BRIDGE in str(e.value)
        netlink.add_bridge(BRIDGE, "02:00:00:00:0a:01")
        assert netlink.delete_link(BRIDGE) is True
        assert netlink.link_index(BRIDGE) is None
    assert _ip(netns, "link", "show", "type", "bridge") == []


def test_a_failed_request_names_what_it_asked(netns: str) -> None:
    with Netlink(netns=f"/run/netns/{netns}") as netlink:
        netlink.add_bridge(BRIDGE, "02:00:00:00:0a:01")
        # A gateway the link has no route to: the kernel refuses (ENETUNREACH), as it does `ip route`.
        with pytest.raises(OSError) as e:
            netlink.replace_default_route(BRIDGE, IPv4Address("10.251.9.1"))
        assert e.value.errno == errno.ENETUNREACH and "10.251.9.1" in str(e.value)
