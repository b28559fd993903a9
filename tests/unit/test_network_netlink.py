"""rtnetlink messages byte for byte, and the parsing of the kernel's answers (no socket, no root)."""

import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from veneer.network import netlink
from veneer.network.netlink import (
    RTM_DELADDR,
    RTM_GETADDR,
    RTM_GETROUTE,
    RTM_NEWADDR,
    Address,
    Route,
    address_message,
    attribute,
    attributes,
    default_route_message,
    del_link_message,
    dump_message,
    get_link_message,
    messages,
    new_bridge_message,
    parse_address,
    parse_route,
    set_link_message,
)


def test_attributes_are_padded_to_four_bytes() -> None:
    assert attribute(3, b"br0\0") == bytes.fromhex("0800 0300") + b"br0\0"
    assert attribute(1, b"\x02\0\0\0\0\x01") == bytes.fromhex("0a00 0100 020000000001 0000")
    assert attributes(attribute(3, b"ab\0") + attribute(0x8012, b"xyz")) == {3: b"ab\0", 0x12: b"xyz"}


# Golden messages: nlmsghdr (len, type, flags, seq, pid), then the family's header and its attributes,
# as include/uapi/linux/rtnetlink.h lays them out (little-endian here; the host's order on the wire).
GOLDEN = [
    (
        "ip link set dev 7 up",
        lambda: set_link_message(7, up=True, seq=3),
        "20000000 1000 0500 03000000 00000000"  # RTM_NEWLINK, REQUEST|ACK
        "00 00 0000 07000000 01000000 01000000",  # AF_UNSPEC, index 7, flags IFF_UP, change IFF_UP
    ),
    (
        "ip link set dev 7 address 02:00:00:00:00:01",
        lambda: set_link_message(7, mac="02:00:00:00:00:01", seq=3),
        "2c000000 1000 0500 03000000 00000000"
        "00 00 0000 07000000 00000000 00000000"
        "0a00 0100 020000000001 0000",  # IFLA_ADDRESS
    ),
    (
        "ip link del dev 7",
        lambda: del_link_message(7, seq=2),
        "20000000 1100 0500 02000000 00000000 00 00 0000 07000000 00000000 00000000",
    ),
    (
        "ip addr replace 10.87.0.2/24 dev 7",
        lambda: address_message(RTM_NEWADDR, 7, IPv4Interface("10.87.0.2/24"), seq=4),
        "28000000 1400 0505 04000000 00000000"  # RTM_NEWADDR, REQUEST|ACK|REPLACE|CREATE
        "02 18 00 00 07000000"  # AF_INET, /24, no flags, scope universe, index 7
        "0800 0200 0a570002 0800 0100 0a570002",  # IFA_LOCAL, IFA_ADDRESS
    ),
    (
        "ip addr del 10.87.0.2/24 dev 7",
        lambda: address_message(RTM_DELADDR, 7, IPv4Interface("10.87.0.2/24"), seq=4),
        "28000000 1500 0500 04000000 00000000 02 18 00 00 07000000 0800 0200 0a570002 0800 0100 0a570002",
    ),
    (
        "ip route replace default via 10.87.0.1 dev 7",
        lambda: default_route_message(7, IPv4Address("10.87.0.1"), seq=5),
        "2c000000 1800 0505 05000000 00000000"  # RTM_NEWROUTE, REQUEST|ACK|REPLACE|CREATE
        "02 00 00 00 fe 03 00 01 00000000"  # AF_INET, dst/0, table main, proto boot, scope universe, unicast
        "0800 0500 0a570001 0800 0400 07000000",  # RTA_GATEWAY, RTA_OIF
    ),
    (
        "ip link add name br0 address 02:00:00:00:00:01 type bridge",
        lambda: new_bridge_message("br0", "02:00:00:00:00:01", seq=1),
        "44000000 1000 0506 01000000 00000000"  # RTM_NEWLINK, REQUEST|ACK|EXCL|CREATE
        "00 00 0000 00000000 00000000 00000000"
        "0800 0300 62723000"  # IFLA_IFNAME "br0"
        "0a00 0100 020000000001 0000"  # IFLA_ADDRESS
        "1000 1280 0b00 0100 627269646765 00 00",  # IFLA_LINKINFO (nested) { IFLA_INFO_KIND "bridge" }
    ),
    (
        "ip link show dev br0",
        lambda: get_link_message("br0", seq=9),
        "28000000 1200 0500 09000000 00000000 00 00 0000 00000000 00000000 00000000 0800 0300 62723000",
    ),
    (
        "ip -4 addr show",
        lambda: dump_message(RTM_GETADDR, seq=6),
        "18000000 1600 0103 06000000 00000000 02 00 00 00 00000000",  # REQUEST|DUMP
    ),
    (
        "ip -4 route show table all",
        lambda: dump_message(RTM_GETROUTE, seq=6),
        "1c000000 1a00 0103 06000000 00000000 02 00 00 00 00 00 00 00 00000000",
    ),
]


@pytest.mark.parametrize(("what", "build", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_messages_golden(what: str, build: object, expected: str) -> None:
    assert callable(build)
    assert build().hex() == bytes.fromhex(expected).hex(), what


def _answer(kind: int, seq: int, body: bytes) -> bytes:
    header = struct.pack("=IHHII", 16 + len(body), kind, netlink.NLM_F_MULTI, seq, 0)
    return header + body + b"\0" * (-len(body) % 4)


def test_answers_are_split_and_parsed() -> None:
    address = struct.pack("=BBBBI", 2, 24, 0, 0, 3) + attribute(netlink.IFA_LOCAL, bytes([10, 87, 0, 1]))
    route = (
        struct.pack("=BBBBBBBBI", 2, 16, 0, 0, 254, 4, 0, 1, 0)
        + attribute(netlink.RTA_DST, bytes([10, 200, 0, 0]))
        + attribute(netlink.RTA_OIF, struct.pack("=i", 5))
    )
    default = struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 254, 3, 0, 1, 0)
    data = _answer(RTM_NEWADDR, 7, address) + _answer(24, 7, route) + _answer(24, 7, default)
    parts = list(messages(data))
    assert [(kind, seq) for kind, seq, _ in parts] == [(RTM_NEWADDR, 7), (24, 7), (24, 7)]
    assert parse_address(parts[0][2]) == Address(index=3, interface=IPv4Interface("10.87.0.1/24"))
    assert parse_route(parts[1][2]) == Route(destination=IPv4Network("10.200.0.0/16"), index=5)
    assert parse_route(parts[2][2]) == Route(destination=IPv4Network("0.0.0.0/0"), index=0)


def test_truncated_answers_end_the_walk() -> None:
    assert list(messages(b"\x05\0\0\0" + b"\0" * 12)) == []
    assert attributes(b"\x02\0\x01\0") == {}
    assert parse_address(struct.pack("=BBBBI", 2, 24, 0, 0, 3)) is None
