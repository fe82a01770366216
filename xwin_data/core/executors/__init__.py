"""Executors: where a stage's batches run (`local`: this process and forked workers; `ray`: a Ray cluster)."""
from __future__ import annotations

from xwin_data.core.executors.base import Executor, Model, Resources, Unit

EXECUTORS = ("local", "ray")


def make_executor(name: str = "local", address: str | None = None) -> Executor:
    """The executor a build runs its stages on; Ray is imported only when the `ray` executor runs a stage."""
    if name == "local":
        from xwin_data.core.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from xwin_data.core.executors.ray import RayExecutor

        return RayExecutor(address)
    raise ValueError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")


__all__ = ["EXECUTORS", "Executor", "Model", "Resources", "Unit", "make_executor"]
