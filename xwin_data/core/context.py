"""What a running op sees: its inputs as DuckDB views, writers for its outputs and drops, progress, scratch space."""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress

from xwin_data.core.progress import console, track

DROPS_SCHEMA = pa.schema([
    ("stage", pa.string()), ("table_name", pa.string()), ("source_id", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("build_id", pa.string()), ("unit", pa.string()),
])
DETAIL_MAX = 2000
# How a stage's query is written to Parquet. Row groups of at most ~16 MB: wide rows (conversations) then make
# several groups, which DuckDB writes in parallel and later scans in parallel; narrow tables keep 122,880 rows
# per group. No dictionary pages for strings: the texts these tables hold are nearly all distinct, so building
# a dictionary for each column chunk only to discard it is wasted work, and zstd already packs repeated
# short values such as roles.
PARQUET_COPY_OPTIONS = ("FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880, ROW_GROUP_SIZE_BYTES '16MB', "
                        "STRING_DICTIONARY_PAGE_SIZE_LIMIT 1")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


@dataclass
class InputTable:
    name: str  # the name the stage used in `inputs`
    glob: str  # parquet glob of the current version
    fingerprint: str
    version: int
    rows: int


@dataclass
class StageContext:
    stage_id: str
    table: str  # main output table name
    outputs: list[str]
    inputs: list[InputTable]
    staging: Path
    work_dir: Path  # durable across killed builds: keyed by the stage fingerprint
    cache_dir: Path  # catalog-wide request caches
    tmp_dir: Path
    build_id: str
    fingerprint: str
    progress: Progress | None = None
    memory_limit: str = "4GB"
    threads: int | None = None
    executor: Any = None  # where batch work runs (xwin_data.core.executors); local when not given
    resources: dict[str, Any] = field(default_factory=dict)  # the stage's `resources:` (cpus, gpus, replicas)
    stats: dict[str, Any] = field(default_factory=dict)
    _con: duckdb.DuckDBPyConnection | None = None
    passed_through: dict[str, InputTable] = field(default_factory=dict)  # output -> the input published as it is
    # output -> (the input whose rows it holds, unchanged, and how many of them were written so)
    rows_copied_from: dict[str, tuple[InputTable, int]] = field(default_factory=dict)
    allowed: tuple[list[str], list[str]] | None = None  # (folders, files) the connection is confined to, if set
    _rows: dict[str, int] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)  # output -> what one of its rows is (conversations, pairs…)
    rows_in: dict[str, int] = field(default_factory=dict)  # output -> records that went in, counted in its unit
    _drop_buffer: dict[str, list[dict]] = field(default_factory=dict)
    _drop_parts: dict[str, int] = field(default_factory=dict)
    _n_drops: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.executor is None:
            from xwin_data.core.executors import make_executor

            self.executor = make_executor("local")

    # ------------------------------------------------------------------------------------------------ inputs
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with each input as a view (by its name, and the first as `input`)."""
        if self._con is None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(":memory:", config={"memory_limit": self.memory_limit,
                                                     "temp_directory": str(self.tmp_dir)})
            if self.threads:
                con.execute(f"SET threads = {int(self.threads)}")
            con.execute("SET preserve_insertion_order = true")
            for i, inp in enumerate(self.inputs):
                con.execute(f"CREATE VIEW {quote_ident(inp.name)} AS SELECT * FROM read_parquet({sql_str(inp.glob)})")
                if i == 0 and inp.name != "input":
                    con.execute(f"CREATE VIEW input AS SELECT * FROM {quote_ident(inp.name)}")
            if self.allowed is not None:
                from xwin_data.core.sql_guard import confine

                confine(con, dirs=self.allowed[0], files=self.allowed[1])
            self._con = con
        return self._con

    def input(self, index: int = 0) -> str:
        """The quoted view name of an input, for use in SQL."""
        return quote_ident(self.inputs[index].name)

    def input_rows(self, index: int = 0) -> int:
        return self.inputs[index].rows

    # ------------------------------------------------------------------------------------------------ outputs
    def _out_dir(self, table: str | None) -> Path:
        table = table or self.table
        if table not in self.outputs:
            raise ValueError(f"stage {self.stage_id} does not declare output {table!r} (declared: {self.outputs})")
        path = self.staging / table / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def staged_dir(self, table: str | None = None) -> Path:
        """The folder an output is staged in (its `data/` files, and `drops/` for the main output) until publish."""
        self._out_dir(table)
        return self.staging / (table or self.table)

    def output_glob(self, table: str | None = None) -> str:
        """The Parquet files written so far to an output (e.g. to read a finished output back in a later query)."""
        return str(self._out_dir(table) / "*.parquet")

    def rows_written(self, table: str | None = None) -> int:
        return self._rows.get(table or self.table, 0)

    def write_sql(self, sql: str, table: str | None = None, *, description: str | None = None,
                  total_rows: int | None = None) -> int:
        """Stream a query's result into the output table's Parquet (bounded memory), with a progress bar."""
        out = self._out_dir(table) / f"part-{len(list(self._out_dir(table).glob('*.parquet'))):05d}.parquet"
        copy = f"COPY (\n{sql}\n) TO {sql_str(str(out))} ({PARQUET_COPY_OPTIONS})"
        total = total_rows if total_rows is not None else (self.inputs[0].rows if self.inputs else None)
        n = self._run_with_progress(copy, description or f"{self.stage_id} → {table or self.table}", total)
        key = table or self.table
        self._rows[key] = self._rows.get(key, 0) + n
        return n

    def _run_with_progress(self, sql: str, description: str, total: int | None) -> int:
        con = self.con
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["rows"] = con.execute(sql).fetchone()[0]
            except BaseException as err:  # re-raised in the caller's thread
                result["error"] = err

        thread = threading.Thread(target=work, daemon=True)
        with track(self.progress, description, total or 100, unit="rows" if total else "%") as bar:
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
                try:
                    pct = con.query_progress()
                except duckdb.Error:
                    pct = -1
                if pct is not None and pct >= 0:
                    bar.update(completed=(pct / 100.0) * (total or 100))
            bar.update(completed=total or 100)
        if "error" in result:
            raise result["error"]
        return int(result["rows"])

    def pass_through(self, index: int = 0, table: str | None = None) -> int:
        """Publish an input's Parquet files unchanged as an output (a stage switched off): hard links where the
        filesystem allows (catalog files are never rewritten in place), copies otherwise. The output is still
        validated, unless its files are those of an input validated against the same schema in this build."""
        import glob
        import os
        import shutil

        out_dir = self._out_dir(table)
        for i, src in enumerate(sorted(glob.glob(self.inputs[index].glob))):
            dst = out_dir / f"part-{i:05d}.parquet"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        key = table or self.table
        self._rows[key] = self._rows.get(key, 0) + self.inputs[index].rows
        self.passed_through[key] = self.inputs[index]
        return self.inputs[index].rows

    def rows_are_copies(self, table: str | None = None, index: int = 0) -> None:
        """Declare that every row written so far to an output is a row of input `index`, unchanged (a subset of
        it, in any order): validation then keeps that input's row checks where its contract allows (see
        `xwin_data.core.engine._validate`). Only an op's own writes may be declared so, never a recipe's SQL."""
        key = table or self.table
        self.rows_copied_from[key] = (self.inputs[index], self.rows_written(key))

    def part_paths(self, table: str | None = None) -> Iterator[Path]:
        """Fresh Parquet file paths in an output's folder, in the order readers take them, for files that other
        processes write; count their rows with `add_rows`."""
        folder = self._out_dir(table)
        for i in itertools.count(len(list(folder.glob("*.parquet")))):
            yield folder / f"part-{i:05d}.parquet"

    def add_rows(self, n: int, table: str | None = None) -> None:
        key = table or self.table
        self._rows[key] = self._rows.get(key, 0) + n

    def writer(self, schema: pa.Schema, table: str | None = None) -> "BatchWriter":
        """A Parquet writer for rows that Python produces (model calls, parsing)."""
        return BatchWriter(self, table or self.table, schema)

    def map_batches(self, sql: str, fn: Callable[[pa.RecordBatch], pa.Table | pa.RecordBatch | None],
                    schema: pa.Schema, table: str | None = None, *, batch_size: int = 20_000,
                    description: str | None = None) -> int:
        """Stream `sql` in Arrow batches through `fn` into an output table; for work SQL cannot do."""
        total = self.con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
        reader = self.con.cursor().sql(sql).to_arrow_reader(batch_size)
        with self.writer(schema, table) as w, track(self.progress, description or f"{self.stage_id}", total) as bar:
            for batch in reader:
                out = fn(batch)
                if out is not None and out.num_rows:
                    w.write(out)
                bar.advance(batch.num_rows)
        return self.rows_written(table)

    # ------------------------------------------------------------------------------------------------ drops
    # Drops are filed under the output table that lost the record (a stage with several outputs files each drop
    # under its own table), and say what was dropped (`unit`): by default a row of that table, but e.g. a turn cut
    # from a conversation that is kept, or a scored response a pair table could not use.

    def unit_of(self, table: str | None = None) -> str:
        return self.units.get(table or self.table, "rows")

    def _drop_target(self, table: str | None) -> str:
        table = table or self.table
        if table not in self.outputs:
            raise ValueError(f"stage {self.stage_id} has no output {table!r} to file a drop under "
                             f"(outputs: {', '.join(self.outputs)})")
        return table

    def drop(self, source_id: Any, reason: str, detail: Any = None, *, table: str | None = None,
             unit: str | None = None) -> None:
        """Record one dropped record with its reason and the offending value, under `table` (default: the main
        output), counted in `unit` (default: that table's unit). The value is kept as valid UTF-8: a lone
        surrogate in a bad record must not fail the drops file."""
        table = self._drop_target(table)
        text = None if detail is None else _utf8(str(detail))
        if text is not None and len(text) > DETAIL_MAX:
            text = text[:DETAIL_MAX] + "…"
        buffer = self._drop_buffer.setdefault(table, [])
        buffer.append({"stage": self.stage_id, "table_name": table,
                       "source_id": None if source_id is None else _utf8(str(source_id)),
                       "reason": reason, "detail": text, "build_id": self.build_id,
                       "unit": unit or self.unit_of(table)})
        if len(buffer) >= 50_000:
            self._flush_drops(table)

    def _next_drop_part(self, table: str) -> Path:
        folder = self.staging / table / "drops"
        folder.mkdir(parents=True, exist_ok=True)
        part = self._drop_parts.get(table, 0)
        self._drop_parts[table] = part + 1
        return folder / f"part-{part:05d}.parquet"

    def drop_sql(self, sql: str, *, table: str | None = None, unit: str | None = None) -> int:
        """Record drops from a query with columns source_id, reason, detail (and optionally unit), under `table`."""
        table = self._drop_target(table)
        self._flush_drops(table)
        out = self._next_drop_part(table)
        have = {r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM ({sql})").fetchall()}
        default_unit = sql_str(unit or self.unit_of(table))
        unit_expr = f"coalesce(CAST(unit AS VARCHAR), {default_unit})" if "unit" in have else default_unit
        full = (f"SELECT {sql_str(self.stage_id)} AS stage, {sql_str(table)} AS table_name, "
                f"CAST(source_id AS VARCHAR) AS source_id, CAST(reason AS VARCHAR) AS reason, "
                f"left(CAST(detail AS VARCHAR), {DETAIL_MAX}) AS detail, {sql_str(self.build_id)} AS build_id, "
                f"{unit_expr} AS unit FROM (\n{sql}\n)")
        n = int(self.con.execute(f"COPY ({full}) TO {sql_str(str(out))} (FORMAT parquet)").fetchone()[0])
        self._n_drops[table] = self._n_drops.get(table, 0) + n
        return n

    def _flush_drops(self, table: str | None = None) -> None:
        for name in [table] if table else list(self._drop_buffer):
            buffer = self._drop_buffer.get(name)
            if not buffer:
                continue
            pq.write_table(pa.Table.from_pylist(buffer, schema=DROPS_SCHEMA), self._next_drop_part(name))
            self._n_drops[name] = self._n_drops.get(name, 0) + len(buffer)
            buffer.clear()

    def drops_of(self, table: str | None = None) -> int:
        """How many drops are filed under `table` (default: the main output)."""
        table = table or self.table
        return self._n_drops.get(table, 0) + len(self._drop_buffer.get(table, []))

    @property
    def n_drops(self) -> int:
        return sum(self.drops_of(t) for t in self.outputs)

    # ------------------------------------------------------------------------------------------------ misc
    def track(self, description: str, total: float | None, unit: str = "rows"):
        """A progress bar for work the op drives itself (model calls): `with ctx.track(...) as bar`."""
        return track(self.progress, f"{self.stage_id}: {description}", total, unit)

    def log(self, message: str) -> None:
        console.print(f"[dim]{self.stage_id}:[/dim] {message}")

    def close(self) -> None:
        self._flush_drops()
        for table in self.outputs:  # every declared output exists, even when empty
            self._out_dir(table)
        if self._con is not None:
            self._con.close()
            self._con = None


class BatchWriter:
    def __init__(self, ctx: StageContext, table: str, schema: pa.Schema):
        self.ctx, self.table, self.schema = ctx, table, schema
        folder = ctx.staged_dir(table) / "data"
        self.path = folder / f"part-{len(list(folder.glob('*.parquet'))):05d}.parquet"
        self._writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        self.rows = 0

    def write(self, data: pa.Table | pa.RecordBatch | Iterable[dict]) -> None:
        if not isinstance(data, (pa.Table, pa.RecordBatch)):
            data = pa.Table.from_pylist(list(data), schema=self.schema)
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if data.schema != self.schema:
            data = data.select(self.schema.names).cast(self.schema)
        self._writer.write_table(data)
        self.rows += data.num_rows

    def close(self) -> None:
        self._writer.close()
        self.ctx.add_rows(self.rows, self.table)

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")

