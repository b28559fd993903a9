from ipaddress import IPv4Address

import pytest

from veneer.config.settings import (
    Bind,
    Network,
    NetworkMode,
    Port,
    parse_bind,
    parse_env,
    parse_image_name,
    parse_machine_name,
    parse_network,
    parse_port,
)
from veneer.errors import UsageError


@pytest.mark.parametrize("name", ["a", "web1", "db-2", "x" * 12, "0abc"])
def test_valid_machine_names(name: str) -> None:
    assert parse_machine_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "a/b", "..", "Web", "x" * 13, "a b", "a_b", "a.b", "ü", "a\n"]
)
def test_invalid_machine_names(name: str) -> None:
    with pytest.raises(UsageError, match="Invalid machine name"):
        parse_machine_name(name)


@pytest.mark.parametrize("name", ["debian", "arch.base", "img_1", "a" * 64])
def test_valid_image_names(name: str) -> None:
    assert parse_image_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "A", "a" * 65, "-x"])
def test_invalid_image_names(name: str) -> None:
    with pytest.raises(UsageError, match="Invalid image name"):
        parse_image_name(name)


@pytest.mark.parametrize(
    ("text", "bind"),
    [
        ("/srv", Bind(source="/srv", target="/srv")),
        ("/srv:/data", Bind(source="/srv", target="/data")),
        ("/srv:/data:ro", Bind(source="/srv", target="/data", readonly=True)),
        ("/srv:/data:ro,norbind", Bind(source="/srv", target="/data", readonly=True, options="norbind")),
        ("/srv::idmap", Bind(source="/srv", target="/srv", options="idmap")),
    ],
)
def test_parse_bind(text: str, bind: Bind) -> None:
    assert parse_bind(text) == bind


@pytest.mark.parametrize("text", ["srv", "/a:b", "/a:/b:ro:x", "/a:/b:exec"])
def test_parse_bind_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_bind(text)


def test_bind_argument_escapes_colons_in_paths() -> None:
    assert Bind(source="/a:b", target="/c", options="idmap").argument() == "--bind=/a\\:b:/c:idmap"
    assert Bind(source="/a", target="/c", readonly=True).argument() == "--bind-ro=/a:/c"


def test_parse_env() -> None:
    assert parse_env("A=1=2") == ("A", "1=2")
    with pytest.raises(UsageError):
        parse_env("1A=x")
    with pytest.raises(UsageError):
        parse_env("NOVALUE")


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("nat", Network(mode=NetworkMode.NAT)),
        ("none", Network(mode=NetworkMode.NONE)),
        ("host", Network(mode=NetworkMode.HOST)),
        ("bridge:br0", Network(mode=NetworkMode.BRIDGE, bridge="br0")),
    ],
)
def test_parse_network(text: str, network: Network) -> None:
    assert parse_network(text) == network
    assert str(network) == text


@pytest.mark.parametrize("text", ["wifi", "bridge", "bridge:", "nat:x", "bridge:a/b", "bridge:" + "x" * 16])
def test_parse_network_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="Unknown network"):
        parse_network(text)
    assert not NetworkMode.HOST.private_netns()


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("8080:80", Port(host=8080, guest=80)),
        ("53:5353/udp", Port(host=53, guest=5353, protocol="udp")),
        ("127.0.0.1:8080:80", Port(host=8080, guest=80, host_ip=IPv4Address("127.0.0.1"))),
        ("192.0.2.7:53:53/udp", Port(host=53, guest=53, protocol="udp", host_ip=IPv4Address("192.0.2.7"))),
        ("0.0.0.0:8080:80", Port(host=8080, guest=80)),
    ],
)
def test_parse_port(text: str, port: Port) -> None:
    assert parse_port(text) == port
    assert parse_port(str(port)) == port


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("80", ""),
        ("0:80", "port 0 is out of range (1-65535)"),
        ("80:70000", "port 70000 is out of range (1-65535)"),
        ("99999:80", "port 99999 is out of range (1-65535)"),
        ("a:b", "'a' is no port number"),
        ("80:80/sctp", ""),
        (":80", "'' is no port number"),
        ("localhost:80:80", "'localhost' is no IPv4 address"),
        ("127.0.0.1::80", "'' is no port number"),
        ("224.0.0.1:80:80", "224.0.0.1 is no unicast address"),
        ("::1:80:80", "IPv4 only"),
        ("[::1]:80:80", "IPv4 only"),
        ("1.2.3.4:80", "'1.2.3.4' is no port number"),
    ],
)
def test_parse_port_rejects(text: str, why: str) -> None:
    with pytest.raises(UsageError, match="Invalid port forward") as raised:
        parse_port(text)
    assert why in raised.value.message
    assert raised.value.hint
