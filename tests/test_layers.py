"""The package's layers, read from its source: nothing below the CLI imports it, core/ imports no domain package,
and no two modules import each other (directly or round a longer loop) when they load."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xwin_data"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, top_level_only: bool) -> list[tuple[str, int]]:
    """(imported xwin_data module, line) for each import that runs; TYPE_CHECKING blocks never run."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_one(sub)
                continue
            if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "xwin_data")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # the package's imports are absolute; a relative one is reported as such
                found.append(("." * node.level + (node.module or ""), node.lineno))
            elif (node.module or "").split(".")[0] == "xwin_data":
                found.append((node.module, node.lineno))
        visit(node)

    visit(tree)
    return found


def _sources() -> dict[str, tuple[Path, ast.AST]]:
    return {_module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in PACKAGE.rglob("*.py")}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_are_absolute() -> None:
    relative = [f"{path.relative_to(PACKAGE.parent)}:{line}" for module, (path, tree) in _sources().items()
                for target, line in _imports(tree, module, top_level_only=False) if target.startswith(".")]
    assert relative == []


def test_nothing_below_the_cli_imports_it() -> None:
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
                 for module, (path, tree) in _sources().items() if _area(module) != "cli"
                 for target, line in _imports(tree, module, top_level_only=False) if _area(target) == "cli"]
    assert offenders == []


def test_core_imports_no_domain_package() -> None:
    """core/ may use only core/ and the package root; ops are found through core/registry.py at run time."""
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
                 for module, (path, tree) in _sources().items() if _area(module) == "core"
                 for target, line in _imports(tree, module, top_level_only=False) if _area(target) not in ("core", "")]
    assert offenders == []


def test_no_import_cycles() -> None:
    sources = _sources()
    graph = nx.DiGraph()
    for module, (_, tree) in sources.items():
        graph.add_node(module)
        for target, _ in _imports(tree, module, top_level_only=True):
            # `from pkg import name` may name a submodule; the edge then goes to the module that exists
            graph.add_edge(module, target if target in sources else target.rsplit(".", 1)[0])
    # a package importing its own submodules (its __init__ re-exporting them) is not a loop between layers
    cycles = [c for c in nx.simple_cycles(graph) if len(c) > 1]
    assert cycles == []


@pytest.mark.parametrize("source, wanted", [
    ("from xwin_data.cli.train import run_script\n", ["xwin_data.cli.train"]),
    ("def f():\n    import xwin_data.cli\n", ["xwin_data.cli"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xwin_data.cli import app\n", []),
    ("from .train import run_script\n", [".train"]),
])
def test_the_import_reader_sees_lazy_imports_and_skips_type_checking(source: str, wanted: list[str]) -> None:
    assert [t for t, _ in _imports(ast.parse(source), "xwin_data.studies.x", top_level_only=False)] == wanted
