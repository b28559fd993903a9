"""Pool choice, address allocation, host route parsing and the network config's JSON round trip."""

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from veneer.errors import NetworkError, StateCorrupt
from veneer.network.ipam import (
    CANDIDATE_POOLS,
    NetworkConfig,
    Pool,
    allocate_address,
    choose_pool,
    load_network_config,
    parse_addr_addresses,
    parse_addr_networks,
    parse_route_networks,
    save_network_config,
)

N = IPv4Network
A = IPv4Address


def test_pool_from_subnet() -> None:
    pool = Pool.from_subnet("10.87.0.0/24")
    assert pool.gateway == A("10.87.0.1")
    assert pool.prefixlen == 24
    assert str(pool.gateway_interface) == "10.87.0.1/24"
    assert str(pool.interface(A("10.87.0.9"))) == "10.87.0.9/24"


def test_addr_addresses_are_every_address() -> None:
    assert parse_addr_addresses(ADDRS) == [A("127.0.0.1"), A("192.0.2.2"), A("10.87.0.1"), A("10.99.1.7")]
    assert parse_addr_addresses("") == []


@pytest.mark.parametrize("gateway", ["10.87.0.0", "10.87.0.255", "10.88.0.1"])
def test_pool_rejects_a_gateway_outside_its_hosts(gateway: str) -> None:
    with pytest.raises(ValueError):
        Pool(subnet=N("10.87.0.0/24"), gateway=A(gateway))


def test_candidates_are_private_slash_24s_without_overlaps() -> None:
    assert len(set(CANDIDATE_POOLS)) == len(CANDIDATE_POOLS) >= 8
    for candidate in CANDIDATE_POOLS:
        assert candidate.prefixlen == 24 and candidate.is_private
        # Fixed defaults of podman, libvirt and docker's first bridge.
        for other in (N("10.88.0.0/16"), N("192.168.122.0/24"), N("172.17.0.0/16")):
            assert not candidate.overlaps(other)


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ([], "10.87.0.0/24"),
        (["192.0.2.0/24", "127.0.0.0/8"], "10.87.0.0/24"),
        (["10.87.0.0/24"], "10.87.1.0/24"),
        (["10.87.0.128/25"], "10.87.1.0/24"),
        (["10.87.0.0/16"], "10.187.0.0/24"),
        (["10.0.0.0/8"], "172.30.87.0/24"),
        (["10.0.0.0/8", "172.16.0.0/12"], "192.168.187.0/24"),
        (["10.87.0.5/32"], "10.87.1.0/24"),
    ],
)
def test_choose_pool_skips_overlaps(taken: list[str], expected: str) -> None:
    assert choose_pool([N(t) for t in taken]).subnet == N(expected)


def test_choose_pool_fails_with_a_hint_when_all_overlap() -> None:
    with pytest.raises(NetworkError) as e:
        choose_pool([N("10.0.0.0/8"), N("172.16.0.0/12"), N("192.168.0.0/16")])
    assert e.value.hint


ROUTES = json.dumps(
    [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel"},
        {"dst": "10.87.0.0/24", "dev": "veneer0", "protocol": "kernel"},
        {"type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local"},
        {"type": "local", "dst": "192.0.2.2", "dev": "eth0", "table": "local"},
        {"type": "unreachable", "dst": "10.200.0.0/16", "table": "main"},
        {"dst": "0.0.0.0/0", "dev": "wg0", "table": "51820"},
    ]
)
ADDRS = json.dumps(
    [
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
        {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.0.2.2", "prefixlen": 24}]},
        {"ifname": "veneer0", "addr_info": [{"family": "inet", "local": "10.87.0.1", "prefixlen": 24}]},
        {"ifname": "wg0", "addr_info": [{"family": "inet", "local": "10.99.1.7", "prefixlen": 32}]},
    ]
)


def test_route_networks_skip_defaults_and_the_bridge() -> None:
    assert parse_route_networks(ROUTES, exclude_dev="veneer0") == [
        N("192.0.2.0/24"),
        N("127.0.0.0/8"),
        N("192.0.2.2/32"),
        N("10.200.0.0/16"),
    ]
    assert N("10.87.0.0/24") in parse_route_networks(ROUTES, exclude_dev="other0")
    assert parse_route_networks("", exclude_dev="veneer0") == []


def test_addr_networks_skip_the_bridge() -> None:
    assert parse_addr_networks(ADDRS, exclude_dev="veneer0") == [
        N("127.0.0.0/8"),
        N("192.0.2.0/24"),
        N("10.99.1.7/32"),
    ]


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        (set(), "10.87.0.2"),
        ({"10.87.0.2"}, "10.87.0.3"),
        ({"10.87.0.2", "10.87.0.4"}, "10.87.0.3"),
        ({"10.87.0.1", "10.87.0.3"}, "10.87.0.2"),
        ({"192.0.2.2"}, "10.87.0.2"),
    ],
)
def test_allocate_lowest_free_address_after_the_gateway(used: set[str], expected: str) -> None:
    pool = Pool.from_subnet("10.87.0.0/24")
    assert allocate_address(pool, {A(u) for u in used}) == A(expected)


def test_allocate_fails_when_the_pool_is_full() -> None:
    pool = Pool.from_subnet("10.87.0.0/29")  # hosts .1-.6, .1 the gateway
    used = {A(f"10.87.0.{n}") for n in range(2, 7)}
    with pytest.raises(NetworkError):
        allocate_address(pool, used)
    assert allocate_address(pool, used - {A("10.87.0.6")}) == A("10.87.0.6")


CONFIG = NetworkConfig(
    bridge="veneer0", pool=Pool.from_subnet("10.87.0.0/24"), dns=("192.0.2.53", "2001:db8::53")
)
CONFIG_JSON = {
    "version": 1,
    "bridge": "veneer0",
    "subnet": "10.87.0.0/24",
    "gateway": "10.87.0.1",
    "dns": ["192.0.2.53", "2001:db8::53"],
}


def test_network_config_golden_round_trip(tmp_path: Path) -> None:
    assert CONFIG.to_json() == CONFIG_JSON
    assert NetworkConfig.from_json(CONFIG_JSON) == CONFIG
    path = tmp_path / "network.json"
    save_network_config(path, CONFIG)
    assert json.loads(path.read_text()) == CONFIG_JSON
    assert load_network_config(path) == CONFIG


def test_network_config_defaults() -> None:
    config = NetworkConfig.from_json({"version": 1, "subnet": "10.87.1.0/24", "gateway": "10.87.1.1"})
    assert config == NetworkConfig(pool=Pool.from_subnet("10.87.1.0/24"))
    assert config.bridge == "veneer0" and config.dns == ()


def test_load_network_config_missing(tmp_path: Path) -> None:
    assert load_network_config(tmp_path / "network.json") is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({**CONFIG_JSON, "version": 2}),
        json.dumps({**CONFIG_JSON, "gateway": "10.88.0.1"}),
        json.dumps({**CONFIG_JSON, "bridge": "a-name-far-too-long"}),
        json.dumps({**CONFIG_JSON, "dns": ["nameserver"]}),
        json.dumps({"version": 1}),
    ],
)
def test_load_network_config_corrupt(tmp_path: Path, text: str) -> None:
    path = tmp_path / "network.json"
    path.write_text(text)
    with pytest.raises(StateCorrupt):
        load_network_config(path)
