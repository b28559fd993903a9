"""`veneer doctor`'s checks on synthetic hosts."""

import json
from dataclasses import replace
from ipaddress import IPv4Network
from typing import Any

import pytest

from veneer.network.doctor import Finding, HostFacts, diagnose, parse_blockers
from veneer.network.ipam import NetworkConfig, Pool


def chain(
    family: str, table: str, name: str, hook: str | None = None, policy: str = "accept"
) -> dict[str, Any]:
    c: dict[str, Any] = {"family": family, "table": table, "name": name, "handle": 1}
    if hook:
        c.update(type="filter", hook=hook, prio=0, policy=policy)
    return {"chain": c}


def rule(family: str, table: str, chain_name: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"rule": {"family": family, "table": table, "chain": chain_name, "handle": 2, "expr": list(expr)}}


def ruleset(*items: dict[str, Any]) -> str:
    return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]})


# This host's: podman/netavark's iptables-nft tables, all accepting.
NETAVARK = ruleset(
    {"table": {"family": "ip", "name": "filter", "handle": 2}},
    chain("ip", "filter", "NETAVARK_FORWARD"),
    chain("ip", "filter", "FORWARD", "forward"),
)
DOCKER = ruleset(
    {"table": {"family": "ip", "name": "filter", "handle": 2}},
    chain("ip", "filter", "FORWARD", "forward", "drop"),
    chain("ip", "filter", "DOCKER-USER"),
    chain("ip", "filter", "INPUT", "input"),
)
FIREWALLD = ruleset(
    chain("inet", "firewalld", "filter_FORWARD", "forward"),
    rule("inet", "firewalld", "filter_FORWARD", {"jump": {"target": "filter_FORWARD_POLICIES"}}),
    rule("inet", "firewalld", "filter_FORWARD", {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}),
)
NFT_INPUT_DROP = ruleset(
    chain("inet", "filter", "input", "input", "drop"),
    chain("inet", "filter", "forward", "forward"),
    rule("inet", "filter", "forward", {"match": {"op": "==", "left": {}, "right": 22}}, {"drop": None}),
)
OWN = ruleset(chain("ip", "veneer", "forward", "forward", "drop"))

CONFIG = NetworkConfig(pool=Pool.from_subnet("10.87.0.0/24"))
HEALTHY = HostFacts(
    ip_forward="1",
    bridge_exists=True,
    nft="/usr/sbin/nft",
    nft_ruleset=NETAVARK,
    dnsmasq="/usr/sbin/dnsmasq",
    host_networks=(IPv4Network("192.0.2.0/24"), IPv4Network("127.0.0.0/8")),
    bridge_nf_call_iptables="1",
)


def by_check(findings: list[Finding]) -> dict[str, list[Finding]]:
    result: dict[str, list[Finding]] = {}
    for f in findings:
        result.setdefault(f.check, []).append(f)
    return result


def problems(facts: HostFacts, config: NetworkConfig | None = CONFIG) -> dict[str, list[Finding]]:
    return by_check([f for f in diagnose(config, facts=facts) if not f.ok])


def test_healthy_host_has_no_problems() -> None:
    findings = diagnose(CONFIG, facts=HEALTHY)
    assert all(f.ok for f in findings), findings
    assert {f.check for f in findings} == {
        "ip-forward", "nft", "dnsmasq", "pool", "firewall", "br-netfilter", "networkd", "networkmanager",
    }  # fmt: skip


def test_every_problem_has_a_fix() -> None:
    broken = replace(
        HEALTHY,
        ip_forward="0",
        nft_ruleset=DOCKER,
        dnsmasq=None,
        host_networks=(IPv4Network("10.0.0.0/8"),),
        networkd_running=True,
        networkd_states=(("veneer0", "configured"),),
        nm_running=True,
        nm_states=(("vb-web", "100 (connected)"),),
        legacy_policies=(("FORWARD", "DROP"),),
    )
    found = diagnose(CONFIG, facts=broken)
    assert {f.check for f in found if not f.ok} == {
        "ip-forward", "dnsmasq", "pool", "firewall", "br-netfilter", "networkd", "networkmanager",
    }  # fmt: skip
    assert all(f.fix for f in found if not f.ok)


def test_ip_forward_off_before_the_network_exists_is_fine() -> None:
    assert "ip-forward" not in problems(replace(HEALTHY, ip_forward="0", bridge_exists=False))
    [finding] = problems(replace(HEALTHY, ip_forward="0"))["ip-forward"]
    assert "sysctl" in (finding.fix or "")


def test_ip_forward_says_when_veneer_turned_it_on_host_wide() -> None:
    def message(facts: HostFacts) -> str:
        [finding] = by_check(diagnose(CONFIG, facts=facts))["ip-forward"]
        assert finding.ok
        return finding.message

    assert "veneer turned it on (2026-12-06 06:00 UTC)" in message(
        replace(HEALTHY, forwarding_enabled_at=1796536800.0)
    )
    assert "host-wide" in message(replace(HEALTHY, forwarding_enabled_at=1796536800.0))
    assert "veneer" not in message(HEALTHY)
    assert "host-wide" in message(replace(HEALTHY, ip_forward="0", bridge_exists=False))


def test_nft_missing_or_broken() -> None:
    missing = problems(replace(HEALTHY, nft=None, nft_ruleset=None))
    assert "nftables" in (missing["nft"][0].fix or "")
    assert "firewall" in missing
    broken = problems(replace(HEALTHY, nft_ruleset=None, nft_error="Operation not permitted"))
    assert "Operation not permitted" in broken["nft"][0].message


def test_pool_overlapping_a_host_route_names_it_and_a_free_subnet() -> None:
    [finding] = problems(replace(HEALTHY, host_networks=(IPv4Network("10.87.0.0/16"),)))["pool"]
    assert "10.87.0.0/16" in finding.message
    assert "10.187.0.0/24" in (finding.fix or "")


def test_pool_without_config_says_what_it_would_choose() -> None:
    [finding] = [f for f in diagnose(None, facts=HEALTHY) if f.check == "pool"]
    assert finding.ok and "10.87.0.0/24" in finding.message
    crowded = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
    assert "pool" in problems(replace(HEALTHY, host_networks=crowded), None)


def test_docker_forward_drop_is_fixed_in_docker_user() -> None:
    found = problems(replace(HEALTHY, nft_ruleset=DOCKER))
    [firewall] = found["firewall"]
    assert "FORWARD" in firewall.message and "ip filter" in firewall.message
    assert "DOCKER-USER" in (firewall.fix or "") and "-i veneer0" in (firewall.fix or "")
    # br_netfilter sends machine-to-machine traffic through that FORWARD chain too.
    assert "bridge-nf-call-iptables=0" in (found["br-netfilter"][0].fix or "")
    assert "br-netfilter" not in problems(replace(HEALTHY, nft_ruleset=DOCKER, bridge_nf_call_iptables=None))


def test_firewalld_reject_rule_is_found() -> None:
    [firewall] = problems(replace(HEALTHY, nft_ruleset=FIREWALLD))["firewall"]
    assert "firewall-cmd" in (firewall.fix or "") and "trusted" in (firewall.fix or "")


def test_input_drop_blocks_dns_but_a_conditional_drop_is_no_blocker() -> None:
    [firewall] = problems(replace(HEALTHY, nft_ruleset=NFT_INPUT_DROP))["firewall"]
    assert "input" in firewall.message and "DNS" in firewall.message
    assert 'nft insert rule inet filter input iifname "veneer0"' in (firewall.fix or "")


def test_own_table_is_no_blocker() -> None:
    assert parse_blockers(OWN) == []
    assert [b.table for b in parse_blockers(OWN, own_table="other")] == ["veneer"]


def test_legacy_iptables_forward_drop() -> None:
    [firewall] = problems(replace(HEALTHY, legacy_policies=(("INPUT", "ACCEPT"), ("FORWARD", "DROP"))))[
        "firewall"
    ]
    assert "iptables-legacy -I FORWARD -i veneer0 -j ACCEPT" in (firewall.fix or "")


@pytest.mark.parametrize(
    ("networkd", "nm", "bad"),
    [
        ((("veneer0", "unmanaged"), ("vb-web", "unmanaged")), (), set()),
        ((("vb-web", "configured"),), (), {"networkd"}),
        ((), (("veneer0", "10 (unmanaged)"),), set()),
        ((), (("veneer0", "100 (connected (externally))"),), {"networkmanager"}),
    ],
)
def test_network_managers(
    networkd: tuple[tuple[str, str], ...], nm: tuple[tuple[str, str], ...], bad: set[str]
) -> None:
    facts = replace(HEALTHY, networkd_running=True, networkd_states=networkd, nm_running=True, nm_states=nm)
    found = problems(facts)
    assert {c for c in found if c in ("networkd", "networkmanager")} == bad
    if "networkd" in bad:
        assert "Unmanaged=yes" in (found["networkd"][0].fix or "")
    if "networkmanager" in bad:
        assert "unmanaged-devices" in (found["networkmanager"][0].fix or "")
