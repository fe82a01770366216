"""Plan a recipe: its stages as a DAG with fingerprints, the columns each stage needs and makes, the checks of
recipe SQL, and for each stage whether it is built, can be restored, or must run. Nothing here runs a stage.

A stage's fingerprint covers its op and the code it runs, its validated params, what it depends on outside the
catalog (files, models) and its inputs' fingerprints; each output table's fingerprint is derived from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from pydantic import BaseModel

from xwin_data.core.catalog import Catalog, TableVersion
from xwin_data.core.context import InputTable, sql_str
from xwin_data.core.errors import BuildError, RecipeError, SchemaError
from xwin_data.core.executors import Executor, Resources, make_executor
from xwin_data.core.fingerprint import stable_hash
from xwin_data.core.recipe import Recipe, validate_params
from xwin_data.core.scratch import scratch
from xwin_data.core.secrets import redact
from xwin_data.core.registry import all_ops, get_op
from xwin_data.core.sql_guard import SqlRefused, access_for, check_expression, check_select, named_paths
from xwin_data.core.validate import load_schema

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
    resources: dict = field(default_factory=dict)



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


class DamagedInput(BuildError):
    """A catalog table this recipe reads (and does not build) has missing or damaged files."""


def plan(recipe: Recipe, catalog: Catalog, force: list[str] | bool = False, verify: bool = False) -> list[PlannedStage]:
    """Resolve ops, params, inputs and fingerprints; decide for each stage whether it must run.

    The files of every table the plan relies on are checked against what was published (sizes; checksums too
    with `verify`): a damaged output of this recipe is rebuilt, a damaged table from elsewhere stops the plan."""
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
        _check_sql_params(recipe, i, op_cls, params)
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
        planned[st.id] = PlannedStage(i, st.id, op, params, outputs, schemas, [],
                                      resources=op.resources(params, st.resources.model_dump()))

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
                problems = catalog.check_files(tv, verify)
                if problems:
                    raise DamagedInput(f"input table {name!r} (version {tv.version}) is damaged, rebuild the recipe "
                                       f"that makes it ({tv.recipe}): " + "; ".join(problems[:3]))
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
        ps.fingerprint = stable_hash(redact({  # credentials in a URL do not change what a stage makes
            "op": type(ps.op).name, "op_code": type(ps.op).code_version(),
            "params": ps.params.model_dump(mode="json"), "external": external,
            "inputs": [(r.name, r.fingerprint) for r in ps.inputs], "outputs": ps.outputs, "schemas": ps.schemas,
        }))
        ps.table_fingerprints = {t: stable_hash([ps.fingerprint, t]) for t in ps.outputs}
        upstream_runs = any(r.producer and planned[r.producer].status != "built"
                            and not planned[r.producer].reason.startswith("output damaged") for r in ps.inputs)
        current = {t: now.get(t) for t in ps.outputs}
        if ps.stage_id in forced:
            ps.status, ps.reason = "run", "forced"
        elif all(cv is not None and cv.fingerprint == ps.table_fingerprints[t] for t, cv in current.items()):
            damaged = [p for cv in current.values() for p in catalog.check_files(cv, verify)]  # type: ignore[union-attr]
            if damaged:
                ps.status, ps.reason = "run", "output damaged: " + damaged[0] + (
                    f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else "")
            else:
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
    with scratch() as con:
        try:
            return {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_str(glob)})").fetchall()}
        except duckdb.IOException:
            return None


def _sql_texts(op_cls: type[Op], params: BaseModel) -> list[tuple[str, str, str]]:
    """(param name, kind, SQL text) for every SQL text in the params an op declares as SQL."""
    out = []
    for name, kind in (op_cls.sql_params or {}).items():
        value = getattr(params, name, None)
        texts = value.items() if isinstance(value, dict) else [(None, value)]
        for key, text in texts:
            if isinstance(text, str):
                out.append((name if key is None else f"{name}.{key}", kind, text))
    return out


def _check_sql_params(recipe: Recipe, index: int, op_cls: type[Op], params: BaseModel) -> None:
    """Recipe SQL is one SELECT (or one expression), refused before any work otherwise."""
    for name, kind, text in _sql_texts(op_cls, params):
        try:
            (check_select if kind == "select" else check_expression)(text, name)
        except SqlRefused as err:
            raise RecipeError(str(err), file=recipe.source,
                              line=recipe.line_of("stages", index, "params", *name.split(".", 1)[:1])
                              or recipe.line_of("stages", index, "params"),
                              key=f"{recipe.stages[index].id}.params.{name}") from None


def _sql_access(ps: PlannedStage, catalog: Catalog, inputs: list[InputTable], ctx_dirs: list[Path]) -> tuple[list, list]:
    """What a stage running recipe SQL may open: its inputs, the catalog's tables, its own scratch and output
    folders, and the files its SQL names."""
    named = [p for _, _, text in _sql_texts(type(ps.op), ps.params) for p in named_paths(text)]
    dirs, files = access_for(named)
    dirs += [str(Path(i.glob).parent) for i in inputs] + [str(catalog.tables_dir)] + [str(d) for d in ctx_dirs]
    return dirs, files


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


def choose_executor(recipe: Recipe, executor: str | None = None, ray_address: str | None = None) -> Executor:
    """The recipe's `executor:`, overridden by `--executor` / `--ray-address` (an address alone means ray)."""
    name = executor or ("ray" if ray_address else recipe.executor.name)
    try:
        return make_executor(name, ray_address or (recipe.executor.address if name == recipe.executor.name else None))
    except ValueError as err:
        raise RecipeError(str(err), file=recipe.source, key="executor") from None


def describe_plan(stages: list[PlannedStage], executor: Executor | None = None) -> list[dict[str, Any]]:
    executor = executor or make_executor("local")
    return [{"stage": ps.stage_id, "op": type(ps.op).name, "inputs": [r.name for r in ps.inputs],
             "outputs": ps.outputs, "status": ps.status, "reason": ps.reason, "fingerprint": ps.fingerprint[:12],
             "estimate": ps.estimate, "runs_on": where_it_runs(ps, executor)} for ps in stages]


def where_it_runs(ps: PlannedStage, executor: Executor) -> str:
    """Where a stage's work would run: SQL stages in DuckDB on the driver, the others on the executor (a model the
    stage runs in a `ray.data.llm` processor, as its resources say, is described as such)."""
    runs = ps.op.runs_for(ps.params)
    if runs == "driver":
        return "driver: DuckDB (set-oriented SQL)" if ps.op.runs == "driver" else "driver"
    return executor.describe(Resources.of(ps.resources), runs == "model", ps.resources.get("ray_data_llm"))


def select_stages(stages: list[PlannedStage], targets: list[str] | None, recipe: Recipe) -> list[PlannedStage]:
    """The planned stages that `targets` (stage ids or table names) need: the targets and every stage upstream of
    them, in build order; all stages when there are no targets. The others are left as they are, so a later build
    of the whole recipe reuses what this one built."""
    if not targets:
        return stages
    by_stage = {ps.stage_id: ps for ps in stages}
    by_table = {t: ps.stage_id for ps in stages for t in ps.outputs}
    unknown = [t for t in targets if t not in by_stage and t not in by_table]
    if unknown:
        raise RecipeError(f"--target names no stage or table of recipe {recipe.name}: {', '.join(unknown)} (stages: "
                          f"{', '.join(by_stage)})", file=recipe.source)
    needed: set[str] = set()
    todo = [t if t in by_stage else by_table[t] for t in targets]
    while todo:
        stage_id = todo.pop()
        if stage_id not in needed:
            needed.add(stage_id)
            todo.extend(r.producer for r in by_stage[stage_id].inputs if r.producer)
    return [ps for ps in stages if ps.stage_id in needed]
