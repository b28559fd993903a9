from pathlib import Path

import pytest

from veneer.config.layout import DEFAULT_ROOT, Layout


def test_cgroup_of_default_store_and_of_others() -> None:
    default = Layout(root=DEFAULT_ROOT, run=Path("/run/veneer"))
    assert default.cgroup("web") == "veneer/web"
    one = Layout(root=Path("/srv/a"), run=Path("/run/a")).cgroup("web")
    two = Layout(root=Path("/srv/b"), run=Path("/run/b")).cgroup("web")
    assert one != two and one.endswith("/web") and one.startswith("veneer-")


def test_paths_stay_under_their_roots() -> None:
    layout = Layout(root=Path("/srv/v"), run=Path("/run/v"))
    assert layout.machine_upper("m") == Path("/srv/v/machines/m/upper")
    assert layout.console_socket("m") == Path("/run/v/machines/m.console")
    assert layout.layer_tree("abc") == Path("/srv/v/layers/abc/tree")


def test_every_store_shares_the_hosts_uid_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VENEER_UIDS", raising=False)
    one, two = Layout.from_env(Path("/srv/a")), Layout.from_env(Path("/srv/b"))
    assert one.uid_registry == two.uid_registry == Path("/var/lib/veneer-uids/ranges.json")
    monkeypatch.setenv("VENEER_UIDS", "/tmp/isolated")
    assert Layout.from_env(Path("/srv/a")).uid_registry == Path("/tmp/isolated/ranges.json")
