"""Pool choice, address allocation, host route parsing and the network config's JSON round trip."""

import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from veneer.errors import NetworkError, StateCorrupt
from veneer.network.ipam import (
    CANDIDATE_POOLS,
    NetworkConfig,
    Pool,
    address_networks,
    allocate_address,
    choose_pool,
    load_network_config,
    route_networks,
    save_network_config,
)
from veneer.network.netlink import Address, Route

N = IPv4Network
A = IPv4Address


def test_pool_from_subnet() -> None:
    pool = Pool.from_subnet("10.87.0.0/24")
    assert pool.gateway == A("10.87.0.1")
    assert pool.prefixlen == 24
    assert str(pool.gateway_interface) == "10.87.0.1/24"
    assert str(pool.interface(A("10.87.0.9"))) == "10.87.0.9/24"


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


# Interface indexes: 1 lo, 2 eth0, 3 veneer0, 4 wg0; 0 for a route through no link (unreachable).
ROUTES = [
    Route(destination=N("0.0.0.0/0"), index=2),
    Route(destination=N("192.0.2.0/24"), index=2),
    Route(destination=N("10.87.0.0/24"), index=3),
    Route(destination=N("127.0.0.0/8"), index=1),
    Route(destination=N("192.0.2.2/32"), index=2),
    Route(destination=N("10.200.0.0/16"), index=0),
    Route(destination=N("0.0.0.0/0"), index=4),
]
ADDRS = [
    Address(index=1, interface=IPv4Interface("127.0.0.1/8")),
    Address(index=2, interface=IPv4Interface("192.0.2.2/24")),
    Address(index=3, interface=IPv4Interface("10.87.0.1/24")),
    Address(index=4, interface=IPv4Interface("10.99.1.7/32")),
]


def test_route_networks_skip_defaults_and_the_bridge() -> None:
    assert route_networks(ROUTES, exclude_index=3) == [
        N("192.0.2.0/24"),
        N("127.0.0.0/8"),
        N("192.0.2.2/32"),
        N("10.200.0.0/16"),
    ]
    assert N("10.87.0.0/24") in route_networks(ROUTES, exclude_index=None)
    assert route_networks([], exclude_index=3) == []


def test_addr_networks_skip_the_bridge() -> None:
    assert address_networks(ADDRS, exclude_index=3) == [
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
