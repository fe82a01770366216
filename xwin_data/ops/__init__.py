"""Stage operations, one module per family, registered by name with `@register`.

Every module in this package is imported on first use, so a new family only needs a new module. Modules
import heavy libraries (torch, transformers, vllm) inside `run`, never at import time, so planning stays fast.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Op, Params, all_ops, get_op, register

_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["Op", "Params", "register", "get_op", "all_ops", "load_all"]
