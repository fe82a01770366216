"""Build a planned recipe: run each stage that is not built, validate its outputs, publish them atomically.

Stages publish one by one, so a killed build keeps every finished stage and the next build resumes after them;
`xwin_data.core.plan` decides what runs.
"""
from __future__ import annotations

import hashlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from xwin_data.core.catalog import Catalog
from xwin_data.core.context import InputTable, StageContext, sql_str
from xwin_data.core.errors import BuildError, RecipeError
from xwin_data.core.executors import Executor
from xwin_data.core.progress import console, make_progress
from xwin_data.core.recipe import Recipe
from xwin_data.core.secrets import redact
from xwin_data.core.records import PublishEntry, StageStats, TableInput, ValidationRecord
from xwin_data.core.scratch import scratch
from xwin_data.core.validate import ValidationResult, check_columns, holds_for_subsets, load_schema, validate_source
from xwin_data.core.validate import warm_up as warm_up_validation
from xwin_data.core.workers import cancel_warm_ups, warm_up_after_fork
from xwin_data.core.plan import PlannedStage, _columns_of, _sql_access, choose_executor, plan, select_stages


@dataclass
class StageReport:
    stage_id: str
    status: str
    tables: dict[str, int]
    rows_in: int
    drops: dict[str, int]
    seconds: float
    stats: dict = field(default_factory=dict)


@dataclass
class BuildReport:
    build_id: str | None
    stages: list[StageReport]
    status: str


# ------------------------------------------------------------------------------------------------------ planning
# ------------------------------------------------------------------------------------------------------ building
def recipe_sha(recipe: Recipe) -> str:
    text = Path(recipe.source).read_bytes() if recipe.source and Path(recipe.source).exists() else b""
    return hashlib.sha256(text).hexdigest()[:16]


def _drops_by(con: duckdb.DuckDBPyConnection, folder: Path, column: str) -> dict[str, int]:
    """Drops filed under one output table, counted by `column` (reason or unit)."""
    if not any(folder.glob("*.parquet")):
        return {}
    rows = con.execute(f"SELECT {column}, count(*) FROM read_parquet({sql_str(str(folder / '*.parquet'))}, "
                       "union_by_name = true) GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    return {r[0]: int(r[1]) for r in rows}


UNIT_BY_SCHEMA = {"conversations": "conversations", "xwin_pair": "pairs", "dpo_pairs": "pairs",
                  "rs_best_of": "prompts", "xwin_set": "responses", "bon_curve": "points",
                  "bon_curve_per_prompt": "points", "wind_groups": "prompts"}


def _input_unit(catalog: Catalog, ps: PlannedStage) -> str | None:
    first = catalog.current(ps.inputs[0].table) if ps.inputs else None
    return (first.stats or {}).get("unit") if first else None


def _output_units(ps: PlannedStage, catalog: Catalog) -> dict[str, str]:
    """What one row of each output is: as the op declares, else as its schema says (a conversation table keeps its
    input's unit: conversations, or pieces once split), else as its first input's rows, else `rows`."""
    inherited = _input_unit(catalog, ps)
    out = {}
    for table in ps.outputs:
        schema = ps.schemas.get(table) or ""
        declared = ps.op.output_unit(table, ps.outputs[0], ps.params)
        by_schema = UNIT_BY_SCHEMA.get(schema) if schema != "conversations" else None
        out[table] = declared or by_schema or inherited or UNIT_BY_SCHEMA.get(schema, "rows")
    return out


def _run_stage(ps: PlannedStage, recipe: Recipe, catalog: Catalog, build_id: str, progress: Any,
               memory_limit: str, overrides: list[str], validated: dict[str, ValidationResult],
               executor: Executor) -> StageReport:
    start = time.monotonic()
    inputs = []
    for ref in ps.inputs:
        tv = catalog.current(ref.table)
        assert tv is not None and tv.fingerprint == ref.fingerprint, f"input {ref.table} is not at its planned version"
        inputs.append(InputTable(ref.name, catalog.data_glob(tv), tv.fingerprint, tv.version, tv.rows))
    # what the stage must write, from the columns its input really has (plan may not know them: after `sql`)
    input_columns = _columns_of(inputs[0].glob) if inputs else None
    staging = catalog.staging_for(build_id, ps.stage_id)
    work_dir = catalog.work_dir / f"{ps.stage_id}-{ps.fingerprint[:16]}"
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(stage_id=ps.stage_id, table=ps.outputs[0], outputs=ps.outputs, inputs=inputs, staging=staging,
                       work_dir=work_dir, cache_dir=catalog.cache_dir, tmp_dir=catalog.tmp_dir / build_id,
                       build_id=build_id, fingerprint=ps.fingerprint, progress=progress, memory_limit=memory_limit,
                       units=_output_units(ps, catalog), executor=executor, resources=ps.resources)
    if type(ps.op).sql_params:
        ctx.allowed = _sql_access(ps, catalog, inputs, [staging, work_dir, catalog.tmp_dir / build_id])
    try:
        ps.op.run(ctx, ps.params)
    except duckdb.PermissionException as err:
        if ctx.allowed is None:
            raise
        raise BuildError(f"stage {ps.stage_id}: recipe SQL may read only its inputs, the catalog's tables and the "
                         f"files its params name: {str(err).strip().splitlines()[0]}") from None
    finally:
        ctx.close()
        pa.default_memory_pool().release_unused()  # what the stage's Arrow buffers left cached goes back to the system
    seconds = round(time.monotonic() - start, 3)

    con = scratch()
    entries: list[PublishEntry] = []
    validations: list[ValidationRecord] = []
    results: list[ValidationResult] = []
    try:
        main_drops: dict[str, int] = {}
        main_rows_in = None
        for table in ps.outputs:
            source = f"read_parquet({sql_str(ctx.output_glob(table))})"
            rows = int(con.execute(f"SELECT count(*) FROM {source}").fetchone()[0])
            columns = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
            declared = ps.op.output_columns(table, ps.outputs[0], ps.params, input_columns)
            if declared is not None and set(columns) != declared:
                raise BuildError(f"stage {ps.stage_id}: op {type(ps.op).name} declares the columns "
                                 f"{sorted(declared)} for {table} but wrote {sorted(columns)}; its `adds` / "
                                 "`output_columns` is wrong")
            schema_name = ps.schemas.get(table)
            if schema_name:
                res = _validate(con, source, schema_name, table, rows, ctx.passed_through.get(table),
                                ctx.rows_copied_from.get(table), validated)
                validated[ps.table_fingerprints[table]] = res
                results.append(res)
                validations.append(ValidationRecord(build_id, table, schema_name, ps.table_fingerprints[table],
                                                    res.success, res.checks))
            is_main = table == ps.outputs[0]
            unit = ctx.unit_of(table)
            drops = _drops_by(con, staging / table / "drops", "reason")
            by_unit = _drops_by(con, staging / table / "drops", "coalesce(unit, 'rows')")
            dropped = by_unit.pop(unit, 0)
            # Records in, counted in this table's unit: as the op says; for a source stage, what it kept plus what
            # it dropped; else the first input's rows where they are the same unit; otherwise unknown.
            rows_in = ctx.rows_in.get(table)
            if rows_in is None and not inputs:
                rows_in = rows + dropped
            elif rows_in is None and ctx.units.get(table) == _input_unit(catalog, ps):
                rows_in = inputs[0].rows
            if is_main:
                main_drops, main_rows_in = drops, rows_in
            stats = StageStats(rows_in, drops, overrides, ctx.stats if is_main else {}, unit=unit, dropped=dropped,
                               dropped_other_units=by_unit)
            entries.append(PublishEntry(
                name=table, fingerprint=ps.table_fingerprints[table], staged=ctx.staged_dir(table), rows=rows,
                columns=columns, stage=ps.stage_id, op=type(ps.op).name, n_drops=ctx.drops_of(table),
                schema_name=schema_name, build_id=build_id, recipe=recipe.name, recipe_path=recipe.source,
                params=redact(ps.params.model_dump(mode="json")),
                inputs=[TableInput(r.table, r.fingerprint) for r in ps.inputs], seconds=seconds,
                stats=redact(stats.to_json())))
    finally:
        con.close()
    failed = [r for r in results if not r.success]
    if failed:
        for v in validations:
            if not v.success:
                catalog.record_validation_failure(v)
        raise BuildError("validation failed, nothing published for stage "
                         f"{ps.stage_id}:\n" + "\n".join(r.report() for r in failed))
    catalog.publish(entries, validations)
    _remove_tree(work_dir)  # the stage is published: its resumable work is done
    # The build report's "rows in" is the stage's input as read (whatever its unit), as the build summary shows it.
    stage_rows_in = inputs[0].rows if inputs else main_rows_in
    return StageReport(ps.stage_id, "built", {e.name: e.rows for e in entries}, stage_rows_in, main_drops, seconds,
                       ctx.stats)


_NOT_ROW_CHECKS = {"column_type", "column_exists", "same_files_as_validated_input", "rows_of_validated_input"}


def _validate(con: duckdb.DuckDBPyConnection, source: str, schema_name: str, table: str, rows: int,
              same_as: InputTable | None, copied: tuple[InputTable, int] | None,
              validated: dict[str, ValidationResult]) -> ValidationResult:
    """Validate a staged table. One whose files are those of an input that passed the same schema earlier in this
    build (a switched-off stage passing its input through) has that input's result, with a note saying so. One
    whose every row was copied unchanged from such an input (a filter, a deduplication), under a contract that holds
    for any subset of a table's rows, has its column types checked and the input's row checks, with a note."""
    prior = validated.get(same_as.fingerprint) if same_as is not None else None
    if prior is not None and prior.success and prior.schema == schema_name:
        note = {"expectation": "same_files_as_validated_input", "column": None, "success": True,
                "message": f"the files of {same_as.name} (version {same_as.version}), validated in this build"}
        return ValidationResult(table, schema_name, True, prior.rows, prior.checks + [note])
    origin, copied_rows = copied if copied is not None else (None, -1)
    prior = validated.get(origin.fingerprint) if origin is not None else None
    schema = load_schema(schema_name)
    if (prior is not None and prior.success and prior.schema == schema_name and copied_rows == rows
            and holds_for_subsets(schema)):
        columns = check_columns(con, source, schema)
        if all(c["success"] for c in columns):
            note = {"expectation": "rows_of_validated_input", "column": None, "success": True,
                    "message": f"{rows} of the {prior.rows} rows of {origin.name} (version {origin.version}), "
                               "copied unchanged; that table passed this contract in this build, and its checks "
                               "hold for any subset of its rows"}
            row_checks = [c for c in prior.checks if c["expectation"] not in _NOT_ROW_CHECKS]
            return ValidationResult(table, schema_name, True, rows, columns + row_checks + [note])
    return validate_source(con, source, schema_name, table)


def build(recipe: Recipe, catalog: Catalog, *, wait: float = 0.0, force: list[str] | bool = False,
          overrides: list[str] | None = None, memory_limit: str = "4GB", show_progress: bool = True,
          verify: bool = False, executor: str | None = None, ray_address: str | None = None,
          targets: list[str] | None = None) -> BuildReport:
    """Build every stage that is not already built; publish stage by stage. `verify` checks the checksums of
    the parts a build relies on, not only their sizes. The executor decides where batch work runs; it is not part
    of any fingerprint, so a table built on one executor is built for every other. `targets` (stage ids or table
    names) builds only those and the stages they need."""
    catalog.init()
    runner = choose_executor(recipe, executor, ray_address)
    with catalog.reads_cached():  # one plan reads each version a few times
        stages = select_stages(plan(recipe, catalog, force, verify), targets, recipe)  # recipe problems fail here
    for ps in stages:
        if ps.status == "run":
            ps.op.preflight(ps.params)  # e.g. no judge to call: one line before any model is loaded or paid
    overrides = redact(overrides or [])
    info = {"recipe": recipe.name, "started_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    with catalog.build_lock(wait=wait, info=info):
        catalog.mark_abandoned_builds()
        catalog.clean_staging()
        stages = select_stages(plan(recipe, catalog, force, verify), targets, recipe)  # again under the lock:
        # another build may have finished meanwhile
        _clean_leftovers(catalog, stages)
        build_id = catalog.start_build(recipe.name, recipe.source or "", recipe_sha(recipe), overrides)
        info["build_id"] = build_id
        reports: list[StageReport] = []
        ran, skipped = [], []
        status, error = "ok", None
        validated: dict[str, ValidationResult] = {}  # table fingerprint -> result, for tables validated here
        if any(ps.status == "run" and any(ps.schemas.values()) for ps in stages):
            warm_up_after_fork(warm_up_validation)  # the validation library loads while a stage's workers compute
        try:
            with make_progress(disable=not show_progress) as progress:
                for ps in stages:
                    if ps.status == "built":
                        skipped.append(ps.stage_id)
                        reports.append(StageReport(ps.stage_id, "skipped", {}, 0, {}, 0.0))
                        continue
                    if ps.status == "restore":
                        for t in ps.outputs:
                            catalog.restore(catalog.find_version(t, ps.table_fingerprints[t]))  # type: ignore[arg-type]
                        ran.append(ps.stage_id)
                        reports.append(StageReport(ps.stage_id, "restored", {}, 0, {}, 0.0))
                        continue
                    console.print(f"[bold cyan]▶ {ps.stage_id}[/] ({type(ps.op).name}): {ps.reason}")
                    rep = _run_stage(ps, recipe, catalog, build_id, progress, memory_limit, overrides, validated,
                                     runner)
                    ran.append(ps.stage_id)
                    reports.append(rep)
                    drops = sum(rep.drops.values())
                    console.print(f"  [green]✓[/] {ps.stage_id}: " + ", ".join(f"{t} {n:,} rows" for t, n in rep.tables.items())
                                  + (f", {drops:,} dropped" if drops else "") + f" in {rep.seconds:.1f}s")
        except KeyboardInterrupt:
            status, error = "interrupted", "interrupted"
            raise
        except BaseException as err:
            status = "failed"
            error = redact(f"{type(err).__name__}: {err}")
            full = _disk_full(err)
            if full is not None:
                stage = next((ps.stage_id for ps in stages if ps.status == "run" and ps.stage_id not in ran), "?")
                error = redact(f"disk full while building stage {stage}: {full}")
                raise BuildError(f"{error}; the build is marked failed and finished stages are kept: free space "
                                 f"under {catalog.root} and run the same command to resume") from None
            if not isinstance(err, (BuildError, RecipeError)):
                error += "\n" + redact(traceback.format_exc(limit=8))
            raise
        finally:
            cancel_warm_ups()
            runner.close()
            catalog.clean_staging(build_id)  # first: on a full disk this frees the space the record needs
            _remove_tree(catalog.tmp_dir / build_id)
            try:
                catalog.finish_build(build_id, status, ran, skipped, error)
            except (OSError, duckdb.Error):
                if status == "ok":
                    raise  # otherwise the error in flight says more; the next build marks this one killed
        return BuildReport(build_id, reports, status)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _clean_leftovers(catalog: Catalog, stages: list[PlannedStage]) -> None:
    """What killed builds left behind, removed under the build lock (no other build runs): their spill folders
    under tmp/, and the work folders of stages that are published with the same fingerprint since."""
    if catalog.tmp_dir.exists():
        for path in catalog.tmp_dir.iterdir():
            _remove_tree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for ps in stages:
        if ps.status == "built":
            _remove_tree(catalog.work_dir / f"{ps.stage_id}-{ps.fingerprint[:16]}")


def _disk_full(err: BaseException) -> str | None:
    """The disk-full error in `err` or its causes (an OSError with ENOSPC, from this process or a worker, or the
    same reported by DuckDB as text), described in one line; None for any other error."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" ({err.filename})" if getattr(err, "filename", None) else ""
            return f"{err.strerror or 'no space left on device'}{where}"
        text = str(err)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return text.splitlines()[0][:300]
        err = err.__cause__ or err.__context__
    return None
