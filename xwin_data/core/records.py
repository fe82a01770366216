"""What crosses from a build (or a record append) into the catalog, as typed values instead of loose dicts.

`PublishEntry` is one table version about to become current; `StageStats` is what its `stats` column holds for
a stage's main output; `ValidationRecord` is one row of the catalog's `validations` table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xwin_data.core.fingerprint import library_versions


@dataclass(frozen=True)
class TableInput:
    """An input a table was made from: its name and the fingerprint of the version read."""

    name: str
    fingerprint: str


@dataclass
class StageStats:
    """A stage's numbers: rows read, drops per reason, the `--set` overrides of the build, and what the op itself
    counted (`ctx.stats`); stored flat, the op's keys beside the engine's."""

    rows_in: int | None = None
    drops_by_reason: dict[str, int] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    op_stats: dict[str, Any] = field(default_factory=dict)
    unit: str = "rows"
    dropped: int = 0
    dropped_other_units: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "rows_in": self.rows_in, "dropped": self.dropped,
                "dropped_other_units": self.dropped_other_units, "drops_by_reason": self.drops_by_reason,
                "overrides": self.overrides, **self.op_stats}


@dataclass
class PublishEntry:
    """One staged table folder (with `data/` and maybe `drops/`) and everything its catalog row records."""

    name: str
    fingerprint: str
    staged: Path
    rows: int
    columns: dict[str, str]
    stage: str
    op: str
    n_drops: int = 0
    schema_name: str | None = None
    build_id: str | None = None
    recipe: str | None = None
    recipe_path: str | None = None
    params: dict[str, Any] | None = None
    inputs: list[TableInput] | None = None
    library_versions: dict[str, str] = field(default_factory=library_versions)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def inputs_json(self) -> list[dict] | None:
        return None if self.inputs is None else [asdict(i) for i in self.inputs]


@dataclass
class ValidationRecord:
    """The outcome of validating one staged table against its schema, as the catalog stores it."""

    build_id: str
    table_name: str
    schema_name: str
    fingerprint: str
    success: bool
    results: list[dict[str, Any]]
