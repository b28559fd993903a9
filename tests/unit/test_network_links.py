"""Names and MACs derived from machine names."""

import pytest

from tests.integration.netns_machines import host_interface, netns_name, netns_path
from veneer.errors import NetworkError
from veneer.network.links import mac_for


@pytest.mark.parametrize("name", ["a", "web1", "veneer0", "x" * 12])
def test_mac_is_stable_unicast_and_local(name: str) -> None:
    mac = mac_for(name)
    assert mac == mac_for(name)
    octets = [int(part, 16) for part in mac.split(":")]
    assert len(octets) == 6 and all(0 <= o <= 255 for o in octets)
    assert octets[0] & 0x01 == 0  # unicast
    assert octets[0] & 0x02 == 0x02  # locally administered


def test_macs_differ_between_names() -> None:
    macs = {mac_for(f"m{n}") for n in range(1000)}
    assert len(macs) == 1000


def test_mac_golden() -> None:
    # A machine keeps its MAC across veneer versions: changing the derivation is a visible change.
    assert mac_for("web1") == "3e:7a:92:0a:f1:96"


def test_names() -> None:
    assert host_interface("web1") == "ve-web1"
    assert netns_name("web1") == "veneer-web1"
    assert str(netns_path("web1")) == "/run/netns/veneer-web1"
    with pytest.raises(NetworkError):
        host_interface("x" * 13)
