# SPDX-License-Identifier: Apache-2.0
"""The package tree: no import cycle anywhere, shared basics only in kep_common, no top-level
``boards`` package."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kep_common", "kep_train", "kep_hw")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _runtime_imports(path: Path, mods: dict) -> set[str]:
    """Project modules that ``path`` imports at run time (function bodies included, blocks under
    ``if TYPE_CHECKING:`` left out)."""
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for name in [node.module] + [f"{node.module}.{a.name}" for a in node.names]:
                if name in mods:
                    found.add(name)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in mods)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _runtime_imports(p, mods) - {m} for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_project():
    graph = _graph()
    assert len(graph) > 60
    assert _cycles(graph) == []


def test_shared_basics_live_in_kep_common():
    graph = _graph()
    for mod, deps in graph.items():
        if mod.startswith("kep_common"):
            assert all(d.startswith("kep_common") for d in deps), (mod, deps)
        if mod.startswith("kep_hw"):     # the hardware side takes its basics from kep_common
            assert not deps & {"kep_train.errors", "kep_train.fileio"}, mod
    assert not (ROOT / "kep_train" / "errors.py").exists()


def test_no_top_level_boards_package_is_installed():
    spec = importlib.util.find_spec("kep_hw.boards")
    assert spec is not None and Path(spec.submodule_search_locations[0]).name == "boards"
    installed = importlib.util.find_spec("boards")
    # only the repository folder itself (when the tests run from its root) can look like one
    assert installed is None or Path(installed.origin or
                                     installed.submodule_search_locations[0]).resolve() \
        .is_relative_to(ROOT)


@pytest.mark.parametrize("command", ["kep_train", "kep_hw"])
def test_version_comes_from_the_package_metadata(command, capsys):
    from importlib.metadata import version
    main = importlib.import_module(f"{command}.__main__").main
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{command.replace('_', '-')} " \
        f"{version('kep-toolkit')}"
