"""`tools/setup` on a fresh Debian 12 root installs every tool that veneer and its tests run.

The host CI runs on keeps what earlier sessions installed by hand, so a missing install step (it happened:
`makepkg`) stays hidden there. Here a minbase Debian 12 is debootstrapped, `tools/setup` runs in it, and
then every command the code names is looked for, the Python tool chain runs (`tools/check --quick`), and the
tests that build images with each distribution's own tools run in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import remove_tree
from tests.integration.fresh_root import CHECKOUT, census, make_fresh_root, run_in_root

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def fresh_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh Debian 12 root on which `tools/setup` has run (a few minutes: it installs everything)."""
    base = tmp_path_factory.mktemp("fresh")
    root = base / "root"
    root.mkdir()
    try:
        make_fresh_root(root)
        setup = run_in_root(root, ["tools/setup"], check=False)
        assert setup.returncode == 0, f"tools/setup failed on a fresh root:\n{setup.stdout}\n{setup.stderr}"
        yield root
    finally:
        remove_tree(base)


def test_every_command_the_code_runs_is_installed(fresh_root: Path) -> None:
    needed = census([CHECKOUT / "src", CHECKOUT / "tests", CHECKOUT / "bench"])
    assert "makepkg" in needed and "systemd-nspawn" in needed  # the census sees what the tests run
    script = 'for c in "$@"; do command -v "$c" >/dev/null || echo "$c"; done'
    missing = run_in_root(fresh_root, ["sh", "-c", script, "sh", *sorted(needed)]).stdout.split()
    assert not missing, "tools/setup does not install: " + ", ".join(
        f"{c} (here: {needed[c]})" for c in missing
    )


def test_the_python_tool_chain_runs(fresh_root: Path) -> None:
    check = run_in_root(fresh_root, ["tools/check", "--quick"], check=False)
    assert check.returncode == 0, (
        f"tools/check --quick on a fresh root:\n{check.stdout[-3000:]}\n{check.stderr}"
    )


def test_images_build_from_each_distributions_tools(fresh_root: Path) -> None:
    # busybox, debootstrap, and pacstrap from a repository that makepkg (with its strip and bsdtar) and
    # repo-add make: the tools that other tools run, which the census cannot see.
    argv = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integration/test_bootstrap.py"]
    result = run_in_root(fresh_root, argv, check=False)
    assert result.returncode == 0, (
        f"test_bootstrap.py on a fresh root:\n{result.stdout[-5000:]}\n{result.stderr}"
    )
