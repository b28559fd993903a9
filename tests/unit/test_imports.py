"""The import graph of src/veneer: no cycle, and no import hidden inside a function to dodge one."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import veneer

SOURCE = Path(veneer.__file__).parent

# Imports inside functions, allowed only to keep start-up cheap: a module is loaded when the one call that
# needs it runs. (importer, imported); "*" for any module. Nothing else may import inside a function.
LAZY_IMPORTS = {
    # The CLI loads the library modules of a command when that command runs, not for every command.
    ("veneer.cli", "*"),
    ("veneer.cli.image", "*"),
    ("veneer.cli.machine", "*"),
    ("veneer.cli.network", "*"),
    ("veneer.cli.rebase", "*"),
    ("veneer.cli.running", "*"),
    ("veneer.cli.completion", "*"),
    ("veneer.cli.copy", "*"),
    ("veneer.cli.snapshot", "*"),
    ("veneer.cli.stats", "*"),
    ("veneer.cli.hosts", "*"),
    ("veneer.cli.args", "*"),
    ("veneer.cli.output", "*"),
    # Each distribution's module is loaded when a tree of that distribution is built (mkosi's registry).
    ("veneer.images.distros", "veneer.images.distros.busybox"),
    ("veneer.images.distros", "veneer.images.distros.debian"),
    ("veneer.images.distros", "veneer.images.distros.arch"),
    # Tar and the compressors: only `clone` of all the lifecycle verbs copies a tree.
    ("veneer.machines.lifecycle", "veneer.images.transfer"),
    ("veneer.machines.lifecycle", "veneer.machines.snapshots"),  # for `clone --from-snapshot`, as above
    # An enabled machine's unit (systemd hosts only) is rewritten by `set` alone; units.py loads shutil.
    ("veneer.machines.lifecycle", "veneer.machines.units"),
    # Listings load the cleanup after a dead machine (and the network, cgroups and mounts under it) only
    # when a machine needs it, and the rebase journal only for a machine that was rebased.
    ("veneer.machines.inspect", "veneer.machines.recovery"),
    ("veneer.machines.inspect", "veneer.rebase.journal"),
    ("veneer.machines.inspect", "veneer.images.store"),
    ("veneer.machines.inspect", "veneer.machines.snapshots"),  # only for a machine that has snapshots
    ("veneer.machines.restoring", "veneer.rebase"),  # to finish a restore, not to ask if one was cut short
    ("veneer.machines.restoring", "veneer.rebase.journal"),
    ("veneer.machines.sweep", "veneer.machines.recovery"),
    ("veneer.machines.sweep", "veneer.runtime.cgroups"),
    ("veneer.machines.sweep", "veneer.runtime.supervisor"),
    # The nat machinery (rtnetlink, nftables, dnsmasq) where a nat machine needs it, not in every run; the
    # rebase journal where recovery finishes a rebase.
    ("veneer.machines.netsetup", "veneer.network"),
    ("veneer.machines.netsetup", "veneer.network.dns"),
    ("veneer.machines.netsetup", "veneer.network.nat"),
    ("veneer.machines.netsetup", "veneer.network.netlink"),
    ("veneer.network.links", "veneer.network.netlink"),
    ("veneer.network.ipam", "veneer.network.netlink"),
    ("veneer.machines.recovery", "veneer.rebase"),
    ("veneer.machines.recovery", "veneer.rebase.journal"),
    # Reading the store (the listings) loads no subprocess: only removing a tree runs commands, and only a
    # sweep that finds a dead command's leftovers waits for them.
    ("veneer.util.fs", "veneer.util.proc"),
    ("veneer.util.staging", "veneer.util.proc"),
    # A machine's accounts are read through ctypes (openat2) and its init is recognized when it boots; a
    # listing does neither.
    ("veneer.machines.guest", "veneer.util.inroot"),
    ("veneer.machines.guest", "veneer.images.distros.busybox"),
    # start and stop share a module, not their machinery: a start loads the launch (nspawn's command line,
    # the network, an application image's run config), a stop the exec into the machine.
    ("veneer.machines.boot", "veneer.machines.launch"),
    ("veneer.machines.boot", "veneer.machines.netsetup"),
    ("veneer.machines.boot", "veneer.machines.app"),
    ("veneer.machines.boot", "veneer.images.runconfig"),
    ("veneer.machines.boot", "veneer.machines.inside"),
    # The supervisor of this host, one of two (as the distributions' registry).
    ("veneer.runtime.supervisor", "veneer.runtime.systemd_unit"),
    ("veneer.runtime.supervisor", "veneer.runtime.keeper"),
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = ["veneer", *path.relative_to(SOURCE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imported(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The veneer modules an import statement loads (`from pkg import mod` loads pkg.mod)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.module is None or node.level:
        names = []
    else:
        names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    found = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("veneer"):
            found.add(name)
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(
    tree: ast.AST, *, in_function: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it sits in a function; `if TYPE_CHECKING:` blocks left out."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _imports(node, in_function=inner)


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Module-level import edges, and the (module, line, imported) of imports inside functions."""
    edges: dict[str, set[str]] = {}
    in_functions = []
    for module, path in MODULES.items():
        edges[module] = set()
        for node, in_function in _imports(ast.parse(path.read_text(), path)):
            for imported in _imported(node) - {module}:
                if in_function:
                    in_functions.append((module, node.lineno, imported))
                else:
                    edges[module].add(imported)
    return edges, in_functions


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(edges.get(module, ())):
            found = visit(imported)
            if found:
                return found
        path.pop()
        done.add(module)
        return None

    for module in sorted(edges):
        found = visit(module)
        if found:
            return found
    return None


def test_the_walker_sees_a_cycle_and_imports_in_functions(tmp_path: Path) -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    source = (
        "import veneer.errors\ndef f():\n    from veneer.util import fs\nif TYPE_CHECKING:\n    import os\n"
    )
    found = [(sorted(_imported(node)), inner) for node, inner in _imports(ast.parse(source))]
    assert found == [(["veneer.errors"], False), (["veneer.util", "veneer.util.fs"], True)]


def test_the_graph_covers_the_modules_that_matter() -> None:
    edges, _ = _graph()
    assert {"veneer.machines.recovery", "veneer.machines.boot", "veneer.cli"} <= edges.keys()
    assert "veneer.machines.recovery" in edges["veneer.machines.boot"]


def test_no_import_cycle() -> None:
    edges, _ = _graph()
    assert _cycle(edges) is None


def test_no_import_inside_a_function_but_the_lazy_ones() -> None:
    _, in_functions = _graph()
    unexpected = [
        f"{module}:{line} imports {imported}"
        for module, line, imported in in_functions
        if (module, imported) not in LAZY_IMPORTS and (module, "*") not in LAZY_IMPORTS
    ]
    assert unexpected == []


def test_recovery_is_below_the_verbs_and_the_verbs_do_not_import_each_other() -> None:
    edges, _ = _graph()

    def imports(module: str) -> set[str]:
        return {m.removeprefix("veneer.machines.") for m in edges[f"veneer.machines.{module}"]}

    verbs = {"lifecycle", "run", "boot", "rebase", "sweep"}
    assert imports("recovery") & verbs == set()
    assert {"recovery"} <= imports("lifecycle") & imports("boot") & imports("rebase")
    assert "recovery" not in imports("inspect") | imports("sweep")  # loaded only to recover something
    assert imports("lifecycle") & {"boot", "rebase"} == set()
    assert imports("boot") & {"lifecycle", "rebase", "run"} == set()
    # A rebase stops a running machine and starts it again afterwards: it builds on boot, never the reverse.
    assert imports("rebase") & {"lifecycle", "run"} == set()


def test_images_never_import_the_machine_verbs() -> None:
    # Images build on the uid registry machines use too (`machines.uids`) and on moving a tree between id
    # ranges (`machines.idshift`: mstack layers), never on what machines do.
    edges, in_functions = _graph()
    imports = [(m, i) for m, targets in edges.items() for i in targets] + [
        (m, i) for m, _, i in in_functions
    ]
    allowed = {"veneer.machines", "veneer.machines.uids", "veneer.machines.state", "veneer.machines.idshift"}
    upward = [
        (m, i)
        for m, i in imports
        if m.startswith("veneer.images") and i.startswith("veneer.machines") and i not in allowed
    ]
    assert upward == []
