"""What would stop the nat network on this host, and how to fix it (`veneer doctor`).

The host is read once into `HostFacts` (sysctls, tools, the nftables ruleset, host routes, who manages
veneer's links); the checks are pure functions of those facts, so tests feed them synthetic hosts.
Nothing here changes the host: every fix is a command or file for the user to apply.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from veneer.errors import NetworkError
from veneer.network.ipam import DEFAULT_BRIDGE, NetworkConfig, choose_pool, host_networks
from veneer.network.links import load_forwarding_record
from veneer.network.nat import DEFAULT_TABLE
from veneer.util.proc import run, which

NETWORKD_UNIT = "/etc/systemd/network/05-veneer.network"
NM_CONF = "/etc/NetworkManager/conf.d/veneer.conf"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One check's outcome; `fix` says what to do when it is not ok."""

    ok: bool
    check: str
    message: str
    fix: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFacts:
    """What the checks look at, as read from the host by `gather_facts()`."""

    ip_forward: str | None  # /proc/sys/net/ipv4/ip_forward
    forwarding_enabled_at: float | None = None  # when veneer turned it on, if it did
    bridge_exists: bool
    nft: str | None  # the nft executable, None if missing
    nft_ruleset: str | None  # `nft -j list ruleset`, None if it failed
    nft_error: str = ""
    dnsmasq: str | None
    host_networks: tuple[IPv4Network, ...]
    host_networks_error: str = ""
    bridge_nf_call_iptables: str | None  # None: br_netfilter is not loaded
    legacy_policies: tuple[tuple[str, str], ...] = ()  # (chain, policy) in iptables-legacy's filter table
    networkd_running: bool = False
    networkd_states: tuple[tuple[str, str], ...] = ()  # (link, ADMIN_STATE) for veneer's links
    nm_running: bool = False
    nm_states: tuple[tuple[str, str], ...] = ()  # (link, GENERAL.STATE) for veneer's links


@dataclass(frozen=True, slots=True, kw_only=True)
class Blocker:
    """A base chain of another table that drops (or rejects) what is not accepted explicitly."""

    family: str
    table: str
    chain: str
    hook: str
    iptables: bool  # made by iptables-nft (so fixed with iptables), e.g. docker's
    docker_user: bool  # the table has docker's DOCKER-USER chain, which docker leaves alone
    firewalld: bool


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _ends_in_drop(rules: Sequence[dict[str, Any]]) -> bool:
    """Whether the last rule drops or rejects everything that reaches it (firewalld's style)."""
    if not rules:
        return False
    harmless = {"counter", "log", "limit"}
    verdicts = {"drop", "reject"}
    keys = [next(iter(e)) for e in rules[-1].get("expr", []) if isinstance(e, dict) and e]
    return bool(keys) and keys[-1] in verdicts and all(k in harmless for k in keys[:-1])


def parse_blockers(ruleset_json: str, *, own_table: str = DEFAULT_TABLE) -> list[Blocker]:
    """Other tables' forward and input base chains that drop by default, from `nft -j list ruleset`."""
    items = json.loads(ruleset_json).get("nftables", [])
    chains = [i["chain"] for i in items if "chain" in i]
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for item in items:
        if "rule" in item:
            r = item["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    names = {(c["family"], c["table"], c["name"]) for c in chains}
    blockers = []
    for c in chains:
        family, table, name = c["family"], c["table"], c["name"]
        if c.get("hook") not in ("forward", "input") or family not in ("ip", "inet", "bridge"):
            continue
        if family == "ip" and table == own_table:
            continue
        if c.get("policy") == "drop" or _ends_in_drop(rules.get((family, table, name), [])):
            blockers.append(
                Blocker(
                    family=family,
                    table=table,
                    chain=name,
                    hook=c["hook"],
                    iptables=family == "ip" and name in ("INPUT", "FORWARD"),
                    docker_user=(family, table, "DOCKER-USER") in names,
                    firewalld=table == "firewalld",
                )
            )
    return blockers


def _blocker_fix(b: Blocker, bridge: str) -> str:
    if b.firewalld:
        return (
            f"Put {bridge} into the trusted zone: 'firewall-cmd --permanent --zone=trusted "
            f"--add-interface={bridge} && firewall-cmd --reload'."
        )
    if b.hook == "input":
        if b.iptables:
            return (
                f"Accept DNS from the machines: 'iptables -I INPUT -i {bridge} -p udp --dport 53 -j ACCEPT' "
                f"and the same with '-p tcp'."
            )
        return (
            f"Accept DNS from the machines: 'nft insert rule {b.family} {b.table} {b.chain} "
            f'iifname "{bridge}" meta l4proto {{ tcp, udp }} th dport 53 accept\'.'
        )
    if b.docker_user:
        return (
            f"Docker rewrites FORWARD but leaves DOCKER-USER alone: 'iptables -I DOCKER-USER -i {bridge} "
            f"-j ACCEPT' and 'iptables -I DOCKER-USER -o {bridge} -m conntrack --ctstate "
            "RELATED,ESTABLISHED,DNAT -j ACCEPT'."
        )
    if b.iptables:
        return (
            f"'iptables -I FORWARD -i {bridge} -j ACCEPT' and 'iptables -I FORWARD -o {bridge} -m conntrack "
            "--ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT' (and make them persistent as your firewall does)."
        )
    return (
        f"'nft insert rule {b.family} {b.table} {b.chain} iifname \"{bridge}\" accept' and "
        f'\'nft insert rule {b.family} {b.table} {b.chain} oifname "{bridge}" ct state '
        "established,related accept' (and add them to your firewall's configuration)."
    )


def check_forwarding(facts: HostFacts) -> Finding:
    if facts.ip_forward == "1" and facts.forwarding_enabled_at is not None:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(facts.forwarding_enabled_at))
        return Finding(
            ok=True,
            check="ip-forward",
            message=f"IPv4 forwarding is on host-wide: veneer turned it on ({when}) for the nat network "
            "and leaves it on. The host routes between all its interfaces, as far as its firewall lets it "
            "('sysctl -w net.ipv4.ip_forward=0' turns it off when no nat machine runs).",
        )
    if facts.ip_forward == "1":
        return Finding(ok=True, check="ip-forward", message="IPv4 forwarding is on (host-wide).")
    if not facts.bridge_exists:
        return Finding(
            ok=True,
            check="ip-forward",
            message="IPv4 forwarding is off now; veneer turns it on host-wide (net.ipv4.ip_forward=1) when "
            "the first nat machine starts, and leaves it on.",
        )
    return Finding(
        ok=False,
        check="ip-forward",
        message="IPv4 forwarding is off while the nat network is up: machines cannot reach past the host.",
        fix="Something turned it off after veneer turned it on. Keep it on: "
        "'echo net.ipv4.ip_forward=1 > /etc/sysctl.d/90-veneer.conf && sysctl --system'.",
    )


def check_tools(facts: HostFacts) -> list[Finding]:
    findings = []
    if facts.nft is None:
        findings.append(
            Finding(
                ok=False,
                check="nft",
                message="nft is not installed: veneer cannot masquerade or forward ports.",
                fix="Install nftables ('apt install nftables', 'dnf install nftables').",
            )
        )
    elif facts.nft_ruleset is None:
        findings.append(
            Finding(
                ok=False,
                check="nft",
                message=f"nft cannot list the ruleset: {facts.nft_error or 'unknown error'}",
                fix="Run veneer as root, and load nf_tables ('modprobe nf_tables') if the kernel lacks it.",
            )
        )
    else:
        findings.append(Finding(ok=True, check="nft", message=f"nft works ({facts.nft})."))
    if facts.dnsmasq is None:
        findings.append(
            Finding(
                ok=False,
                check="dnsmasq",
                message="dnsmasq is not installed: machines get no DNS and cannot find each other by name.",
                fix="Install it ('apt install dnsmasq-base', 'dnf install dnsmasq', 'pacman -S dnsmasq').",
            )
        )
    else:
        findings.append(
            Finding(ok=True, check="dnsmasq", message=f"dnsmasq is installed ({facts.dnsmasq}).")
        )
    return findings


def check_pool(facts: HostFacts, config: NetworkConfig | None) -> Finding:
    if facts.host_networks_error:
        return Finding(
            ok=False,
            check="pool",
            message=f"Cannot read the host's routes: {facts.host_networks_error}",
            fix="veneer reads them over rtnetlink (NETLINK_ROUTE): run it as root, outside a sandbox.",
        )
    if config is None:
        try:
            pool = choose_pool(facts.host_networks)
        except NetworkError as e:
            return Finding(ok=False, check="pool", message=e.message, fix=e.hint)
        return Finding(
            ok=True, check="pool", message=f"No nat network yet; veneer would use {pool.subnet}, free here."
        )
    subnet = config.pool.subnet
    overlaps = [n for n in facts.host_networks if n.overlaps(subnet)]
    if not overlaps:
        return Finding(ok=True, check="pool", message=f"The nat network {subnet} overlaps no host route.")
    try:
        free = str(choose_pool([*facts.host_networks, subnet]).subnet)
    except NetworkError:
        free = "SUBNET"
    return Finding(
        ok=False,
        check="pool",
        message=f"The nat network {subnet} overlaps the host's "
        f"{', '.join(str(n) for n in overlaps)}: traffic to one of them goes to the wrong place.",
        fix=f"Remove the conflicting route, or stop the nat machines and move the network: "
        f"'veneer network subnet {free}' (the machines get new addresses).",
    )


def check_firewall(facts: HostFacts, bridge: str, *, table: str) -> list[Finding]:
    if facts.nft_ruleset is None:
        return [
            Finding(ok=False, check="firewall", message="Cannot inspect the firewall: nft does not work.")
        ]
    findings = []
    for b in parse_blockers(facts.nft_ruleset, own_table=table):
        what = (
            "forwarded traffic: machines cannot reach past the host, nor port forwards reach them"
            if b.hook == "forward"
            else f"traffic to the host: machines cannot reach DNS on {bridge}"
        )
        findings.append(
            Finding(
                ok=False,
                check="firewall",
                message=f"Chain '{b.chain}' of table {b.family} {b.table} ({b.hook} hook) drops {what}.",
                fix=_blocker_fix(b, bridge),
            )
        )
    for chain, policy in facts.legacy_policies:
        if chain in ("FORWARD", "INPUT") and policy == "DROP":
            rule = (
                f"-i {bridge} -j ACCEPT"
                if chain == "FORWARD"
                else f"-i {bridge} -p udp --dport 53 -j ACCEPT"
            )
            findings.append(
                Finding(
                    ok=False,
                    check="firewall",
                    message=f"iptables-legacy's {chain} chain drops by default; nft cannot see those rules.",
                    fix=f"'iptables-legacy -I {chain} {rule}'"
                    + (
                        f" and 'iptables-legacy -I FORWARD -o {bridge} -m conntrack --ctstate "
                        "RELATED,ESTABLISHED,DNAT -j ACCEPT'."
                        if chain == "FORWARD"
                        else "."
                    ),
                )
            )
    if not findings:
        findings.append(
            Finding(ok=True, check="firewall", message="No other firewall table drops forwarded traffic.")
        )
    return findings


def check_br_netfilter(facts: HostFacts, bridge: str, *, table: str) -> Finding:
    if facts.bridge_nf_call_iptables in (None, "0"):
        return Finding(
            ok=True,
            check="br-netfilter",
            message="Bridged traffic between machines does not pass the IP firewall (br_netfilter is off).",
        )
    forward_blocked = (
        facts.nft_ruleset is not None
        and any(
            b.hook == "forward" and b.family != "bridge"
            for b in parse_blockers(facts.nft_ruleset, own_table=table)
        )
        or ("FORWARD", "DROP") in facts.legacy_policies
    )
    if not forward_blocked:
        return Finding(
            ok=True,
            check="br-netfilter",
            message="br_netfilter sends bridged traffic between machines through the IP forward hooks; "
            "none drops it.",
        )
    return Finding(
        ok=False,
        check="br-netfilter",
        message="br_netfilter sends traffic between machines on the bridge through the IP forward hooks, "
        "and a firewall there drops it: machines cannot reach each other.",
        fix=f"Accept traffic in and out of {bridge} in that chain (see 'firewall'), or, if nothing here "
        "(Docker, Kubernetes) needs it: 'sysctl -w net.bridge.bridge-nf-call-iptables=0'.",
    )


def check_managers(facts: HostFacts, bridge: str) -> list[Finding]:
    findings = []
    managed = [f"{link} ({state})" for link, state in facts.networkd_states if state != "unmanaged"]
    if managed:
        findings.append(
            Finding(
                ok=False,
                check="networkd",
                message=f"systemd-networkd manages {', '.join(managed)}; it may add addresses or "
                "a DHCP server that fight veneer's.",
                fix=f"Write {NETWORKD_UNIT} with '[Match]' 'Name={bridge} vb-*' and '[Link]' "
                "'Unmanaged=yes', then 'networkctl reload'.",
            )
        )
    else:
        findings.append(
            Finding(
                ok=True,
                check="networkd",
                message="systemd-networkd leaves veneer's links alone."
                if facts.networkd_running
                else "systemd-networkd does not run.",
            )
        )
    managed = [f"{link} ({state})" for link, state in facts.nm_states if "unmanaged" not in state]
    if managed:
        findings.append(
            Finding(
                ok=False,
                check="networkmanager",
                message=f"NetworkManager manages {', '.join(managed)}.",
                fix=f"Write {NM_CONF} with '[keyfile]' 'unmanaged-devices=interface-name:{bridge};"
                "interface-name:vb-*', then 'nmcli general reload conf'.",
            )
        )
    else:
        findings.append(
            Finding(
                ok=True,
                check="networkmanager",
                message="NetworkManager leaves veneer's links alone."
                if facts.nm_running
                else "NetworkManager does not run.",
            )
        )
    return findings


def diagnose(
    config: NetworkConfig | None,
    *,
    facts: HostFacts | None = None,
    table: str = DEFAULT_TABLE,
    run_dir: Path | None = None,
) -> list[Finding]:
    """Every check's finding for the nat network of `config` (None: not made yet) on this host; `run_dir`
    is the network's runtime directory."""
    bridge = config.bridge if config else DEFAULT_BRIDGE
    if facts is None:
        facts = gather_facts(bridge, run_dir=run_dir)
    return [
        check_forwarding(facts),
        *check_tools(facts),
        check_pool(facts, config),
        *check_firewall(facts, bridge, table=table),
        check_br_netfilter(facts, bridge, table=table),
        *check_managers(facts, bridge),
    ]


def _process_running(comm: str) -> bool:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _read(f"/proc/{entry.name}/comm") == comm:
            return True
    return False


def _veneer_links(bridge: str) -> list[str]:
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return []
    # systemd-nspawn --network-bridge names a machine's port vb-NAME (links.machine_port)
    return sorted(n for n in names if n == bridge or n.startswith("vb-"))


def _networkd_states(links: Iterable[str]) -> tuple[tuple[str, str], ...]:
    states = []
    for link in links:
        ifindex = _read(f"/sys/class/net/{link}/ifindex")
        state = "unmanaged"
        for line in (_read(f"/run/systemd/netif/links/{ifindex}") or "").splitlines():
            if line.startswith("ADMIN_STATE="):
                state = line.partition("=")[2]
        states.append((link, state))
    return tuple(states)


def _nm_states(links: Iterable[str]) -> tuple[tuple[str, str], ...]:
    states = []
    for link in links:
        result = run(
            ["nmcli", "-t", "-g", "GENERAL.STATE", "device", "show", link], check=False, capture=True
        )
        if result.returncode == 0 and result.stdout.strip():
            states.append((link, result.stdout.strip()))
    return tuple(states)


def _legacy_policies() -> tuple[tuple[str, str], ...]:
    if "filter" not in (_read("/proc/net/ip_tables_names") or "").split() or not which("iptables-legacy"):
        return ()
    result = run(["iptables-legacy", "-S"], check=False, capture=True)
    policies = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "-P":
            policies.append((fields[1], fields[2]))
    return tuple(policies)


def gather_facts(bridge: str = DEFAULT_BRIDGE, *, run_dir: Path | None = None) -> HostFacts:
    """Read what the checks need from this host."""
    nft = which("nft")
    ruleset, nft_error = None, ""
    if nft:
        result = run([nft, "-j", "list", "ruleset"], check=False, capture=True)
        if result.returncode == 0:
            ruleset = result.stdout or '{"nftables": []}'
        else:
            nft_error = result.stderr.strip()
    try:
        networks, networks_error = tuple(host_networks(bridge=bridge)), ""
    except NetworkError as e:
        networks, networks_error = (), e.message
    links = _veneer_links(bridge)
    networkd = _process_running("systemd-network")  # comm is cut to 15 characters
    nm = _process_running("NetworkManager")
    return HostFacts(
        ip_forward=_read("/proc/sys/net/ipv4/ip_forward"),
        forwarding_enabled_at=load_forwarding_record(run_dir) if run_dir else None,
        bridge_exists=bridge in links,
        nft=nft,
        nft_ruleset=ruleset,
        nft_error=nft_error,
        dnsmasq=which("dnsmasq"),
        host_networks=networks,
        host_networks_error=networks_error,
        bridge_nf_call_iptables=_read("/proc/sys/net/bridge/bridge-nf-call-iptables"),
        legacy_policies=_legacy_policies(),
        networkd_running=networkd,
        networkd_states=_networkd_states(links) if networkd else (),
        nm_running=nm,
        nm_states=_nm_states(links) if nm and which("nmcli") else (),
    )
