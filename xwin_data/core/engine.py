"""Plan a recipe's stages as a DAG, skip what is already built with the same fingerprint, run and publish the rest.

A stage's fingerprint covers its op and op code, its validated params, what it depends on outside the catalog
(files, models) and its inputs' fingerprints; each output table's fingerprint is derived from it. Stages publish
one by one, so a killed build keeps every finished stage and the next build resumes after them.
"""
from __future__ import annotations

import hashlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from pydantic import BaseModel

from xwin_data import __version__
from xwin_data.core.catalog import Catalog, TableVersion
from xwin_data.core.context import InputTable, StageContext, sql_str
from xwin_data.core.errors import BuildError, RecipeError, SchemaError
from xwin_data.core.fingerprint import stable_hash
from xwin_data.core.progress import console, make_progress
from xwin_data.core.recipe import Recipe, validate_params
from xwin_data.core.records import PublishEntry, StageStats, TableInput, ValidationRecord
from xwin_data.core.registry import all_ops, get_op
from xwin_data.core.validate import ValidationResult, load_schema, validate_source
from xwin_data.core.validate import warm_up as warm_up_validation
from xwin_data.core.workers import cancel_warm_ups, warm_up_after_fork

if TYPE_CHECKING:  # pragma: no cover
    from xwin_data.ops.base import Op


@dataclass
class InputRef:
    name: str
    table: str
    fingerprint: str
    producer: str | None  # stage id in this recipe, or None for a catalog table


@dataclass
class PlannedStage:
    index: int
    stage_id: str
    op: Op
    params: BaseModel
    outputs: list[str]
    schemas: dict[str, str | None]
    inputs: list[InputRef]
    fingerprint: str = ""
    table_fingerprints: dict[str, str] = field(default_factory=dict)
    status: str = "run"  # built | restore | run
    reason: str = ""
    estimate: dict | None = None
    columns: dict[str, set[str] | None] = field(default_factory=dict)  # output table -> its columns, if known


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
def _toposort(recipe: Recipe, deps: dict[str, list[str]]) -> list[str]:
    order, done, visiting = [], set(), set()

    def visit(sid: str, chain: list[str]) -> None:
        if sid in done:
            return
        if sid in visiting:
            cycle = " → ".join(chain + [sid])
            raise RecipeError(f"stages form a cycle: {cycle}", file=recipe.source,
                              line=recipe.stage_line(sid, "inputs"), key=f"{sid}.inputs")
        visiting.add(sid)
        for dep in deps[sid]:
            visit(dep, chain + [sid])
        visiting.discard(sid)
        done.add(sid)
        order.append(sid)

    for st in recipe.stages:
        visit(st.id, [])
    return order


def plan(recipe: Recipe, catalog: Catalog, force: list[str] | bool = False) -> list[PlannedStage]:
    """Resolve ops, params, inputs and fingerprints; decide for each stage whether it must run."""
    now = {tv.name: tv for tv in catalog.current_tables()}  # one read of the catalog for the whole plan
    planned: dict[str, PlannedStage] = {}
    produced: dict[str, tuple[str, str]] = {}  # table name -> (stage id, table)
    for i, st in enumerate(recipe.stages):
        op_cls = get_op(st.op)
        if op_cls is None:
            raise RecipeError(f"unknown op {st.op!r} (known: {', '.join(all_ops())})", file=recipe.source,
                              line=recipe.line_of("stages", i, "op"), key=f"{st.id}.op")
        op = op_cls()
        params = validate_params(recipe, i, op_cls.Params)
        n_in = len(st.inputs)
        if n_in < op.min_inputs or (op.max_inputs is not None and n_in > op.max_inputs):
            want = f"{op.min_inputs}" + ("" if op.max_inputs == op.min_inputs else
                                         f"–{op.max_inputs if op.max_inputs is not None else 'any'}")
            raise RecipeError(f"op {st.op} takes {want} input(s), got {n_in}", file=recipe.source,
                              line=recipe.line_of("stages", i, "inputs") or recipe.line_of("stages", i, "op"),
                              key=f"{st.id}.inputs")
        outputs = op.output_tables(st.table_name, params)
        schemas = {}
        for t in outputs:
            schemas[t] = st.table_schema if (st.table_schema and t == outputs[0]) else op.output_schema(t, outputs[0], params)
            if schemas[t]:
                try:
                    load_schema(schemas[t])
                except SchemaError as err:
                    raise RecipeError(str(err), file=recipe.source, line=recipe.line_of("stages", i, "schema")
                                      or recipe.line_of("stages", i, "op"), key=f"{st.id}.schema") from None
        for t in outputs:
            if t in produced:
                raise RecipeError(f"table {t!r} is written by both {produced[t][0]} and {st.id}", file=recipe.source,
                                  line=recipe.line_of("stages", i, "id"), key=f"{st.id}")
            produced[t] = (st.id, t)
        planned[st.id] = PlannedStage(i, st.id, op, params, outputs, schemas, [])

    deps: dict[str, list[str]] = {}
    for i, st in enumerate(recipe.stages):
        refs = []
        for j, name in enumerate(st.inputs):
            if name in planned:
                refs.append(InputRef(name, planned[name].outputs[0], "", name))
            elif name in produced:
                refs.append(InputRef(name, name, "", produced[name][0]))
            else:
                tv = now.get(name)
                if tv is None:
                    raise RecipeError(
                        f"input {name!r} is neither a stage of this recipe nor a table in catalog {catalog.root}"
                        " (build the recipe that makes it first)", file=recipe.source,
                        line=recipe.line_of("stages", i, "inputs", j) or recipe.line_of("stages", i, "inputs"),
                        key=f"{st.id}.inputs")
                refs.append(InputRef(name, name, tv.fingerprint, None))
        planned[st.id].inputs = refs
        deps[st.id] = [r.producer for r in refs if r.producer]

    forced = set(planned) if force is True else set(force or [])
    unknown = forced - set(planned)
    if unknown:
        raise RecipeError(f"--force names unknown stage(s): {', '.join(sorted(unknown))}", file=recipe.source)
    ordered = [planned[s] for s in _toposort(recipe, deps)]
    _check_columns(recipe, ordered, planned, now)
    for ps in ordered:
        for ref in ps.inputs:
            if ref.producer:
                ref.fingerprint = planned[ref.producer].table_fingerprints[ref.table]
        try:
            external = ps.op.external_fingerprint(ps.params)
        except RecipeError as err:  # e.g. a missing input file: name the recipe, the stage's line and key
            raise RecipeError(str(err).split(": ", 1)[-1] if err.key else str(err), file=recipe.source,
                              line=recipe.line_of("stages", ps.index, "params"), key=f"{ps.stage_id}.params") from None
        ps.fingerprint = stable_hash({
            "op": type(ps.op).name, "op_code": type(ps.op).code_version(), "xwin_data": __version__,
            "params": ps.params.model_dump(mode="json"), "external": external,
            "inputs": [(r.name, r.fingerprint) for r in ps.inputs], "outputs": ps.outputs, "schemas": ps.schemas,
        })
        ps.table_fingerprints = {t: stable_hash([ps.fingerprint, t]) for t in ps.outputs}
        upstream_runs = any(r.producer and planned[r.producer].status != "built" for r in ps.inputs)
        current = {t: now.get(t) for t in ps.outputs}
        if ps.stage_id in forced:
            ps.status, ps.reason = "run", "forced"
        elif all(cv is not None and cv.fingerprint == ps.table_fingerprints[t] for t, cv in current.items()):
            ps.status, ps.reason = "built", "same fingerprint"
        elif all(catalog.find_version(t, ps.table_fingerprints[t]) for t in ps.outputs):
            ps.status, ps.reason = "restore", "an earlier version has this fingerprint"
        else:
            ps.status = "run"
            if upstream_runs:
                ps.reason = "an input changed"
            elif all(cv is None for cv in current.values()):
                ps.reason = "not built yet"
            else:
                ps.reason = "config or code changed"
        ps.estimate = ps.op.estimate(_PlanView(ps, catalog, planned, now), ps.params) if ps.status == "run" else None
    return ordered


def _check_columns(recipe: Recipe, ordered: list[PlannedStage], planned: dict[str, PlannedStage],
                   now: dict[str, TableVersion]) -> None:
    """Follow the declared columns through the stages: a stage whose input lacks a column its op needs fails here,
    naming the recipe line of that input. Inputs whose columns are unknown (after an `sql` stage) are not checked."""
    for ps in ordered:
        known: list[set[str] | None] = []
        for j, ref in enumerate(ps.inputs):
            if ref.producer:
                cols = planned[ref.producer].columns.get(ref.table)
            else:
                tv = now.get(ref.table)
                cols = set(tv.columns) if tv is not None and tv.columns else None
            known.append(cols)
            missing = [need for need in ps.op.input_columns(ps.params) if cols is not None and not _has(cols, need)]
            if missing:
                raise RecipeError(
                    f"op {type(ps.op).name} needs column(s) {_names(missing)} in input {ref.name!r}, which has: "
                    f"{', '.join(sorted(cols)) or 'no columns'}", file=recipe.source,
                    line=recipe.line_of("stages", ps.index, "inputs", j) or recipe.line_of("stages", ps.index, "op"),
                    key=f"{ps.stage_id}.inputs")
        first = known[0] if known else None
        ps.columns = {t: ps.op.output_columns(t, ps.outputs[0], ps.params, first) for t in ps.outputs}


def _has(columns: set[str], need: str | tuple[str, ...]) -> bool:
    return need in columns if isinstance(need, str) else any(n in columns for n in need)


def _names(needs: list[str | tuple[str, ...]]) -> str:
    return ", ".join(sorted(n if isinstance(n, str) else " or ".join(n) for n in needs))


def _columns_of(glob: str) -> set[str] | None:
    """The columns of a table's Parquet files; None when there are none to read."""
    with duckdb.connect(":memory:") as con:
        try:
            return {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_str(glob)})").fetchall()}
        except duckdb.IOException:
            return None


@dataclass
class _PlanView:
    """What an op's `estimate` may look at: its input tables, where they are already built."""

    stage: PlannedStage
    catalog: Catalog
    planned: dict[str, PlannedStage]
    current: dict[str, TableVersion]

    def input_rows(self, index: int = 0) -> int | None:
        ref = self.stage.inputs[index]
        tv = self.current.get(ref.table)
        return tv.rows if tv is not None and tv.fingerprint == ref.fingerprint else None


# ------------------------------------------------------------------------------------------------------ building
def recipe_sha(recipe: Recipe) -> str:
    text = Path(recipe.source).read_bytes() if recipe.source and Path(recipe.source).exists() else b""
    return hashlib.sha256(text).hexdigest()[:16]


def _drops_by_reason(con: duckdb.DuckDBPyConnection, glob: str | None) -> dict[str, int]:
    if glob is None:
        return {}
    rows = con.execute(f"SELECT reason, count(*) FROM read_parquet({sql_str(glob)}) "
                       "GROUP BY 1 ORDER BY 2 DESC").fetchall()
    return {r[0]: int(r[1]) for r in rows}


def _run_stage(ps: PlannedStage, recipe: Recipe, catalog: Catalog, build_id: str, progress: Any,
               memory_limit: str, overrides: list[str], validated: dict[str, ValidationResult]) -> StageReport:
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
                       build_id=build_id, fingerprint=ps.fingerprint, progress=progress, memory_limit=memory_limit)
    try:
        ps.op.run(ctx, ps.params)
    finally:
        ctx.close()
    seconds = round(time.monotonic() - start, 3)

    con = duckdb.connect(":memory:")
    entries: list[PublishEntry] = []
    validations: list[ValidationRecord] = []
    results: list[ValidationResult] = []
    try:
        drops = _drops_by_reason(con, ctx.drops_glob())
        # A source stage's input is the records it read: what it kept plus what it dropped.
        rows_in = inputs[0].rows if inputs else None
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
                res = _validate(con, source, schema_name, table, ctx.passed_through.get(table), validated)
                validated[ps.table_fingerprints[table]] = res
                results.append(res)
                validations.append(ValidationRecord(build_id, table, schema_name, ps.table_fingerprints[table],
                                                    res.success, res.checks))
            is_main = table == ps.outputs[0]
            if rows_in is None and is_main:
                rows_in = rows + sum(drops.values())
            stats = StageStats(rows_in, drops if is_main else {}, overrides, ctx.stats if is_main else {})
            entries.append(PublishEntry(
                name=table, fingerprint=ps.table_fingerprints[table], staged=ctx.staged_dir(table), rows=rows,
                columns=columns, stage=ps.stage_id, op=type(ps.op).name, n_drops=ctx.n_drops if is_main else 0,
                schema_name=schema_name, build_id=build_id, recipe=recipe.name, recipe_path=recipe.source,
                params=ps.params.model_dump(mode="json"),
                inputs=[TableInput(r.table, r.fingerprint) for r in ps.inputs], seconds=seconds,
                stats=stats.to_json()))
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
    return StageReport(ps.stage_id, "built", {e.name: e.rows for e in entries}, rows_in, drops, seconds, ctx.stats)


def _validate(con: duckdb.DuckDBPyConnection, source: str, schema_name: str, table: str,
              same_as: InputTable | None, validated: dict[str, ValidationResult]) -> ValidationResult:
    """Validate a staged table; one whose files are those of an input that passed the same schema earlier in this
    build (a switched-off stage passing its input through) has that input's result, with a note saying so."""
    prior = validated.get(same_as.fingerprint) if same_as is not None else None
    if prior is not None and prior.success and prior.schema == schema_name:
        note = {"expectation": "same_files_as_validated_input", "column": None, "success": True,
                "message": f"the files of {same_as.name} (version {same_as.version}), validated in this build"}
        return ValidationResult(table, schema_name, True, prior.rows, prior.checks + [note])
    return validate_source(con, source, schema_name, table)


def build(recipe: Recipe, catalog: Catalog, *, wait: float = 0.0, force: list[str] | bool = False,
          overrides: list[str] | None = None, memory_limit: str = "4GB", show_progress: bool = True) -> BuildReport:
    """Build every stage that is not already built; publish stage by stage."""
    catalog.init()
    stages = plan(recipe, catalog, force)  # fails on any recipe problem before work or spend
    overrides = overrides or []
    info = {"recipe": recipe.name, "started_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    with catalog.build_lock(wait=wait, info=info):
        catalog.mark_abandoned_builds()
        catalog.clean_staging()
        stages = plan(recipe, catalog, force)  # again under the lock: another build may have finished meanwhile
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
                    rep = _run_stage(ps, recipe, catalog, build_id, progress, memory_limit, overrides, validated)
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
            error = f"{type(err).__name__}: {err}"
            if not isinstance(err, (BuildError, RecipeError)):
                error += "\n" + traceback.format_exc(limit=8)
            raise
        finally:
            cancel_warm_ups()
            catalog.finish_build(build_id, status, ran, skipped, error)
            catalog.clean_staging(build_id)
            if status == "ok":
                for ps in stages:
                    if ps.status == "run":
                        _remove_tree(catalog.work_dir / f"{ps.stage_id}-{ps.fingerprint[:16]}")
        return BuildReport(build_id, reports, status)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def describe_plan(stages: list[PlannedStage]) -> list[dict[str, Any]]:
    return [{"stage": ps.stage_id, "op": type(ps.op).name, "inputs": [r.name for r in ps.inputs],
             "outputs": ps.outputs, "status": ps.status, "reason": ps.reason, "fingerprint": ps.fingerprint[:12],
             "estimate": ps.estimate} for ps in stages]

