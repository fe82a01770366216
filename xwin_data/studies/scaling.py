"""Data-scaling study: SFT on each nested subset (`sft_sharegpt_<size>`), evaluate, plot quality against size.

    xwin-data study scaling recipes/scaling.yaml [--set train.overrides.max_steps=20 ...]

Training goes through the training layer (`train/sft.py` via `xwin_data.training.scripts.run_script`, the script
`xwin-data train sft` runs), from a base training config plus overrides; every run lands in the catalog's `runs`
table. Each size is keyed by its subset table's fingerprint and a hash of the resolved training config: a finished
size is not trained again (its model path is kept in `<folder>/state/train-<key>.json`), and an evaluation is
keyed by the training key, the evaluator settings and the reference data, so changing the evaluator re-evaluates
the stored models without retraining. A killed study resumes at the first unfinished size.

Outputs (as the other studies): `<folder>/results.parquet` (one row per size: win rate and 95% bootstrap CI,
counts, model path, keys), `per_prompt.parquet`, `summary.json` and `scaling.png` (win rate against assistant
turns on a log-x axis, with the CI band).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xwin_data.core.catalog import Catalog
from xwin_data.core.errors import OverrideError
from xwin_data.core.fingerprint import stable_hash
from xwin_data.core.overrides import apply_overrides, load_yaml_file
from xwin_data.studies.judge import StudyError
from xwin_data.studies.output import study_dir, write_results
from xwin_data.studies.scaling_eval import (EvaluatorSpec, conversation_key, evaluator_identity, make_evaluator,
                                           reference_items)

PROJECT_DIR = Path(__file__).resolve().parents[2]
# Fields of the training config that say where things go, not what is trained.
NOT_IN_TRAIN_KEY = {"output_dir", "catalog", "stage_name", "record_run", "logging_dir", "run_name"}


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field("sft", pattern="^(sft|rs)$", description="training script of train/ (sft or rs)")
    config: str | None = Field(None, description="base training config (YAML); null: the shipped "
                               "train/configs/<kind>.yaml")
    overrides: dict[str, Any] = Field(default_factory=dict, description="fields of the training config to change")


class ScalingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "scaling"
    description: str = ""
    subsets: str = Field("sft_sharegpt_subsets", description="manifest table of the nested_subsets stage "
                         "(size, table_name); ignored when `tables` is given")
    tables: list[str] | None = Field(None, description="explicit subset tables (size = their assistant turns)")
    sizes: list[int] | None = Field(None, description="only these sizes of the manifest")
    source_table: str = Field("sft_sharegpt", description="the table the subsets were cut from (holdout prompts)")
    heldout_table: str | None = Field("sft_sharegpt_heldout", description="conversations the recipe set aside "
                                      "before cutting the subsets: the held-out prompts when the table exists "
                                      "(else: conversations of source_table in no subset)")
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluator: EvaluatorSpec = Field(default_factory=EvaluatorSpec)


def load_scaling_config(path: str | Path, sets: list[str] | None = None) -> ScalingConfig:
    """YAML + `--set a.b=value` overrides; `${recipe_dir}` / `${project_dir}` are replaced in strings."""
    from xwin_data.core.recipe import interpolate

    path = Path(path)
    if not path.is_file():
        raise StudyError(f"no study config {path}")
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study config is a YAML mapping")
    try:
        apply_overrides(data, list(sets or []))
    except OverrideError as err:
        raise StudyError(str(err)) from None
    data = interpolate(data, {"recipe_dir": str(path.resolve().parent), "project_dir": str(PROJECT_DIR)}, str(path))
    try:
        return ScalingConfig.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"])
        msg = f"unknown key {where!r}" if e["type"] == "extra_forbidden" else f"{where}: {e['msg']}"
        raise StudyError(f"{path}: {msg}") from None


def _distinct_sizes(rows: list[dict], manifest: str, log) -> list[dict]:
    """Sizes larger than the data all hold the same conversations (the whole data, `complete = false`): train
    the smallest of them once and say which sizes were kept and which were not."""
    kept, dropped = [], []
    for r in rows:
        if r["complete"] or not any(not k["complete"] for k in kept):
            kept.append(r)
        else:
            dropped.append(r["size"])
    if dropped:
        whole = next(r for r in kept if not r["complete"])
        log(f"sizes {dropped} are larger than the data ({manifest}: {whole['table']} already holds all "
            f"{whole['conversations']:,} conversations); kept sizes {[r['size'] for r in kept]}")
    return kept


def subset_plan(catalog: Catalog, cfg: ScalingConfig, log=print) -> list[dict]:
    """[{size, table, fingerprint, conversations}] in increasing size, every table present in the catalog; of the
    sizes larger than the data only the first is kept (the others are the same table)."""
    from xwin_data.core.connection import connect

    con = connect(catalog, canned_views=False)
    try:
        if cfg.tables:
            rows = []
            for t in cfg.tables:
                if catalog.current(t) is None:
                    raise StudyError(f"subset table {t!r} is not in catalog {catalog.root}")
                turns, convs = con.execute(
                    f"SELECT count_if(m.role = 'assistant'), count(DISTINCT k) FROM "
                    f"(SELECT {conversation_key(con, t)} AS k, unnest(messages) AS m FROM \"{t}\")").fetchone()
                rows.append({"size": int(turns), "table": t, "conversations": int(convs)})
        else:
            if catalog.current(cfg.subsets) is None:
                raise StudyError(f"no manifest table {cfg.subsets!r} in catalog {catalog.root}: build "
                                 "recipes/sharegpt_sft.yaml first, or list subset tables under `tables:`")
            cols = {r[0] for r in con.execute(f'DESCRIBE SELECT * FROM "{cfg.subsets}"').fetchall()}
            complete = "complete" if "complete" in cols else "true"
            rows = [{"size": int(s), "table": t, "conversations": int(c), "complete": bool(k)}
                    for s, t, c, k in con.execute(f'SELECT size, table_name, conversations, {complete} '
                                                  f'FROM "{cfg.subsets}" ORDER BY size').fetchall()]
            if cfg.sizes:
                missing = sorted(set(cfg.sizes) - {r["size"] for r in rows})
                if missing:
                    raise StudyError(f"sizes {missing} are not in {cfg.subsets} (it has "
                                     f"{[r['size'] for r in rows]})")
                rows = [r for r in rows if r["size"] in cfg.sizes]
            rows = _distinct_sizes(rows, cfg.subsets, log)
    finally:
        con.close()
    if not rows:
        raise StudyError("no subsets to train on")
    for r in rows:
        tv = catalog.current(r["table"])
        if tv is None:
            raise StudyError(f"subset table {r['table']!r} (from {cfg.subsets}) is not in catalog {catalog.root}")
        r["fingerprint"] = tv.fingerprint
    return sorted(rows, key=lambda r: r["size"])


def training_settings(cfg: ScalingConfig) -> dict:
    """The base config file with the study's overrides applied (what gets hashed into each size's key)."""
    from xwin_data.training.scripts import default_config

    path = Path(cfg.train.config) if cfg.train.config else default_config(cfg.train.kind)
    if not path.is_file():
        raise StudyError(f"train.config {path} does not exist")
    base = load_yaml_file(path) or {}
    return {**base, **cfg.train.overrides}


def _argv(settings: dict, **fixed: Any) -> list[str]:
    """key=value overrides for the training script; values as JSON, which the override reader (YAML) reads back
    exactly, lists and mappings included."""
    return [f"{k}={json.dumps(v)}" for k, v in {**settings, **fixed}.items()]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train_size(catalog: Catalog, cfg: ScalingConfig, settings: dict, sub: dict, folder: Path,
               train_key: str) -> dict:
    """Train one subset through train/<kind>.py; the run record of the training layer."""
    from xwin_data.training.scripts import run_script

    out_dir = folder / "models" / f"{sub['size']}-{train_key[:12]}"
    fixed = {"table": sub["table"], "output_dir": str(out_dir), "catalog": str(catalog.root),
             "stage_name": f"{cfg.name}_{sub['size']}", "bon_eval_prompts_table": ""}
    body = {k: v for k, v in settings.items() if k not in fixed and k != "config"}
    record = run_script(cfg.train.kind, _argv(body, **fixed))
    if not record or not (out_dir / "config.json").is_file():
        raise StudyError(f"training on {sub['table']} saved no model in {out_dir}")
    return record


def run_scaling_study(catalog: Catalog, cfg: ScalingConfig, out: Path | None = None, log=print) -> dict:
    from xwin_data.llm.cache import RequestCache

    subsets = subset_plan(catalog, cfg, log)
    settings = training_settings(cfg)
    folder = study_dir(catalog, cfg.name, out)
    state = folder / "state"
    state.mkdir(exist_ok=True)
    heldout = cfg.heldout_table if cfg.heldout_table and catalog.current(cfg.heldout_table) is not None else None
    items, ref_ident = reference_items(catalog, cfg.evaluator, cfg.source_table, [s["table"] for s in subsets],
                                       heldout_table=heldout)
    log(f"held-out prompts: {len(items)} from " + (heldout or f"{cfg.source_table} (conversations in no subset)"
                                                     if cfg.evaluator.reference == "holdout" else cfg.evaluator.reference))
    eval_ident = evaluator_identity(cfg.evaluator)
    cache = RequestCache(catalog.cache_dir / "scaling_eval.sqlite")
    evaluator = None
    rows, per_prompt, trained, reused = [], [], [], []
    try:
        for sub in subsets:
            train_key = stable_hash({"kind": cfg.train.kind, "table": sub["table"], "fingerprint": sub["fingerprint"],
                                     "config": {k: v for k, v in settings.items() if k not in NOT_IN_TRAIN_KEY}})
            tstate_path = state / f"train-{train_key}.json"
            tstate = _read_json(tstate_path)
            if tstate and Path(tstate["model_path"], "config.json").is_file():
                reused.append(sub["size"])
                log(f"size {sub['size']}: trained model reused ({tstate['model_path']})")
            else:
                log(f"size {sub['size']}: training on {sub['table']} ({sub['conversations']} conversations)")
                started = time.perf_counter()
                record = train_size(catalog, cfg, settings, sub, folder, train_key)
                tstate = {"train_key": train_key, "size": sub["size"], "table": sub["table"],
                          "table_fingerprint": sub["fingerprint"], "model_path": record["output_dir"],
                          "run_id": record.get("run_id"), "seconds": time.perf_counter() - started,
                          "metrics": record.get("metrics", {})}
                _write_json(tstate_path, tstate)
                trained.append(sub["size"])
            eval_key = stable_hash({"train_key": train_key, "evaluator": eval_ident, "reference": ref_ident})
            estate_path = state / f"eval-{eval_key}.json"
            estate = _read_json(estate_path)
            if estate is None:
                if evaluator is None:
                    evaluator = make_evaluator(cfg.evaluator, cache)
                log(f"size {sub['size']}: evaluating ({cfg.evaluator.kind}, {len(items)} prompts)")
                records, summary = evaluator(tstate["model_path"], items)
                estate = {"eval_key": eval_key, "summary": summary, "records": records}
                _write_json(estate_path, estate)
            s = estate["summary"]
            rows.append({"size": sub["size"], "table": sub["table"], "table_fingerprint": sub["fingerprint"],
                         "conversations": sub["conversations"], "train_key": train_key, "eval_key": eval_key,
                         "model_path": tstate["model_path"], "run_id": tstate.get("run_id"),
                         "evaluator": cfg.evaluator.kind, "win_rate": s["win_rate"], "ci_low": s["ci_low"],
                         "ci_high": s["ci_high"], "n": s["n"], "win": s["win"], "tie": s["tie"], "loss": s["loss"],
                         "invalid": s["invalid"], "mean_gap": s.get("mean_gap"),
                         "trained_now": sub["size"] in trained})
            per_prompt += [{"size": sub["size"], **{k: v for k, v in r.items() if not isinstance(v, (dict, list))}}
                           for r in estate["records"]]
    finally:
        cache.close()
    return _write_outputs(folder, cfg, rows, per_prompt, trained, reused, len(items))


def _write_outputs(folder: Path, cfg: ScalingConfig, rows: list[dict], per_prompt: list[dict], trained: list[int],
                   reused: list[int], n_items: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xwin_data.studies.plots import lines_with_ci

    label = "reward-model" if cfg.evaluator.kind == "reward_model" else f"judge {cfg.evaluator.judge.model}"
    png = lines_with_ci(folder / "scaling.png",
                        {f"win rate vs reference ({label})": {
                            "x": [r["size"] for r in rows], "y": [r["win_rate"] for r in rows],
                            "low": [r["ci_low"] for r in rows], "high": [r["ci_high"] for r in rows]}},
                        f"data scaling: {cfg.name} ({n_items} held-out prompts)",
                        "SFT subset size (assistant turns, log scale)", "win rate % (95% bootstrap CI)")
    pq.write_table(pa.Table.from_pylist(per_prompt), folder / "per_prompt.parquet")
    summary = {"study": "scaling", "name": cfg.name, "sizes": [r["size"] for r in rows], "trained": trained,
               "reused": reused, "evaluator": cfg.evaluator.kind, "prompts": n_items,
               "win_rate": {str(r["size"]): r["win_rate"] for r in rows}, "pngs": [str(png)], "folder": str(folder),
               "config": cfg.model_dump()}
    write_results(folder, rows, summary)
    return summary
