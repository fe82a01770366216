"""Stage operations by kind (readers, text, dedup, pairs, sets), registered by name with `@register`.

Every module under this package is imported on first lookup (see `core/registry.py`), so a new op only needs a
new module. Modules import heavy libraries (torch, transformers, vllm) inside `run`, never at import time, so
planning stays fast.
"""
from __future__ import annotations

from xwin_data.core.registry import load_ops as load_all
from xwin_data.ops.base import Op, Params, all_ops, get_op, register

__all__ = ["Op", "Params", "register", "get_op", "all_ops", "load_all"]
