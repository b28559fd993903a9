"""A private veneer store per test, driven through the real command line, and cleaned up afterwards."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from veneer.util import proc

SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Store:
    """A veneer state root and runtime root of the test's own."""

    root: Path
    run: Path

    def env(self) -> dict[str, str]:
        return {"VENEER_ROOT": str(self.root), "VENEER_RUN": str(self.run), "PYTHONPATH": str(SRC)}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "veneer", *args]

    def veneer(
        self,
        *args: str,
        ok: Sequence[int] = (0,),
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> proc.Completed:
        """Run the CLI to completion; fail the test unless its exit status is in `ok`."""
        result = proc.run(
            self.argv(*args), capture=True, check=False, input=input, env={**self.env(), **(env or {})}
        )
        assert result.returncode in ok, (
            f"veneer {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        return result

    def spawn(self, *args: str) -> proc.Process:
        """Start the CLI in the background (the caller waits for or kills it)."""
        return proc.spawn(self.argv(*args), env=self.env())

    def upper(self, machine: str) -> Path:
        return self.root / "machines" / machine / "upper"

    def layer_tree(self, image: str) -> Path:
        import json

        record = json.loads((self.root / "images" / image / "image.json").read_text())
        return self.root / "layers" / str(record["layers"][0]["id"]) / "tree"

    def machine_json(self, machine: str) -> dict[str, object]:
        import json

        data: dict[str, object] = json.loads((self.root / "machines" / machine / "machine.json").read_text())
        return data


def mounts_under(*paths: Path) -> list[str]:
    """Mount points below any of `paths`, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == str(p) or point.startswith(f"{p}/") for p in paths):
            found.append(point)
    return sorted(found, key=len, reverse=True)


@contextlib.contextmanager
def private_store(tmp: Path) -> Iterator[Store]:
    """A store under `tmp`; on the way out its mounts are detached and its files removed."""
    store = Store(root=tmp / "state", run=tmp / "run")
    try:
        yield store
    finally:
        for point in mounts_under(store.root, store.run):
            proc.run(["umount", "--lazy", point], check=False)
        for path in (store.root, store.run):
            proc.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
