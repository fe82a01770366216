"""Recipes: YAML loaded into pydantic models, variables, `--set` overrides, errors that name file, line and key."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xwin_data.core.errors import OverrideError
from xwin_data.core.overrides import parse_override
from xwin_data.core.yaml_lines import LineMap, RecipeError, load_yaml_with_lines

IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")


class StageResources(BaseModel):
    """Per-stage resources on a cluster executor (the local executor runs on this machine whatever they say)."""

    model_config = ConfigDict(extra="forbid")
    cpus: float = Field(1.0, gt=0, description="CPUs per replica")
    gpus: float = Field(0.0, ge=0, description="GPUs per replica (a model stage: one model per replica)")
    replicas: int | None = Field(None, ge=1, description="replicas (model copies or parallel tasks); null: fill the cluster")


class ExecutorSpec(BaseModel):
    """Where the stages' batches run; `--executor` and `--ray-address` override it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("local", pattern=r"^(local|ray)$", description="local (this machine) or ray (a Ray cluster)")
    address: str | None = Field(None, description="Ray cluster address (auto, ray://host:10001, host:6379); "
                                                  "null starts a Ray for the build")


class StageSpec(BaseModel):
    """One stage: an op applied to named input tables, writing one table (or a declared family of tables)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(pattern=IDENT, description="stage id; also the output table name unless `table` is set")
    op: str = Field(description="registered op name, see `xwin-data ops`")
    inputs: list[str] = Field(default_factory=list, description="stage ids of this recipe or tables in the catalog")
    params: dict[str, Any] = Field(default_factory=dict, description="op parameters, validated by the op")
    table: str | None = Field(default=None, pattern=IDENT, description="output table name (default: the id)")
    table_schema: str | None = Field(default=None, alias="schema", description="schema in schemas/ to validate against")
    description: str = ""
    resources: StageResources = Field(default_factory=lambda: StageResources(),
                                      description="what one replica of the stage needs on a cluster, and how many run")

    @property
    def table_name(self) -> str:
        return self.table or self.id


class Recipe(BaseModel):
    """A whole recipe. `vars` are free settings that stages refer to as `${name}` or `${name.key}`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=IDENT)
    description: str = ""
    vars: dict[str, Any] = Field(default_factory=dict)
    executor: ExecutorSpec = Field(default_factory=lambda: ExecutorSpec())
    stages: list[StageSpec] = Field(min_length=1)

    # Filled by the loader, not by YAML.
    source: str | None = Field(default=None, exclude=True)
    lines: Any = Field(default=None, exclude=True)

    def line_of(self, *path: Any) -> int | None:
        return self.lines.line_of(path) if isinstance(self.lines, LineMap) else None

    def stage_line(self, stage_id: str, *rest: Any) -> int | None:
        for i, st in enumerate(self.stages):
            if st.id == stage_id:
                return self.line_of("stages", i, *rest)
        return None

    def error(self, message: str, path: tuple = (), key: str | None = None) -> RecipeError:
        return RecipeError(message, file=self.source, line=self.line_of(*path) if path else None, key=key)


# ---------------------------------------------------------------------------------------------- overrides
def parse_set(expr: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value), by the toolkit's one override reader (core/overrides.py)."""
    try:
        return parse_override(expr)
    except OverrideError as err:
        raise RecipeError(str(err), key=expr) from None


def _resolve_set_path(data: dict, parts: list[str]) -> list:
    """Turn a user key into a concrete path into the raw recipe dict."""
    top = parts[0]
    stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    stage_ids = {st.get("id"): i for i, st in enumerate(stages) if isinstance(st, dict)}
    if top == "stages" and len(parts) > 1:
        sel = parts[1]
        idx = stage_ids.get(sel, int(sel) if sel.isdigit() else None)
        if idx is None:
            raise RecipeError(f"no stage {sel!r} (stages: {', '.join(stage_ids)})", key=".".join(parts))
        return ["stages", idx, *parts[2:]]
    if top in Recipe.model_fields and top not in ("source", "lines"):
        return list(parts)
    vars_ = data.get("vars") or {}
    if top in vars_:
        return ["vars", *parts]
    if top in stage_ids:
        return ["stages", stage_ids[top], *parts[1:]]
    known = sorted(vars_) + sorted(stage_ids)
    raise RecipeError(
        f"unknown key {parts[0]!r}: not a recipe field, a variable or a stage id (known: {', '.join(known)})",
        key=".".join(parts),
    )


def apply_sets(data: dict, sets: list[str]) -> dict:
    data = copy.deepcopy(data)
    for expr in sets:
        parts, value = parse_set(expr)
        path = _resolve_set_path(data, parts)
        node: Any = data
        for i, key in enumerate(path[:-1]):
            nxt = node[key] if isinstance(node, list) else node.get(key)
            if nxt is None:
                if path[0] == "vars" and i == 1:
                    raise RecipeError(f"variable {path[1]!r} is not a mapping", key=".".join(parts))
                nxt = {}
                node[key] = nxt
            if not isinstance(nxt, (dict, list)):
                raise RecipeError(f"cannot set inside {key!r}: it is a {type(nxt).__name__}", key=".".join(parts))
            node = nxt
        node[path[-1]] = value
    return data


# ---------------------------------------------------------------------------------------------- variables
MAX_TEXT = 1 << 20  # an interpolated string longer than this is a recipe mistake (or a doubling bomb)


def interpolate(value: Any, variables: dict[str, Any], where: str = "", _chain: tuple[str, ...] = ()) -> Any:
    """Replace `${name}` / `${name.key}` in strings; a string that is only `${x}` takes x's value and type.
    `_chain` holds the variables being resolved, so a cycle (a: ${b}, b: ${a}) is an error, not a recursion."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables, where, _chain) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables, where, _chain) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def resolve(name: str) -> Any:
        top = name.split(".")[0]
        if top in _chain:
            cycle = " → ".join(f"${{{n}}}" for n in (*_chain[_chain.index(top):], top))
            raise RecipeError(f"variables refer to each other in a cycle: {cycle}", key=where)
        return interpolate(_lookup(name, variables, where), variables, where, (*_chain, top))

    whole = _VAR.fullmatch(value)
    if whole:
        return resolve(whole.group(1))
    out = _VAR.sub(lambda m: str(resolve(m.group(1))), value)
    if len(out) > MAX_TEXT:
        raise RecipeError(f"a value grows to {len(out):,} characters once variables are filled in "
                          f"(limit {MAX_TEXT:,})", key=where)
    return out


def interpolate_vars(vars_: dict[str, Any], builtins: dict[str, Any], source: str, lines: LineMap) -> dict:
    """The recipe's variables with references among them filled in; an error names the variable's line."""
    everything = {**builtins, **vars_}
    out = dict(builtins)
    for name, value in vars_.items():
        try:
            out[name] = interpolate(value, everything, f"vars.{name}", (name,))
        except RecipeError as err:
            raise RecipeError(str(err).split(": ", 1)[-1], file=source, line=lines.line_of(("vars", name)),
                              key=f"vars.{name}") from None
    return out


def _lookup(name: str, variables: dict[str, Any], where: str) -> Any:
    node: Any = variables
    for part in name.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise RecipeError(f"unknown variable ${{{name}}} (variables: {', '.join(sorted(variables))})", key=where)
    return node


def interpolate_sql(value: Any, variables: dict[str, Any], where: str = "") -> Any:
    """`${var}` inside recipe SQL: typed literals (see `sql_guard.render_sql`), never pasted text. A value that
    is only `${x}` is SQL kept in a variable and is taken as written; a mapping holds one SQL text per key."""
    from xwin_data.core.sql_guard import SqlRefused, render_sql

    if isinstance(value, dict):
        return {k: interpolate_sql(v, variables, where) for k, v in value.items()}
    if not isinstance(value, str) or "${" not in value:
        return value
    if _VAR.fullmatch(value):
        return interpolate(value, variables, where)
    try:
        return render_sql(value, lambda name: interpolate(_lookup(name, variables, where), variables, where), where)
    except SqlRefused as err:
        raise RecipeError(str(err), key=where) from None


def interpolate_params(op: str, params: dict[str, Any], variables: dict[str, Any], where: str = "") -> dict:
    """Interpolate a stage's params; those its op declares as SQL get typed substitution."""
    from xwin_data.core.registry import get_op

    op_cls = get_op(op) if isinstance(op, str) else None
    sql_keys = getattr(op_cls, "sql_params", {}) or {}
    return {k: (interpolate_sql(v, variables, f"{where}.{k}") if k in sql_keys else interpolate(v, variables, where))
            for k, v in params.items()}


# ---------------------------------------------------------------------------------------------- loading
def _format_loc(loc: tuple, stage_ids: list[str] | None = None) -> str:
    """`stages.1.params.x` reads better as `kept.params.x`."""
    if stage_ids and len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int) and loc[1] < len(stage_ids):
        loc = (stage_ids[loc[1]],) + tuple(loc[2:])
    return ".".join(str(p) for p in loc)


def _raise_validation(err: ValidationError, source: str, lines: LineMap, prefix: tuple = (),
                      stage_ids: list[str] | None = None) -> None:
    # A misspelt key shows up as both "unknown" and "missing": the unknown one names what to fix.
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = prefix + tuple(first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}"
    elif first["type"] == "missing":
        msg = f"missing required key {loc[-1]!r}"
    more = len(err.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    raise RecipeError(msg, file=source, line=lines.line_of(loc), key=_format_loc(loc, stage_ids)) from None


def load_recipe(path: str | Path, sets: list[str] | None = None) -> Recipe:
    """Load, override, validate and interpolate a recipe. Op params are validated by `validate_ops`."""
    path = Path(path)
    data, lines = load_yaml_with_lines(path)
    source = str(path)
    if not isinstance(data, dict):
        raise RecipeError("a recipe is a mapping with `name` and `stages`", file=source, line=1)
    try:
        data = apply_sets(data, sets or [])
    except RecipeError as err:
        raise RecipeError(str(err).split(": ", 1)[-1] if err.key else str(err), file=f"{source} (--set)",
                          key=err.key) from None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        ids = [st.get("id") if isinstance(st, dict) else None for st in data.get("stages") or []]
        _raise_validation(err, source, lines, stage_ids=[str(i) for i in ids])
    recipe.source, recipe.lines = source, lines
    seen: dict[str, int] = {}
    for i, st in enumerate(recipe.stages):
        if st.id in seen:
            raise recipe.error(f"duplicate stage id {st.id!r}", ("stages", i, "id"), key=f"stages[{i}].id")
        seen[st.id] = i
    builtins = {"recipe_dir": str(path.resolve().parent), "project_dir": str(Path(__file__).resolve().parents[2])}
    variables = interpolate_vars(recipe.vars, builtins, source, lines)
    for i, st in enumerate(recipe.stages):
        try:
            st.params = interpolate_params(st.op, st.params, variables, f"stages[{i}].params")
        except RecipeError as err:
            raise RecipeError(str(err).split(": ", 1)[-1], file=source, line=recipe.line_of("stages", i, "params"),
                              key=f"{st.id}.params") from None
    recipe.vars = variables
    return recipe


def validate_params(recipe: Recipe, index: int, model: type[BaseModel]) -> BaseModel:
    """Validate one stage's params with its op's model, errors naming the params line."""
    st = recipe.stages[index]
    try:
        return model.model_validate(st.params)
    except ValidationError as err:
        _raise_validation(err, recipe.source or "<recipe>", recipe.lines or LineMap(), ("stages", index, "params"),
                          [s.id for s in recipe.stages])
        raise  # unreachable
