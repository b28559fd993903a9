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
