import pytest

from veneer.config.settings import (
    Bind,
    NetworkMode,
    parse_bind,
    parse_env,
    parse_image_name,
    parse_machine_name,
    parse_network,
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


def test_parse_network() -> None:
    assert parse_network("none") is NetworkMode.NONE
    assert not NetworkMode.HOST.private_netns()
    with pytest.raises(UsageError, match="Unknown network mode"):
        parse_network("wifi")
