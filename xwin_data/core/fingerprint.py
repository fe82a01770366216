"""Stable hashes: of JSON-able configs, of files and folders outside the catalog, of the code an op runs, and of
library versions."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from xwin_data.core.home import xwin_home

SMALL_FILE = 64 * 1024 * 1024  # files above this are identified by size and mtime, not content


def stable_hash(obj: Any, length: int = 32) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    if size > SMALL_FILE:
        return f"size={size},mtime={mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_fingerprint(path: str | Path) -> str:
    """Content hash of a file, or of every file under a folder (large files by size and mtime)."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return _file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)
    if p.is_dir():
        parts = []
        for f in sorted(x for x in p.rglob("*") if x.is_file() and ".cache" not in x.relative_to(p).parts):
            st = f.stat()
            parts.append((str(f.relative_to(p)), _file_digest(str(f.resolve()), st.st_size, st.st_mtime_ns)))
        return stable_hash(parts)
    return f"missing:{p}"


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of the libraries that shaped a table: always the core, and the model stack where loaded."""
    from importlib import metadata

    names = ["xwin-data", "duckdb", "pyarrow", "great-expectations", *extra]
    optional = ["torch", "transformers", "trl", "vllm", "openai", "tokenizers", "datasketch", "py3langid", "ftfy"]
    names += [n for n in optional if n.replace("-", "_") in sys.modules]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


# ------------------------------------------------------------------------------------------- code fingerprints
# A table depends on the code that made it: the op's module and every in-package module it imports, transitively
# (function-level imports included, `if TYPE_CHECKING:` blocks excluded). Each module is hashed as its syntax tree
# without docstrings, so comments, docstrings and layout never rebuild anything, and any change to what runs does.

PACKAGE = "xwin_data"


def _package_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _module_file(name: str, root: Path) -> Path | None:
    """Source file of in-package module `name` (a package resolves to its __init__.py), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> tuple[set[str], set[str]]:
    """Dotted names this module may import at run time, each `import a.b` and `from a import b` (as a.b and a):
    (those at module level, all of them including those inside functions)."""
    package = module if is_package else module.rpartition(".")[0]
    top: set[str] = set()
    every: set[str] = set()

    def visit(node: ast.AST, at_top: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, at_top)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        every.update(names)
        if at_top:
            top.update(names)
        inner = at_top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return top, every


SUMMARY_FORMAT = 1  # of the summaries kept on disk; part of their names


@lru_cache(maxsize=1024)
def _module_summary(path: str, size: int, mtime_ns: int, module: str) -> tuple[str, frozenset[str], frozenset[str]]:
    """(hash of the docstring-free syntax tree, names imported at module level, all names imported) of one file.

    Parsing is most of the cost (~6 ms a module, ~0.3 CPU-s a build), so the summary is also kept on disk under
    `XWIN_DATA_HOME/derived/code/`, named by a hash of the file's bytes and the module's name: any change to the
    file names another entry."""
    source_bytes = Path(path).read_bytes()
    key = hashlib.sha256(source_bytes + b"\0" + module.encode() + b"\0" + str(SUMMARY_FORMAT).encode()).hexdigest()
    stored = _stored_summary(key)
    if stored is not None:
        return stored
    tree = ast.parse(source_bytes.decode("utf-8"), filename=path)
    top, every = _imported_names(tree, module, Path(path).name == "__init__.py")
    digest = hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest()
    summary = digest, frozenset(top), frozenset(every)
    _store_summary(key, summary)
    return summary


def _summary_path(key: str) -> Path:
    return xwin_home() / "derived" / "code" / key[:2] / f"{key}.json"


def _stored_summary(key: str) -> tuple[str, frozenset[str], frozenset[str]] | None:
    try:
        data = json.loads(_summary_path(key).read_text())
        return data["digest"], frozenset(data["top"]), frozenset(data["every"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store_summary(key: str, summary: tuple[str, frozenset[str], frozenset[str]]) -> None:
    digest, top, every = summary
    path = _summary_path(key)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"digest": digest, "top": sorted(top), "every": sorted(every)}))
        os.replace(tmp, path)  # whole or absent
    except OSError:  # a folder that cannot be written: parsed again next time
        try:
            tmp.unlink()
        except OSError:
            pass


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_closure(module: str, root: Path | None = None) -> dict[str, str]:
    """{module: code hash} for `module` and every in-package module it can run: its imports, transitively,
    function-level ones included, and the `__init__` of each package on the way. A package reached only as the
    parent of an imported module contributes its module-level imports only, as Python runs nothing else of it."""
    root = root or _package_root()
    hashes: dict[str, str] = {}
    followed: dict[str, bool] = {}  # module -> whether its function-level imports were followed
    todo = [(module, True)]
    while todo:
        name, full = todo.pop()
        if not (name == PACKAGE or name.startswith(PACKAGE + ".")) or followed.get(name) in (True, full):
            continue
        followed[name] = full
        path = _module_file(name, root)
        if path is None:  # `from pkg.mod import func`: the name `pkg.mod.func` is not a module
            continue
        st = path.stat()
        digest, top, every = _module_summary(str(path), st.st_size, st.st_mtime_ns, name)
        hashes[name] = digest
        todo.extend((parent, False) for parent in _parents(name))
        todo.extend((imported, True) for imported in (every if full else top))
    return dict(sorted(hashes.items()))


def code_fingerprint(module: str, root: Path | None = None, length: int = 16) -> str:
    """One hash of `module_closure(module)`: it changes exactly when code the module runs changes."""
    return stable_hash(module_closure(module, root), length=length)
