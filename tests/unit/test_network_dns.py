"""Upstream servers from the host's resolv.conf, and dnsmasq's files."""

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from veneer.network.dns import (
    choose_upstream,
    dnsmasq_config,
    hosts_text,
    parse_nameservers,
    resolv_conf_text,
    upstream_servers,
)
from veneer.network.ipam import Pool

POOL = Pool.from_subnet("10.87.0.0/24")
STUB = """\
# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
nameserver 127.0.0.53
options edns0 trust-ad
search lan
"""
UPLINKS = """\
# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).
nameserver 192.0.2.53
nameserver 2001:db8::53
nameserver fe80::1%eth0
search lan
"""


def test_parse_nameservers() -> None:
    text = "nameserver 192.0.2.1 # primary\n;nameserver 192.0.2.9\nnameserver bogus\n nameserver 192.0.2.1\n"
    assert parse_nameservers(text + "domain x\nnameserver\nnameserver 192.0.2.2\n") == [
        "192.0.2.1",
        "192.0.2.2",
    ]
    assert parse_nameservers(UPLINKS) == ["192.0.2.53", "2001:db8::53", "fe80::1@eth0"]


@pytest.mark.parametrize(
    ("host", "uplinks", "expected"),
    [
        ("nameserver 192.0.2.1\n", None, ["192.0.2.1"]),
        (STUB, UPLINKS, ["192.0.2.53", "2001:db8::53", "fe80::1@eth0"]),
        ("nameserver 127.0.0.1\nnameserver ::1\n", "nameserver 198.51.100.53\n", ["198.51.100.53"]),
        # Real servers next to a stub: the stub goes, the machines cannot reach it anyway.
        ("nameserver 127.0.0.53\nnameserver 192.0.2.1\n", UPLINKS, ["192.0.2.1"]),
        # Only a stub and no uplink list: dnsmasq runs on the host and can ask the stub itself.
        (STUB, None, ["127.0.0.53"]),
        (STUB, "nameserver 127.0.0.53\n", ["127.0.0.53"]),
        ("", None, []),
        ("", UPLINKS, ["192.0.2.53", "2001:db8::53", "fe80::1@eth0"]),
    ],
)
def test_choose_upstream(host: str, uplinks: str | None, expected: list[str]) -> None:
    assert choose_upstream(host, uplinks) == expected


def test_upstream_servers_reads_files(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text(STUB)
    (tmp_path / "uplinks").write_text("nameserver 192.0.2.53\n")
    assert upstream_servers(tmp_path / "resolv.conf", resolved_uplinks=tmp_path / "uplinks") == [
        "192.0.2.53"
    ]
    assert upstream_servers(tmp_path / "missing", resolved_uplinks=tmp_path / "uplinks") == ["192.0.2.53"]
    assert upstream_servers(tmp_path / "resolv.conf", resolved_uplinks=tmp_path / "missing") == [
        "127.0.0.53"
    ]


def test_resolv_conf_points_at_the_gateway() -> None:
    assert resolv_conf_text(POOL).splitlines()[-1] == "nameserver 10.87.0.1"


def test_hosts_text_is_sorted() -> None:
    hosts = {"web": IPv4Address("10.87.0.3"), "db": IPv4Address("10.87.0.2")}
    assert hosts_text(hosts) == "10.87.0.2\tdb\n10.87.0.3\tweb\n"
    assert hosts_text({}) == ""


def test_dnsmasq_config() -> None:
    run = Path("/run/veneer/network")
    lines = dnsmasq_config(
        run, bridge="veneer0", pool=POOL, upstream=["192.0.2.53", "fe80::1@eth0"], user="nobody"
    ).splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == [
        "listen-address=10.87.0.1",
        "bind-interfaces",
        "except-interface=lo",
        "no-dhcp-interface=veneer0",
        "no-resolv",
        "no-hosts",
        "domain-needed",
        "addn-hosts=/run/veneer/network/dnsmasq.hosts",
        "pid-file=/run/veneer/network/dnsmasq.pid",
        "user=nobody",
        "server=192.0.2.53",
        "server=fe80::1@eth0",
    ]
    assert not any(line.startswith("dhcp-range") for line in lines)
