"""`runs` and `evals`: catalog tables that grow by one row per training run / evaluation.

Each append publishes a new version of the table through `Catalog.publish`: the previous version's Parquet parts
(hard-linked, never rewritten) plus one new part with the new row, so an append costs the same however many rows
came before, and the records are ordinary versioned Parquet tables: `xwin_data.connect()` and `xwin-data sql` see them like any other
table, and an older version stays readable. Appends from concurrent processes are serialised by a file lock;
they are staged outside `staging/` (a build clears that folder when it starts).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from xwin_data.core.catalog import Catalog, utcnow
from xwin_data.core.records import PublishEntry
from xwin_data.core.fingerprint import library_versions, stable_hash

RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("stage", pa.string()), ("kind", pa.string()), ("table_name", pa.string()),
    ("table_version", pa.int64()), ("table_fingerprint", pa.string()), ("rows_used", pa.int64()),
    ("model_in", pa.string()), ("output_dir", pa.string()), ("config", pa.string()),
    ("library_versions", pa.string()), ("metrics", pa.string()), ("seconds", pa.float64()),
    ("created_at", pa.timestamp("us")),
])

EVALS_SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("run_id", pa.string()), ("stage", pa.string()), ("model_path", pa.string()),
    ("reward_model", pa.string()), ("prompts_table", pa.string()), ("prompts_fingerprint", pa.string()),
    ("n_prompts", pa.int64()), ("samples_per_prompt", pa.int64()), ("best_of_1", pa.float64()),
    ("best_of_16", pa.float64()), ("best_of_64", pa.float64()), ("best_of", pa.string()),
    ("mean_tokens", pa.float64()), ("seconds", pa.float64()), ("created_at", pa.timestamp("us")),
])


def _same_columns(part: Path, schema: pa.Schema) -> bool:
    return pq.read_schema(part).remove_metadata().equals(schema.remove_metadata())


def _carry_parts(parts: list[Path], folder: Path) -> None:
    """The previous version's parts in the new version's folder as hard links: no row is read or written again
    (a copy only where the file system cannot link)."""
    for part in parts:
        try:
            os.link(part, folder / part.name)
        except OSError:
            shutil.copy2(part, folder / part.name)


def append_record(catalog: str | Path | Catalog, name: str, row: dict, schema: pa.Schema) -> None:
    """Publish `name` as a new version: the previous version's Parquet parts, unchanged, plus one new part holding
    `row` (columns outside the schema fail). Appending costs the same for the first row and the thousandth; only
    when the record schema has changed are the earlier rows rewritten once, into the new schema."""
    cat = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
    if not cat.exists():
        cat.init()
    extra = set(row) - set(schema.names)
    if extra:
        raise ValueError(f"{name}: unknown record field(s) {sorted(extra)}")
    new = pa.Table.from_pylist([{k: row.get(k) for k in schema.names}], schema=schema)
    with FileLock(str(cat.root / f".{name}.records.lock"), timeout=120):
        tv = cat.current(name)
        parts = sorted((cat.root / tv.path / "data").glob("*.parquet")) if tv is not None else []
        staged = cat.work_dir / "records" / f"{name}-{uuid.uuid4().hex[:8]}"
        (staged / "data").mkdir(parents=True)
        try:
            if not parts or _same_columns(parts[-1], schema):  # a version's parts share one schema
                _carry_parts(parts, staged / "data")
                rows = (tv.rows if tv is not None else 0) + new.num_rows
                pq.write_table(new, staged / "data" / f"part-{len(parts):05d}.parquet")
            else:  # an older record schema: rewrite the earlier rows once, into today's columns
                old = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")
                old = pa.table({f.name: old.column(f.name).cast(f.type) if f.name in old.column_names
                                else pa.nulls(old.num_rows, f.type) for f in schema})
                table = pa.concat_tables([old, new])
                rows = table.num_rows
                pq.write_table(table, staged / "data" / "part-00000.parquet")
            fingerprint = stable_hash([name, rows, row.get("run_id") or row.get("eval_id"), time.time()])
            cat.publish([PublishEntry(
                name=name, fingerprint=fingerprint, staged=staged, rows=rows,
                columns={f.name: str(f.type) for f in schema}, stage=name, op=f"record.{name}",
                stats={"rows": rows})], [])
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)


def table_identity(catalog: str | Path | Catalog, table: str) -> dict:
    """Name, version and fingerprint of a table's current version (what a run trained on)."""
    cat = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
    tv = cat.current(table)
    if tv is None:
        known = ", ".join(t.name for t in cat.current_tables()) or "none"
        raise ValueError(f"table {table!r} is not in catalog {cat.root} (tables: {known})")
    return {"table_name": tv.name, "table_version": tv.version, "table_fingerprint": tv.fingerprint}


def new_run_id(stage: str) -> str:
    return f"{stage}-{utcnow().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunRecord:
    """One row of `runs`: what a training run read (table version), started from, wrote and measured."""

    run_id: str
    stage: str
    kind: str
    table_name: str
    table_version: int
    table_fingerprint: str
    rows_used: int
    model_in: str
    output_dir: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    seconds: float
    library_versions: dict[str, str] = field(default_factory=library_versions)
    created_at: datetime = field(default_factory=utcnow)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("config", "metrics", "library_versions"):
            out[key] = json.dumps(out[key], default=str)
        return out


@dataclass
class EvalRecord:
    """One row of `evals`: best-of-n means of a policy's samples on a prompts table, under a reward model."""

    stage: str
    model_path: str
    reward_model: str
    prompts_table: str
    prompts_fingerprint: str
    n_prompts: int
    samples_per_prompt: int
    best_of: dict[int, float]
    mean_tokens: float
    seconds: float
    run_id: str | None = None
    eval_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: datetime = field(default_factory=utcnow)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.update({f"best_of_{n}": self.best_of.get(n) for n in (1, 16, 64)},
                   best_of=json.dumps({str(k): v for k, v in self.best_of.items()}))
        return out


def record_run(catalog, *, run_id: str, stage: str, kind: str, table: str, rows_used: int, model_in: str,
               output_dir: str, config: dict, metrics: dict, seconds: float) -> dict:
    record = RunRecord(run_id=run_id, stage=stage, kind=kind, **table_identity(catalog, table), rows_used=rows_used,
                       model_in=model_in, output_dir=str(output_dir), config=config, metrics=metrics, seconds=seconds)
    row = record.row()
    append_record(catalog, "runs", row, RUNS_SCHEMA)
    return row


def record_eval(catalog, record: EvalRecord) -> dict:
    row = record.row()
    append_record(catalog, "evals", row, EVALS_SCHEMA)
    return row
