"""The command line as a newcomer meets it, through the real `veneer` command in a store of its own."""

from __future__ import annotations

import pytest

from tests.integration.helpers import Store

pytestmark = pytest.mark.root


def test_a_failed_debootstrap_says_why(store: Store) -> None:
    # debootstrap refuses an unknown suite before it fetches anything, and says so on its stdout.
    result = store.veneer("image", "create", "x", "--debootstrap", "nosuchsuite", ok=(1,))
    assert "No such script" in result.stderr and "nosuchsuite" in result.stderr
    assert not any((store.root / ".staging").iterdir())


def test_console_of_a_stopped_machine_says_only_that_it_is_not_running(busybox: Store) -> None:
    busybox.veneer("create", "m1", "--from", "bb")
    result = busybox.veneer("console", "m1", ok=(1,))
    assert result.stderr.splitlines()[0] == "veneer: Machine 'm1' is not running"
    assert "Connected" not in result.stderr


def test_image_rm_takes_several_names(busybox: Store) -> None:
    busybox.veneer("image", "create", "b2", "--busybox")
    busybox.veneer("image", "create", "b3", "--busybox")
    result = busybox.veneer("image", "rm", "bb", "b2", "b3")
    assert result.stdout.splitlines() == [f"Removed image '{name}'." for name in ("bb", "b2", "b3")]
    assert busybox.veneer("image", "list", "--json").stdout.strip() == "[]"
