"""Ops by name. The engine looks ops up here and never imports them: the op packages are found on first lookup,
like plugins, so core/ stays below the domain packages.

The built-in ops live under `xwin_data.ops`; `XWIN_DATA_OPS` (comma-separated module or package names) adds a
project's own, so `xwin-data build` and `xwin-data ops` see them too.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from xwin_data.ops.base import Op

BUILTIN_OP_PACKAGES = ("xwin_data.ops",)
OPS_ENV = "XWIN_DATA_OPS"

_REGISTRY: dict[str, type[Op]] = {}
_loaded: set[str] = set()


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: make an op available to recipes under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"op {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def op_modules() -> list[str]:
    extra = [m.strip() for m in os.environ.get(OPS_ENV, "").split(",") if m.strip()]
    return [*BUILTIN_OP_PACKAGES, *extra]


def import_tree(name: str) -> None:
    """Import a module, and every module below it when it is a package (skipping `base` and `_private` ones)."""
    module = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{name}."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf != "base" and not leaf.startswith("_"):
            importlib.import_module(info.name)


def load_ops() -> None:
    """Import every op module once (modules import heavy libraries inside `run`, so this stays fast)."""
    for name in op_modules():
        if name not in _loaded:
            _loaded.add(name)
            import_tree(name)


def get_op(name: str) -> type[Op] | None:
    load_ops()
    return _REGISTRY.get(name)


def all_ops() -> dict[str, type[Op]]:
    load_ops()
    return dict(sorted(_REGISTRY.items()))
