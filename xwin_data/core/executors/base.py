"""Where a stage's batches run. An op describes its work as units (one batch of input each) and a batch function
that turns a unit into output rows; an executor decides where those functions run (this process and forked
workers, or a Ray cluster). No op knows which executor runs it.

Every finished unit is committed durably, on its own, before its result counts: its output tables are written as
Parquet parts in the stage's work folder, named by a hash of the stage fingerprint and the unit's identity, and a
`.done` record (the unit's row counts and its small results, e.g. drops) is renamed into place last. A build that
is killed (driver, worker or node) and run again finds those records and repeats no finished unit, whichever
executor ran it. At the end the parts are linked into the stage's output in unit order, so the table is the same
row for row under every executor.
"""
from __future__ import annotations

import glob
import os
import pickle
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pyarrow as pa

from xwin_data.core.fingerprint import stable_hash

# fn(payload) -> (tables, extra): tables is a Table (the main output), a dict {output: Table}, or None.
BatchFn = Callable[[Any], tuple[Any, Any]]


@dataclass(frozen=True)
class Unit:
    """One batch of a stage's work. `identity` names its input (file and row group, a block's hash, prompt ids) and
    keys its committed result; `payload` is what the batch function receives; `rows` counts it for progress."""

    identity: Any
    payload: Any
    rows: int = 0


@dataclass(frozen=True)
class Resources:
    """What one replica of a stage's batch function needs, and how many replicas run (None: the executor decides)."""

    cpus: float = 1.0
    gpus: float = 0.0
    replicas: int | None = None

    @classmethod
    def of(cls, spec: dict | None) -> "Resources":
        spec = dict(spec or {})
        return cls(cpus=float(spec.get("cpus", 1.0)), gpus=float(spec.get("gpus", 0.0)),
                   replicas=None if spec.get("replicas") is None else int(spec["replicas"]))

    def describe(self) -> dict:
        return {"cpus": self.cpus, "gpus": self.gpus, "replicas": self.replicas}


@dataclass(frozen=True)
class Model:
    """A stateful batch function: `cls(**kwargs)` loads a model once per replica, then `instance(payload)` runs a
    unit like a BatchFn; `instance.close()` (if present) releases it."""

    cls: type
    kwargs: dict = field(default_factory=dict)


@dataclass
class UnitResult:
    index: int
    rows: dict[str, int]
    extra: Any
    resumed: bool
    seconds: float = 0.0
    parts: dict[str, str | None] = field(default_factory=dict)  # output -> its committed part (None: no rows)

    def part(self, table: str) -> str | None:
        return self.parts.get(table)


def unit_key(fingerprint: str, identity: Any) -> str:
    return stable_hash([fingerprint, identity], length=32)


def part_path(part_dir: Path | str, key: str, table: str) -> Path:
    return Path(part_dir) / f"{key}.{table}.parquet"


def _durable_replace(tmp: Path, final: Path) -> None:
    """Complete files only ever appear under their final name (a killed writer leaves a temporary file). Parts are
    not fsynced, which would force every part to disk before the next unit: a part cut short by a machine crash is
    caught when its unit is resumed (`committed`), and the unit runs again."""
    os.replace(tmp, final)


def commit_unit(fn: BatchFn, payload: Any, key: str, part_dir: str, schemas: dict[str, pa.Schema],
                main: str) -> dict:
    """Run one unit and commit it: its parts first, then the `.done` record that says the unit is finished. Runs
    wherever the executor puts it; the part folder must be reachable from there (a shared filesystem on a
    cluster). Returns the record."""
    import pyarrow.parquet as pq

    start, started = time.monotonic(), time.time()
    out, extra = fn(payload)
    tables = out if isinstance(out, dict) else {main: out}
    unknown = set(tables) - set(schemas)
    if unknown:
        raise ValueError(f"batch function wrote undeclared output(s) {sorted(unknown)}")
    folder = Path(part_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    for name, schema in schemas.items():
        table = tables.get(name)
        if table is None or not table.num_rows:
            rows[name] = 0
            continue
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if table.schema != schema:
            table = table.select(schema.names).cast(schema)
        final = part_path(folder, key, name)
        tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        pq.write_table(table, tmp, compression="zstd")
        _durable_replace(tmp, final)
        rows[name] = table.num_rows
    record = {"rows": rows, "extra": extra, "seconds": round(time.monotonic() - start, 4), "pid": os.getpid(),
              "started": started}
    done = folder / f"{key}.done"
    tmp = done.with_name(done.name + f".tmp{os.getpid()}")
    tmp.write_bytes(pickle.dumps(record))
    _durable_replace(tmp, done)
    return record


def load_done(part_dir: Path, key: str) -> dict | None:
    path = Path(part_dir) / f"{key}.done"
    if not path.exists():
        return None
    try:
        return pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 - a record cut short (a machine crash): the unit runs again
        return None


def committed(part_dir: Path, key: str) -> dict | None:
    """The unit's record if it finished and each of its parts is whole (a readable footer with the rows the record
    counts); None otherwise, and the unit runs again."""
    import pyarrow.parquet as pq

    record = load_done(part_dir, key)
    if record is None:
        return None
    for table, rows in record["rows"].items():
        if not rows:
            continue
        try:
            if pq.ParquetFile(part_path(part_dir, key, table)).metadata.num_rows != rows:
                return None
        except (OSError, pa.ArrowInvalid):
            return None
    return record


def read_row_group(fn: Callable[[pa.RecordBatch], tuple[Any, Any]], batch_size: int,
                   payload: tuple[str, int]) -> tuple[pa.Table | None, list]:
    """One row group of a Parquet file through `fn` in batches of at most `batch_size` rows: the unit of the
    row-batch stages. The extras of its batches come back as a list."""
    import pyarrow.parquet as pq

    source, row_group = payload
    group = pq.ParquetFile(source).read_row_group(row_group, use_threads=False)
    outs, extras = [], []
    for batch in group.to_batches(max_chunksize=batch_size):
        out, extra = fn(batch)
        extras.append(extra)
        if out is not None and out.num_rows:
            outs.append(out if isinstance(out, pa.Table) else pa.Table.from_batches([out]))
    if not outs:
        return None, extras
    schema = outs[0].schema
    return pa.concat_tables([o if o.schema == schema else o.cast(schema) for o in outs]), extras


def row_group_units(input_glob: str) -> list[Unit]:
    """Units of an input table: one per row group of its Parquet files, in table order."""
    import pyarrow.parquet as pq

    units = []
    for source in sorted(glob.glob(input_glob)):
        meta = pq.ParquetFile(source).metadata
        for i in range(meta.num_row_groups):
            units.append(Unit((os.path.basename(source), i), (source, i), meta.row_group(i).num_rows))
    return units


class Executor:
    """Runs a stage's units. Subclasses implement `_execute`; `run` adds resume, ordering and publishing."""

    name = "base"
    distributes = False  # True where units run on other machines: ops then split work that is cheap to keep here

    def describe(self, resources: Resources, model: bool, ray_data_llm: dict | None = None) -> str:
        """Where a stage's units would run, for `plan`; `ray_data_llm` ({task, tensor_parallel}): its model runs in
        a `ray.data.llm` processor where the executor is Ray."""
        return self.name

    def close(self) -> None:
        """Release what the executor started for the build."""

    # ------------------------------------------------------------------------------------------ subclass seam
    def _execute(self, ctx, fn: BatchFn | Model, todo: list[tuple[int, str, Unit]], part_dir: str,
                 schemas: dict[str, pa.Schema], main: str, resources: Resources, options: dict) -> Iterable[tuple[int, dict]]:
        """Run the units in `todo` ((index, key, unit)); yield (index, record) as each one is committed."""
        raise NotImplementedError

    def workers(self, resources: Resources, model: bool, n_units: int) -> int:
        return 1

    # ------------------------------------------------------------------------------------------ what ops call
    def run(self, ctx, fn: BatchFn | Model, units: Sequence[Unit], schemas: dict[str, pa.Schema], *,
            on_result: Callable[[Any], None] | None = None, description: str = "", unit: str = "rows",
            resources: Resources | dict | None = None, publish: bool = True, **options: Any) -> list[UnitResult]:
        """Run every unit (those already committed by an earlier, killed build are not run again), call
        `on_result(extra)` for each unit in unit order on this thread, and link the parts into the outputs named in
        `schemas` (the first is the main one) in unit order. With `publish=False` the parts stay in the work folder
        (see `parts`), for a stage that combines them itself."""
        resources = resources if isinstance(resources, Resources) else Resources.of(resources or ctx.resources)
        main = next(iter(schemas))
        part_dir = ctx.work_dir / "batches"
        part_dir.mkdir(parents=True, exist_ok=True)
        # One stage may run several kinds of unit over the same input (near-dedup signs every row group, then
        # writes what it keeps): the outputs and the step's description tell them apart.
        step = "+".join(schemas) + "|" + description
        keys = [unit_key(ctx.fingerprint, [step, u.identity]) for u in units]
        results: list[UnitResult | None] = [None] * len(units)
        todo = []
        for i, (key, u) in enumerate(zip(keys, units)):
            record = committed(part_dir, key)
            if record is not None:
                results[i] = UnitResult(i, record["rows"], record["extra"], True)
            else:
                todo.append((i, key, u))
        total = sum(u.rows for u in units)
        next_i = 0
        start, started = time.monotonic(), time.time()
        first_start, unit_seconds = None, 0.0
        with ctx.track(description or "batches", total or None, unit) as bar:
            def deliver() -> None:
                nonlocal next_i
                while next_i < len(results) and results[next_i] is not None:
                    res = results[next_i]
                    if on_result is not None:
                        on_result(res.extra)
                    if res.resumed:
                        bar.advance(units[next_i].rows)
                    next_i += 1

            deliver()
            for index, record in self._execute(ctx, fn, todo, str(part_dir), schemas, main, resources, options):
                results[index] = UnitResult(index, record["rows"], record["extra"], False, record.get("seconds", 0.0))
                unit_seconds += record.get("seconds", 0.0)
                if record.get("started") is not None:
                    first_start = min(first_start or record["started"], record["started"])
                bar.advance(units[index].rows)
                deliver()
            deliver()
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"{len(missing)} batch(es) of {ctx.stage_id} did not finish")
        done = [r for r in results if r is not None]
        for r in done:
            r.parts = {name: str(part_path(part_dir, keys[r.index], name)) if r.rows.get(name) else None
                       for name in schemas}
        stats = ctx.stats.setdefault("executor", {}) if options.get("record", True) else {}
        workers = self.workers(resources, isinstance(fn, Model), len(todo)) if todo else 0
        stats.update({"name": self.name, "workers": max(workers, stats.get("workers", 0)),
                      "resources": resources.describe(), "batches": stats.get("batches", 0) + len(units),
                      "batches_run": stats.get("batches_run", 0) + len(todo),
                      "batches_resumed": stats.get("batches_resumed", 0) + sum(r.resumed for r in done),
                      "seconds": round(stats.get("seconds", 0.0) + time.monotonic() - start, 3),
                      # time inside the batch functions, and before the first one began (connecting, starting
                      # workers, loading models): what the executor costs besides the work itself
                      "unit_seconds": round(stats.get("unit_seconds", 0.0) + unit_seconds, 3),
                      "startup_seconds": round(stats.get("startup_seconds", 0.0)
                                               + (max(0.0, first_start - started) if first_start else 0.0), 3)})
        if publish:
            for name, schema in schemas.items():
                self.publish_parts(ctx, part_dir, [keys[i] for i in range(len(units))], name, schema)
        return done

    @staticmethod
    def publish_parts(ctx, part_dir: Path, keys: list[str], table: str, schema: pa.Schema) -> int:
        """Link (or copy) the committed parts of `table` into the stage's output in unit order."""
        import shutil

        import pyarrow.parquet as pq

        written = 0
        paths = ctx.part_paths(table)
        for key in keys:
            src = part_path(part_dir, key, table)
            if not src.exists():
                continue
            dst = next(paths)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            n = pq.ParquetFile(dst).metadata.num_rows
            ctx.add_rows(n, table)
            written += n
        if not written:  # an empty output still gets a file with its schema
            with ctx.writer(schema, table):
                pass
        return written

    # ------------------------------------------------------------------------------------------ row batches
    def map_input(self, ctx, fn: Callable[[pa.RecordBatch], tuple[Any, Any]], schema: pa.Schema,
                  on_result: Callable[[Any], None] | None = None, *, index: int = 0, table: str | None = None,
                  batch_size: int = 20_000, description: str = "", threads: int | None = None,
                  processes: bool = False, record: bool = True) -> int:
        """`fn(batch) -> (table, extra)` over every row of an input table, one row group per unit; the tables land
        in input order and `on_result(extra)` runs here, in input order."""
        units = row_group_units(ctx.inputs[index].glob)

        def each(extras: list) -> None:
            for extra in extras if on_result is not None else ():
                on_result(extra)

        self.run(ctx, partial(read_row_group, fn, batch_size), units, {table or ctx.table: schema},
                 on_result=each, description=description, unit="rows", threads=threads, processes=processes,
                 fork_above_rows=2 * batch_size, record=record)
        return ctx.rows_written(table)
