"""The op contract: a named, versioned transformation from input tables to one (or a declared family of) table(s).

An op declares a pydantic `Params` model (unknown keys rejected), the schema its main output must satisfy, the
columns it needs and adds (so `plan` can check a recipe's wiring before any stage runs), and `run(ctx, params)`,
which reads inputs as DuckDB views and writes outputs through the context.
"""
from __future__ import annotations

from collections.abc import Set
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

# The registry lives in core (the engine looks ops up there); ops register through these names.
from xwin_data.core.registry import all_ops, get_op, register

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
    # Columns, checked by `plan` before any stage runs and against what the stage wrote after it runs.
    # needs: columns its input must have; an entry may be a tuple of alternatives, any one of which will do.
    # adds: the columns of its main output beside those it keeps; None when it does not say (then the output's
    #   columns are unknown and the stages reading it are not checked: an `sql` stage, for one).
    # keeps: its main output also carries every input column through (a filter, a cleaner).
    needs: ClassVar[Set[str | tuple[str, ...]]] = frozenset()
    adds: ClassVar[Set[str] | None] = None
    keeps: ClassVar[bool] = False

    def input_columns(self, params: Any) -> set[str | tuple[str, ...]]:
        """The columns this stage needs in its input (override when params name them)."""
        return set(self.needs)

    def output_columns(self, table: str, main: str, params: Any, input_columns: set[str] | None) -> set[str] | None:
        """The exact columns of each output table, or None when unknown (override for extra outputs)."""
        if table != main or self.adds is None:
            return None
        if not self.keeps:
            return set(self.adds)
        return None if input_columns is None else set(input_columns) | set(self.adds)
    # Params that hold SQL written in the recipe: name -> "select" (one SELECT statement) or "expression" (one
    # SQL expression, or a mapping of them). Their `${var}`s become typed literals, they are parsed before any
    # work, and the stage's DuckDB connection is confined to its inputs, the catalog's tables and named files.
    sql_params: ClassVar[dict[str, str]] = {}
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

    def output_unit(self, table: str, main: str, params: Any) -> str | None:
        """What one row of an output is (conversations, pieces, pairs, prompts…), where the op changes it; None
        keeps the first input's unit (or the schema's). The funnel counts rows in, out and dropped in it."""
        return None

    def external_fingerprint(self, params: Any) -> dict[str, Any]:
        """What outside the catalog the output depends on (input files, model revisions)."""
        return {}

    def runs_for(self, params: Any) -> str:
        """Where this stage's work runs with these params (`runs`, unless the params decide, as a judge's kind)."""
        return self.runs

    def resources(self, params: Any, declared: dict[str, Any]) -> dict[str, Any]:
        """What one replica of the stage needs on a cluster, and how many run: the stage's `resources:`, which a
        model stage may add to from its model spec (`policy.replicas`)."""
        return declared

    def estimate(self, ctx_plan: Any, params: Any) -> dict[str, Any] | None:
        """Optional plan-time estimate (calls, tokens, dollars) shown by `xwin-data plan`."""
        return None

    def preflight(self, params: Any) -> None:
        """Checks of the outside world a stage needs (a judge's key, a reachable endpoint), run for every stage
        that will run before the build does any work; raise an `XwinError` that says what to set."""

    def run(self, ctx: StageContext, params: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def code_version(cls) -> str:
        """Hash of the op's version tag and of the code it runs: its module and every in-package module that
        imports, transitively, without docstrings or comments (see `core.fingerprint.module_closure`)."""
        from xwin_data.core.fingerprint import code_fingerprint, stable_hash

        return stable_hash([cls.version, code_fingerprint(cls.__module__)], length=16)

