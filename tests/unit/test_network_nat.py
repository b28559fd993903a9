"""Port parsing and the nftables script, as text."""

from ipaddress import IPv4Address

import pytest

from veneer.network.ipam import Pool
from veneer.network.nat import Forward, Guest, ruleset

POOL = Pool.from_subnet("10.87.0.0/24")


def test_forward_validates() -> None:
    with pytest.raises(ValueError):
        Forward(host_port=80, guest_port=80, protocol="sctp", address=IPv4Address("10.87.0.2"))
    with pytest.raises(ValueError):
        Forward(host_port=0, guest_port=80, address=IPv4Address("10.87.0.2"))


GOLDEN = """\
# Made by veneer: the nat network on veneer0 (10.87.0.0/24). Replaced as a whole on every change.
add table ip veneer
delete table ip veneer
add table bridge veneer
delete table bridge veneer
table ip veneer {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local ip daddr != 127.0.0.0/8 jump forwards
\t}

\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local jump forwards
\t}

\tchain forwards {
\t\ttcp dport 8080 dnat to 10.87.0.2:80
\t\tip daddr 127.0.0.1 tcp dport 8081 dnat to 10.87.0.3:80
\t\tip daddr 192.0.2.7 tcp dport 8081 dnat to 10.87.0.2:80
\t\ttcp dport 8443 dnat to 10.87.0.3:443
\t\tudp dport 5353 dnat to 10.87.0.2:53
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.87.0.0/24 oifname != "veneer0" masquerade
\t\toifname "veneer0" ct status dnat ip saddr { 127.0.0.0/8, 10.87.0.0/24 } masquerade
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "veneer0" ip daddr 127.0.0.0/8 ct direction reply ct status dnat accept
\t\tiifname "veneer0" ip daddr 127.0.0.0/8 drop
\t\tip daddr 10.87.0.1 meta l4proto { tcp, udp } th dport 53 iifname != { "veneer0", "lo" } drop
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tiifname "veneer0" accept
\t\toifname "veneer0" ct status dnat accept
\t\toifname "veneer0" drop
\t}
}

table bridge veneer {
\tchain prerouting {
\t\ttype filter hook prerouting priority filter; policy accept;
\t\tiifname vmap { "vb-a" : jump from-vb-a, "vb-b" : jump from-vb-b }
\t}

\tchain from-vb-a {
\t\tether saddr != 02:00:00:00:00:0a drop
\t\tarp htype 1 arp ptype ip arp saddr ether 02:00:00:00:00:0a arp saddr ip 10.87.0.2 accept
\t\tether type ip ip saddr 10.87.0.2 accept
\t\tdrop
\t}

\tchain from-vb-b {
\t\tether saddr != 02:00:00:00:00:0b drop
\t\tarp htype 1 arp ptype ip arp saddr ether 02:00:00:00:00:0b arp saddr ip 10.87.0.3 accept
\t\tether type ip ip saddr 10.87.0.3 accept
\t\tdrop
\t}
}
"""


def test_ruleset_golden() -> None:
    a, b = IPv4Address("10.87.0.2"), IPv4Address("10.87.0.3")
    forwards = [
        Forward(host_port=8443, guest_port=443, address=b),
        Forward(host_port=5353, guest_port=53, protocol="udp", address=a),
        Forward(host_port=8080, guest_port=80, protocol="tcp", address=a),
        Forward(host_port=8081, guest_port=80, address=a, listen=IPv4Address("192.0.2.7")),
        Forward(host_port=8081, guest_port=80, address=b, listen=IPv4Address("127.0.0.1")),
    ]
    guests = [
        Guest(port="vb-b", mac="02:00:00:00:00:0b", address=b),
        Guest(port="vb-a", mac="02:00:00:00:00:0a", address=a),
    ]
    assert ruleset(bridge="veneer0", pool=POOL, forwards=forwards, guests=guests) == GOLDEN


def test_ruleset_without_forwards_keeps_an_empty_chain() -> None:
    pool = Pool.from_subnet("172.30.87.0/24")
    text = ruleset(table="vtest", bridge="br-x", pool=pool, forwards=[], guests=[])
    assert "\tchain forwards {\n\t}\n" in text
    assert text.splitlines()[1:6] == [
        "add table ip vtest", "delete table ip vtest", "add table bridge vtest", "delete table bridge vtest",
        "table ip vtest {",
    ]  # fmt: skip
    assert "vmap" not in text
    assert 'ip saddr 172.30.87.0/24 oifname != "br-x" masquerade' in text
    assert "dnat to" not in text


@pytest.mark.parametrize(
    ("table", "bridge"), [("veneer; flush ruleset", "veneer0"), ("veneer", 'x" accept')]
)
def test_ruleset_rejects_injection(table: str, bridge: str) -> None:
    with pytest.raises(ValueError):
        ruleset(table=table, bridge=bridge, pool=POOL, forwards=[], guests=[])


@pytest.mark.parametrize(
    ("port", "mac"), [("vb-a; drop", "02:00:00:00:00:01"), ("vb-a", "02:00:00:00:00:01 accept")]
)
def test_guest_rejects_injection(port: str, mac: str) -> None:
    with pytest.raises(ValueError):
        Guest(port=port, mac=mac, address=IPv4Address("10.87.0.2"))
