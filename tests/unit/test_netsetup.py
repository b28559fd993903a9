"""Which port forwards of the running nat machines clash."""

from dataclasses import replace

import pytest

from veneer.config.settings import MachineName, Network, NetworkMode, parse_port
from veneer.errors import NetworkError
from veneer.machines.netsetup import _refuse_clashing_ports
from veneer.machines.state import MachineRecord

BASE = MachineRecord(
    name=MachineName("a"),
    image="bb",
    revision=0,
    created=1700000000.0,
    machine_id="0123456789abcdef0123456789abcdef",
    uid_base=0x70000000,
    network=Network(mode=NetworkMode.NAT),
    address="10.87.0.2",
)


def machines(a: list[str], b: list[str]) -> list[MachineRecord]:
    return [
        replace(BASE, ports=tuple(map(parse_port, a))),
        replace(BASE, name=MachineName("b"), address="10.87.0.3", ports=tuple(map(parse_port, b))),
    ]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (["8080:80"], ["8080:80/udp"]),
        (["8080:80"], ["8081:80"]),
        (["127.0.0.1:8080:80"], ["192.0.2.7:8080:80"]),
    ],
)
def test_forwards_that_do_not_clash(a: list[str], b: list[str]) -> None:
    _refuse_clashing_ports(machines(a, b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (["8080:80"], ["8080:81"]),
        (["8080:80"], ["127.0.0.1:8080:80"]),
        (["127.0.0.1:8080:80"], ["8080:80"]),
        (["127.0.0.1:53:53/udp"], ["127.0.0.1:53:5353/udp"]),
    ],
)
def test_forwards_that_clash_name_both(a: list[str], b: list[str]) -> None:
    with pytest.raises(NetworkError, match="of 'b' clashes with .* of 'a'") as raised:
        _refuse_clashing_ports(machines(a, b))
    assert raised.value.hint and "veneer set b --port" in raised.value.hint
