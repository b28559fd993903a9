"""nft scripts applied through libnftables: one transaction, all or nothing, nft's own message on refusal."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from veneer.errors import NetworkError
from veneer.network import libnft, nat
from veneer.util import proc

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def table() -> Iterator[str]:
    name = f"veneer_libnft_{os.getpid()}"
    try:
        yield name
    finally:
        nat.remove_table(name)


def _exists(table: str) -> bool:
    return proc.run(["nft", "list", "table", "ip", table], check=False, capture=True).returncode == 0


def test_a_script_is_applied_whole(table: str) -> None:
    libnft.run_script(f"add table ip {table}\nadd chain ip {table} c\nadd rule ip {table} c counter\n")
    listed = proc.run(["nft", "list", "table", "ip", table], capture=True).stdout
    assert "chain c" in listed and "counter" in listed
    nat.remove_table(table)
    assert not _exists(table)
    nat.remove_table(table)  # idempotent


def test_a_refused_script_changes_nothing_and_says_why(table: str) -> None:
    with pytest.raises(NetworkError) as e:
        nat.apply_ruleset(
            f"add table ip {table}\nadd chain ip {table} c\nadd rule ip {table} c no-such-thing\n"
        )
    assert "syntax error" in e.value.message and e.value.hint
    assert not _exists(table)  # the table of the script's first line was not made either


def test_each_script_is_judged_alone(table: str) -> None:
    # One nft context serves the process: a refusal's message must not linger into the next script's.
    bad = f"add table ip {table}\nadd chain ip {table} c\nadd rule ip {table} c no-such-thing\n"
    with pytest.raises(libnft.NftError) as first:
        libnft.run_script(bad)
    libnft.run_script(f"add table ip {table}\n")
    assert _exists(table)
    with pytest.raises(libnft.NftError) as second:
        libnft.run_script(f"add rule ip {table} no-such-chain counter\n")
    assert "syntax error" in str(first.value) and "syntax error" not in str(second.value)
    assert str(second.value).startswith("Error: Could not process rule") and "no-such-chain" in str(
        second.value
    )


def test_the_kept_context_leaves_no_fd_to_commands_veneer_execs(table: str) -> None:
    # The process's one context keeps a netlink socket open (see libnft's docstring); nothing inherits it.
    # (subprocess closes it for its children; an exec in veneer's own place, `veneer _boot`, would not)
    libnft.run_script(f"add table ip {table}\n")
    for fd in map(int, os.listdir("/proc/self/fd")):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            assert not (target.startswith("socket:") and os.get_inheritable(fd)), (fd, target)
