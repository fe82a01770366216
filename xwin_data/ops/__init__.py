"""Stage operations by kind (readers, text, dedup, pairs, sets), registered by name with `@register`.

Every module under this package is imported on first use, so a new op only needs a new module. Modules
import heavy libraries (torch, transformers, vllm) inside `run`, never at import time, so planning stays fast.
"""
from __future__ import annotations

import importlib
import pkgutil

from xwin_data.ops.base import Op, Params, all_ops, get_op, register

_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf != "base" and not leaf.startswith("_"):
            importlib.import_module(info.name)


__all__ = ["Op", "Params", "register", "get_op", "all_ops", "load_all"]
