"""The op contract: a named, versioned transformation from input tables to one (or a declared family of) table(s).

An op declares a pydantic `Params` model (unknown keys rejected), the schema its main output must satisfy,
and `run(ctx, params)`, which reads inputs as DuckDB views and writes outputs through the context.
"""
from __future__ import annotations

import hashlib
import inspect
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from xwin_data.core.context import StageContext


class Params(BaseModel):
    """Base for op parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Op:
    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = Params
    version: ClassVar[str] = "1"
    schema: ClassVar[str | None] = None  # schema of the main output in schemas/, or None
    min_inputs: ClassVar[int] = 0
    max_inputs: ClassVar[int | None] = None
    summary: ClassVar[str] = ""
    # Where the op's work runs: "driver" (SQL in DuckDB on the build's machine), "batches" (row batches through an
    # executor) or "model" (units on replicas that each hold a model). Only the plan reads it: the executor is chosen
    # by the build, never by the op.
    runs: ClassVar[str] = "driver"

    def output_tables(self, table: str, params: Any) -> list[str]:
        """Names of the tables this stage writes; the first is the main one."""
        return [table]

    def output_schema(self, table: str, main: str, params: Any) -> str | None:
        """Schema for each output table (extra outputs default to the main schema)."""
        return self.schema

    def external_fingerprint(self, params: Any) -> dict[str, Any]:
        """What outside the catalog the output depends on (input files, model revisions)."""
        return {}

    def estimate(self, ctx_plan: Any, params: Any) -> dict[str, Any] | None:
        """Optional plan-time estimate (calls, tokens, dollars) shown by `xwin-data plan`."""
        return None

    def run(self, ctx: StageContext, params: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def code_version(cls) -> str:
        """Hash of the op's version tag and its module source: editing an op rebuilds what it made."""
        module = inspect.getmodule(cls)
        try:
            src = inspect.getsource(module) if module else ""
        except (OSError, TypeError):
            src = ""
        return hashlib.sha256(f"{cls.version}\n{src}".encode()).hexdigest()[:16]


_REGISTRY: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: make an op available to recipes under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"op {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_op(name: str) -> type[Op] | None:
    from xwin_data.ops import load_all

    load_all()
    return _REGISTRY.get(name)


def all_ops() -> dict[str, type[Op]]:
    from xwin_data.ops import load_all

    load_all()
    return dict(sorted(_REGISTRY.items()))
