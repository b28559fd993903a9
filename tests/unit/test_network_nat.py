"""Port parsing and the nftables script, as text."""

from ipaddress import IPv4Address

import pytest

from veneer.network.ipam import Pool
from veneer.network.nat import Forward, ruleset

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
table ip veneer {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local jump forwards
\t}

\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local jump forwards
\t}

\tchain forwards {
\t\ttcp dport 8080 dnat to 10.87.0.2:80
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
"""


def test_ruleset_golden() -> None:
    a, b = IPv4Address("10.87.0.2"), IPv4Address("10.87.0.3")
    forwards = [
        Forward(host_port=8443, guest_port=443, address=b),
        Forward(host_port=5353, guest_port=53, protocol="udp", address=a),
        Forward(host_port=8080, guest_port=80, protocol="tcp", address=a),
    ]
    assert ruleset(bridge="veneer0", pool=POOL, forwards=forwards) == GOLDEN


def test_ruleset_without_forwards_keeps_an_empty_chain() -> None:
    text = ruleset(table="vtest", bridge="br-x", pool=Pool.from_subnet("172.30.87.0/24"), forwards=[])
    assert "\tchain forwards {\n\t}\n" in text
    assert text.splitlines()[1:4] == ["add table ip vtest", "delete table ip vtest", "table ip vtest {"]
    assert 'ip saddr 172.30.87.0/24 oifname != "br-x" masquerade' in text
    assert "dnat to" not in text


@pytest.mark.parametrize(
    ("table", "bridge"), [("veneer; flush ruleset", "veneer0"), ("veneer", 'x" accept')]
)
def test_ruleset_rejects_injection(table: str, bridge: str) -> None:
    with pytest.raises(ValueError):
        ruleset(table=table, bridge=bridge, pool=POOL, forwards=[])
