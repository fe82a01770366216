"""Xwin-Pair, first half: k candidate responses per prompt from one or more policies, then candidate pairs.

`generate_candidates` samples through the generation interface (transformers / vllm / openai backends) with
every sample cached as it completes; `make_pairs` forms the pairs to judge in SQL (all pairs, or a seeded
random subset per prompt), drops pairs of identical responses with a reason, and randomises which side is
shown first so no policy is always "A" in the ab order.
"""
from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from xwin_data.conversation import MESSAGES_TYPE, ROLES, prompt_turns
from xwin_data.llm.generation import GeneratorSpec, SamplingConfig
from xwin_data.ops.base import Op, Params, register

CANDIDATES_SCHEMA = pa.schema([("candidate_id", pa.string()), ("prompt_id", pa.string()), ("policy", pa.string()),
                               ("sample_index", pa.int32()), ("prompt", MESSAGES_TYPE), ("response", pa.string()),
                               ("tokens", pa.int32()), ("finish_reason", pa.string())])
PROMPTS_SCHEMA = pa.schema([("id", pa.string()), ("messages", MESSAGES_TYPE)])

def upstream_estimate(plan_view, index: int = 0) -> dict | None:
    """The estimate of the stage that makes input `index`, when it runs in this build."""
    ref = plan_view.stage.inputs[index]
    producer = plan_view.planned.get(ref.producer) if ref.producer else None
    return producer.estimate if producer is not None else None


def upstream_rows(plan_view, index: int = 0) -> int | None:
    """Rows of input `index`: counted where it is built, else what its producing stage expects to write."""
    rows = plan_view.input_rows(index)
    if rows is not None:
        return rows
    up = upstream_estimate(plan_view, index) or {}
    return next((up[k] for k in ("pairs", "samples", "prompts", "rows") if up.get(k) is not None), None)


class PolicySpec(GeneratorSpec):
    """A policy: a generator spec plus the name its candidates are labelled with."""

    name: str | None = Field(None, description="label in the `policy` column (default: the model)")


class CandidatesParams(Params):
    policies: list[PolicySpec] = Field(default_factory=lambda: [PolicySpec()], min_length=1,
                                       description="one or more policies; each answers every prompt k times")
    k: int = Field(2, ge=1, description="candidates per prompt per policy")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=1.0, max_new_tokens=64))
    id_column: str = "id"
    messages_column: str = "messages"
    max_prompts: int | None = Field(None, ge=1, description="first N prompts only (by id)")


PROMPTS_PER_UNIT = 64


class CandidateSampler:
    """One replica of a policy: k cached samples for each prompt of a unit, as candidate rows sorted by prompt and
    sample; empty responses come back as drops. Loaded once per replica, wherever the executor runs it."""

    def __init__(self, spec: dict, index: int, label: str, k: int, sampling: dict, cache_path: str):
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.generation import make_generator

        self.gen = make_generator(GeneratorSpec.model_validate(spec))
        self.cache = RequestCache(cache_path)
        self.index, self.label, self.k = index, label, k
        self.sampling = SamplingConfig.model_validate(sampling)

    def __call__(self, prompts: list) -> tuple[pa.Table, dict]:
        from xwin_data.llm.generation import generate_cached

        turns_of = dict(prompts)
        rows, empty, stats = [], [], {}

        def done(pid, comps, cached) -> None:
            for j, c in enumerate(comps):
                if not c.text.strip():
                    empty.append((f"{pid}/{self.label}/{j}", c.finish_reason))
                    continue
                rows.append({"candidate_id": f"{pid}/{self.index}:{self.label}/{j}", "prompt_id": pid,
                             "policy": self.label, "sample_index": j, "prompt": turns_of[pid], "response": c.text,
                             "tokens": c.tokens, "finish_reason": c.finish_reason})

        generate_cached(self.gen, self.cache, [tuple(p) for p in prompts], self.k, self.sampling, on_done=done,
                        stats=stats)
        rows.sort(key=lambda r: (r["prompt_id"], r["sample_index"]))
        return (pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA),
                {"empty": empty, "samples": stats, "rows": len(rows)})

    def close(self) -> None:
        self.gen.close()
        self.cache.close()


@register
class GenerateCandidates(Op):
    """k sampled responses per prompt from each policy (cached per sample)."""

    name = "generate_candidates"
    adds = set(CANDIDATES_SCHEMA.names)
    Params = CandidatesParams
    min_inputs = max_inputs = 1
    version = "1"
    runs = "model"

    def input_columns(self, params: CandidatesParams) -> set:
        return {params.id_column, params.messages_column}

    def output_unit(self, table: str, main: str, params) -> str:
        return "responses"

    def external_fingerprint(self, params: CandidatesParams) -> dict:
        return {"models": [f"{p.backend}:{p.identity()}" for p in params.policies],
                "backend_code": sorted({p.code_fingerprint() for p in params.policies})}

    def estimate(self, plan_view, params: CandidatesParams) -> dict | None:
        rows = upstream_rows(plan_view)
        if rows is None:
            return None
        prompts = min(rows, params.max_prompts or rows)
        return {"prompts": prompts, "samples": prompts * params.k * len(params.policies)}

    def run(self, ctx, params: CandidatesParams) -> None:
        from xwin_data.core.context import quote_ident

        idc, mc = quote_ident(params.id_column), quote_ident(params.messages_column)
        limit = f" LIMIT {params.max_prompts}" if params.max_prompts else ""
        rows = ctx.con.sql(f"SELECT CAST({idc} AS VARCHAR) AS id, {mc} AS messages FROM {ctx.input()} "
                               f"ORDER BY 1{limit}").to_arrow_table().to_pylist()
        prompts = []
        for r in rows:
            turns = prompt_turns(r["messages"])
            if turns is None:
                ctx.drop(r["id"], "no_user_turn", r["messages"], unit="prompts")
            else:
                prompts.append((r["id"], turns))
        from xwin_data.core.executors import Model, Unit

        stats: dict = {}
        by_policy = {}
        for pi, spec in enumerate(params.policies):
            label = spec.name or spec.model
            # Units of prompts per policy, each sampled by one replica of that policy; seeds decide the samples.
            units = [Unit(("candidates", pi, [pid for pid, _ in prompts[lo:lo + PROMPTS_PER_UNIT]]),
                          prompts[lo:lo + PROMPTS_PER_UNIT], len(prompts[lo:lo + PROMPTS_PER_UNIT]))
                     for lo in range(0, len(prompts), PROMPTS_PER_UNIT)]
            worker = Model(CandidateSampler, {"spec": spec.model_dump(exclude={"name"}), "index": pi, "label": label,
                                              "k": params.k, "sampling": params.sampling.model_dump(),
                                              "cache_path": str(ctx.cache_dir / "generation.sqlite")})
            written = 0

            def record(extra: dict) -> None:
                nonlocal written
                for source_id, detail in extra["empty"]:
                    ctx.drop(source_id, "empty_response", detail)
                for name, value in extra["samples"].items():
                    stats[name] = stats.get(name, 0) + value
                written += extra["rows"]

            ctx.executor.run(ctx, worker, units, {ctx.table: CANDIDATES_SCHEMA}, on_result=record,
                             description=f"candidates from {label}", unit="prompts")
            by_policy[label] = written
        ctx.stats.update({"prompts": len(prompts), "candidates_by_policy": by_policy, "samples": stats})


class PairsParams(Params):
    strategy: Literal["all", "random"] = Field("all", description="all pairs per prompt, or a seeded random "
                                                                   "subset of max_pairs_per_prompt")
    max_pairs_per_prompt: int | None = Field(None, ge=1)
    cross_policy_only: bool = Field(False, description="only pair responses of different policies")
    seed: int = 0


@register
class MakePairs(Op):
    """Candidate pairs to judge, per prompt; identical responses are dropped with a reason."""

    name = "make_pairs"
    needs = {"prompt_id", "prompt", "candidate_id", "policy", "response"}
    adds = {"pair_id", "prompt_id", "prompt", "first_id", "first_policy", "first", "second_id", "second_policy",
            "second"}
    Params = PairsParams
    min_inputs = max_inputs = 1
    version = "1"

    def output_unit(self, table: str, main: str, params) -> str:
        return "pairs"

    def estimate(self, plan_view, params: PairsParams) -> dict | None:
        up = upstream_estimate(plan_view)
        if not up or not up.get("prompts"):
            return None
        k = up["samples"] // up["prompts"]
        per_prompt = k * (k - 1) // 2
        if params.max_pairs_per_prompt:
            per_prompt = min(per_prompt, params.max_pairs_per_prompt)
        return {"pairs": up["prompts"] * per_prompt}

    def run(self, ctx, params: PairsParams) -> None:
        from xwin_data.core.context import sql_str

        seed = sql_str(str(params.seed))
        cross = "AND x.policy <> y.policy" if params.cross_policy_only else ""
        ctx.con.execute(f"""
            CREATE TEMP TABLE all_pairs AS
            SELECT x.prompt_id, x.prompt, x.candidate_id AS x_id, y.candidate_id AS y_id,
                   x.policy AS x_policy, y.policy AS y_policy, x.response AS x_resp, y.response AS y_resp,
                   md5(x.candidate_id || '|' || y.candidate_id || '|' || {seed}) AS h
            FROM {ctx.input()} x JOIN {ctx.input()} y
              ON x.prompt_id = y.prompt_id AND x.candidate_id < y.candidate_id {cross}""")
        ctx.drop_sql("SELECT x_id || ' ~ ' || y_id AS source_id, 'identical_responses' AS reason, "
                     "left(x_resp, 200) AS detail FROM all_pairs WHERE trim(x_resp) = trim(y_resp)")
        limit = ""
        if params.strategy == "random" or params.max_pairs_per_prompt:
            n = params.max_pairs_per_prompt or 1
            order = "h" if params.strategy == "random" else "x_id, y_id"
            limit = f"QUALIFY row_number() OVER (PARTITION BY prompt_id ORDER BY {order}) <= {n}"
        # which side is shown first in the ab order is decided by a hash bit, not by candidate order
        ctx.write_sql(f"""
            SELECT md5(x_id || ' ~ ' || y_id) AS pair_id, prompt_id, prompt,
                   CASE WHEN flip THEN y_id ELSE x_id END AS first_id,
                   CASE WHEN flip THEN y_policy ELSE x_policy END AS first_policy,
                   CASE WHEN flip THEN y_resp ELSE x_resp END AS first,
                   CASE WHEN flip THEN x_id ELSE y_id END AS second_id,
                   CASE WHEN flip THEN x_policy ELSE y_policy END AS second_policy,
                   CASE WHEN flip THEN x_resp ELSE y_resp END AS second
            FROM (SELECT *, (ascii(right(h, 1)) % 2 = 1) AS flip FROM all_pairs
                  WHERE trim(x_resp) <> trim(y_resp) {limit})
            ORDER BY prompt_id, first_id, second_id""")
        ctx.stats["pairs"] = ctx.rows_written()


class PromptsParams(Params):
    path: str = Field(..., description="JSONL (or JSON list) of {id, prompt: text} or {id, messages: [...]}")
    system: str | None = Field(None, description="a system message put before each prompt")


@register
class ReadPrompts(Op):
    """Prompts from a small file: one JSON object per line with an id and a prompt text or messages."""

    name = "read_prompts"
    adds = set(PROMPTS_SCHEMA.names)
    Params = PromptsParams
    min_inputs = max_inputs = 0
    version = "1"

    def output_unit(self, table: str, main: str, params) -> str:
        return "prompts"

    def external_fingerprint(self, params: PromptsParams) -> dict:
        from xwin_data.core.fingerprint import path_fingerprint

        return {"file": path_fingerprint(params.path)}

    def estimate(self, plan_view, params: PromptsParams) -> dict | None:
        try:
            return {"prompts": len(_load_prompt_records(params.path))}
        except (OSError, ValueError):
            return None

    def run(self, ctx, params: PromptsParams) -> None:
        import json

        schema = PROMPTS_SCHEMA
        rows, seen = [], set()
        for line_no, rec in enumerate(_load_prompt_records(params.path), 1):
            if isinstance(rec, str):
                ctx.drop(f"line {line_no}", "bad_json", rec)
                continue
            rid = str(rec.get("id", line_no)) if isinstance(rec, dict) else str(line_no)
            msgs = None
            if isinstance(rec, dict) and isinstance(rec.get("messages"), list):
                msgs = [{"role": m.get("role"), "content": m.get("content")} for m in rec["messages"]
                        if isinstance(m, dict)]
                if any(m["role"] not in ROLES or not isinstance(m["content"], str)
                       for m in msgs):
                    ctx.drop(rid, "bad_messages", json.dumps(rec)[:500])
                    continue
            elif isinstance(rec, dict) and isinstance(rec.get("prompt"), str):
                msgs = [{"role": "user", "content": rec["prompt"]}]
            if not msgs or not any(m["role"] == "user" and m["content"].strip() for m in msgs):
                ctx.drop(rid, "no_prompt", json.dumps(rec)[:500])
                continue
            if rid in seen:
                ctx.drop(rid, "duplicate_id", json.dumps(rec)[:500])
                continue
            seen.add(rid)
            if params.system and msgs[0]["role"] != "system":
                msgs = [{"role": "system", "content": params.system}] + msgs
            rows.append({"id": rid, "messages": msgs})
        with ctx.writer(schema) as out:
            out.write(rows)


def _load_prompt_records(path: str) -> list:
    """Parsed records; a line that is not JSON is returned as its raw text (a drop, not a crash)."""
    import json
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    out: list = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append(line)
    return out
