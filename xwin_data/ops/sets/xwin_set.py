"""Xwin-Set sampling: k distinct responses per prompt from a policy (`sample_unique`); `reward_scoring.py` scores
and ranks them.

`sample_unique` samples in rounds until a prompt has `n_unique` responses that differ after whitespace and case
normalisation, or until `max_samples` draws; what a prompt lacks is written to `<table>_shortfall`, never hidden.
Every draw goes through the request cache (sample j of a prompt has its own seed), so a killed build resumes
without sampling again, and a rebuild reproduces the same responses. This module chooses the prompts and splits
them into units; `sample_rounds.py` samples a unit with one replica of the policy, and `sample_on_ray.py` drives the
rounds through `ray.data.llm` where the policy runs on vLLM on a Ray cluster.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from xwin_data.conversation import MESSAGES_SQL_TYPE, ROLES_SQL, prompt_turns_sql
from xwin_data.ops.base import Op, Params, register
from xwin_data.ops.sets.sample_on_ray import sample_on_ray
from xwin_data.ops.sets.sample_rounds import RESPONSES_SCHEMA, SHORTFALL_SCHEMA, ChunkSampler


def prompts_sql(source: str, columns: set[str], turns: str, max_prompts: int | None) -> tuple[str, str]:
    """(prompts query, drops query) over an input of prompts (`prompt` messages ending in a user turn) or of
    conversations (`messages`: the prompt is the first user turn, or everything up to the last user turn)."""
    ident = "id" if "id" in columns else "prompt_id" if "prompt_id" in columns else None
    if ident is None:
        raise ValueError(f"the prompts input needs an `id` or `prompt_id` column (has: {', '.join(sorted(columns))})")
    if "prompt" in columns:
        msgs = "prompt"
        cut = "m"
    elif "messages" in columns:
        msgs = "messages"
        cut = prompt_turns_sql("m", "first" if turns == "first" else "last")
    else:
        raise ValueError(f"the prompts input needs a `prompt` or `messages` column (has: {', '.join(sorted(columns))})")
    base = (f"SELECT CAST({ident} AS VARCHAR) AS prompt_id, {cut} AS prompt, "
            f"count(*) OVER (PARTITION BY {ident}) AS copies "
            f"FROM (SELECT *, CAST({msgs} AS {MESSAGES_SQL_TYPE}) AS m FROM {source})")
    bad = ("CASE WHEN prompt_id IS NULL THEN 'missing_id' WHEN copies > 1 THEN 'duplicate_prompt_id' "
           "WHEN prompt IS NULL OR len(prompt) = 0 OR prompt[-1].role <> 'user' THEN 'no_user_turn' "
           f"WHEN NOT list_bool_and(list_transform(prompt, lambda x: x.role IN {ROLES_SQL})) "
           "THEN 'unknown_role' "
           "WHEN length(trim(coalesce(prompt[-1].content, ''))) = 0 THEN 'empty_prompt' END")
    order = "md5(prompt_id)" if max_prompts else "prompt_id"
    limit = f" LIMIT {int(max_prompts)}" if max_prompts else ""
    keep = f"SELECT prompt_id, prompt FROM ({base}) WHERE ({bad}) IS NULL ORDER BY {order}{limit}"
    drops = (f"SELECT prompt_id AS source_id, {bad} AS reason, to_json(prompt)::VARCHAR AS detail "
             f"FROM ({base}) WHERE ({bad}) IS NOT NULL")
    return keep, drops


# Samples per chunk by default: several batches of a continuously batching engine (vLLM's default max_num_seqs
# is 256), so the engine is not left with a part-empty batch while a chunk's last sequences finish.
SAMPLES_PER_CHUNK = 1024


class SampleParams(Params):
    policy: dict[str, Any] = Field({}, description="generation backend spec (GeneratorSpec): "
                                   "backend, model, tokenizer, chat_template, base_url, batch_size, ...")
    sampling: dict[str, Any] = Field({}, description="SamplingConfig: temperature (default 1.0), "
                                     "top_p (1.0), top_k (-1, off), max_new_tokens, seed")
    n_unique: int = Field(64, ge=1, description="distinct responses wanted per prompt")
    max_samples: int | None = Field(None, ge=1, description="draws per prompt at most (default 4 x n_unique)")
    turns: Literal["first", "all_but_last"] = Field(
        "first", description="for a `messages` input: the prompt is the first user turn (with a leading system "
                             "message), or every turn up to the last user turn")
    max_prompts: int | None = Field(None, ge=1, description="use at most this many prompts (a seeded subset by "
                                                            "hash of the prompt id); null = all")
    prompts_per_chunk: int | None = Field(None, ge=1, description="prompts sampled to completion before the next "
                                          "ones: the unit of work and of progress (bounds memory); default: enough "
                                          f"for {SAMPLES_PER_CHUNK} samples (n_unique each), at least 8")
    placement: dict[str, Any] = Field({}, exclude=True, description="policy.replicas / gpus / tensor_parallel: "
                                      "where the policy runs on a cluster (never in the fingerprint)")

    @model_validator(mode="before")
    @classmethod
    def _placement(cls, data: Any) -> Any:
        """`policy.replicas`, `policy.gpus` and `policy.tensor_parallel` say where the policy runs, not what it
        makes: they move to `placement`, out of the spec that names the model."""
        from xwin_data.llm.spec import move_placement

        return move_placement(data, "policy")

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: dict) -> dict:
        from xwin_data.llm.generation import GeneratorSpec

        return GeneratorSpec.model_validate(v).model_dump()

    @field_validator("sampling")
    @classmethod
    def _sampling(cls, v: dict) -> dict:
        from xwin_data.llm.generation import SamplingConfig

        return SamplingConfig.model_validate(v).model_dump()

    @model_validator(mode="after")
    def _cap(self) -> "SampleParams":
        if self.max_samples is None:
            self.max_samples = 4 * self.n_unique
        return self


def chunk_prompts(params: SampleParams) -> int:
    """Prompts per unit of work: the recipe's `prompts_per_chunk`, or enough for SAMPLES_PER_CHUNK samples."""
    return params.prompts_per_chunk or max(8, math.ceil(SAMPLES_PER_CHUNK / params.n_unique))


@register
class SampleUnique(Op):
    """n_unique distinct responses per prompt from a policy, in cached rounds; shortfalls in <table>_shortfall."""

    name = "sample_unique"
    needs = {("id", "prompt_id"), ("prompt", "messages")}
    adds = set(RESPONSES_SCHEMA.names)
    Params = SampleParams
    schema = None
    min_inputs = max_inputs = 1
    version = "1"
    runs = "model"
    summary = "sample until n_unique distinct (normalised) responses per prompt, capped; shortfall table"

    def output_tables(self, table: str, params: SampleParams) -> list[str]:
        return [table, f"{table}_shortfall"]

    def output_columns(self, table: str, main: str, params: SampleParams, input_columns: set | None) -> set:
        return set((RESPONSES_SCHEMA if table == main else SHORTFALL_SCHEMA).names)

    def output_unit(self, table: str, main: str, params: SampleParams) -> str:
        return "responses" if table == main else "prompts"

    def resources(self, params: SampleParams, declared: dict) -> dict:
        from xwin_data.llm.generation import GeneratorSpec
        from xwin_data.llm.spec import Placement

        on_llm = GeneratorSpec.model_validate(params.policy).backend == "vllm"  # on Ray: a ray.data.llm processor
        return Placement.model_validate(params.placement).resources(declared, "generate" if on_llm else None)

    def external_fingerprint(self, params: SampleParams) -> dict:
        from xwin_data.llm.generation import GeneratorSpec

        spec = GeneratorSpec.model_validate(params.policy)
        return {"policy": f"{spec.backend}:{spec.identity()}", "backend_code": spec.code_fingerprint()}

    def estimate(self, view, params: SampleParams) -> dict | None:
        rows = view.input_rows(0)
        if rows is None:
            return None
        prompts = min(rows, params.max_prompts or rows)
        return {"prompts": prompts, "samples_at_least": prompts * params.n_unique,
                "samples_at_most": prompts * params.max_samples}

    def run(self, ctx, params: SampleParams) -> None:
        from xwin_data.core.executors import Model, Resources, Unit
        from xwin_data.llm.generation import GeneratorSpec, SamplingConfig

        con = ctx.con
        columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {ctx.input()}").fetchall()}
        keep_sql, drops_sql = prompts_sql(ctx.input(), columns, params.turns, params.max_prompts)
        ctx.drop_sql(drops_sql, unit="prompts")
        prompts = con.sql(keep_sql).to_arrow_table().to_pylist()
        sampling = SamplingConfig.model_validate(params.sampling)
        greedy = sampling.temperature == 0
        totals = {"prompts": len(prompts), "responses": 0, "samples_drawn": 0, "duplicates": 0, "blank": 0,
                  "prompts_short": 0, "prompts_failed": 0, "rounds": 0, "samples_cached": 0, "samples_generated": 0,
                  "tokens_generated": 0}
        # One unit per chunk of prompts, sampled to completion by one replica of the policy; per-sample seeds,
        # not the replica or the order, decide every response.
        step = chunk_prompts(params)
        units = [Unit(("prompts", [p["prompt_id"] for p in prompts[lo:lo + step]]), prompts[lo:lo + step],
                      len(prompts[lo:lo + step])) for lo in range(0, len(prompts), step)]
        spec = GeneratorSpec.model_validate(params.policy)
        on_llm = getattr(ctx.executor, "name", "") == "ray" and spec.backend == "vllm"
        dumped = params.model_dump(mode="json")
        worker = Model(ChunkSampler, {"policy": dumped["policy"], "sampling": dumped["sampling"],
                                      "n_unique": params.n_unique, "max_samples": int(params.max_samples),
                                      "cache_path": str(ctx.cache_dir / "generation.sqlite"),
                                      "outputs": ctx.outputs, "deferred": on_llm})
        # At least n_unique samples per prompt are drawn (more where duplicates come back): the bar's total is
        # that lower bound, so it shows a rate and an ETA from the first finished chunk on.
        with ctx.track("samples", len(prompts) * (1 if greedy else params.n_unique), unit="samples") as samples_bar, \
                ctx.track("generated tokens", None, unit="tokens") as tokens_bar:
            prefill = None
            if on_llm:  # every sample drawn on vLLM engine replicas first; the units below then read the cache
                prefill = sample_on_ray(ctx, params, spec, sampling, prompts, samples_bar, tokens_bar)

            def record(extra: dict) -> None:
                for pid, why in extra.pop("failed"):
                    ctx.drop(pid, "prompt_too_long", why, unit="prompts")
                for name, value in extra.items():
                    totals[name] = totals.get(name, 0) + value
                if prefill is None:
                    samples_bar.advance(extra["samples_generated"] + extra["samples_cached"])
                    tokens_bar.advance(extra["tokens_generated"])

            resources = None
            if prefill is not None:  # the units only read the cache: a CPU each, no GPU
                stage = Resources.of(ctx.resources)
                resources = Resources(cpus=1.0, gpus=0.0, replicas=stage.replicas)
            ctx.executor.run(ctx, worker, units, {ctx.table: RESPONSES_SCHEMA, ctx.outputs[1]: SHORTFALL_SCHEMA},
                             on_result=record, description="sampling unique responses", unit="prompts",
                             resources=resources)
        if prefill is not None:
            totals["samples_generated"] += prefill.generated
            totals["samples_cached"] -= prefill.generated
            totals["tokens_generated"] += prefill.tokens
            ctx.stats["ray_data_llm"] = {"engine_replicas": prefill.replicas, "rounds": prefill.rounds,
                                         "samples_generated": prefill.generated, "samples_cached": prefill.cached,
                                         "tensor_parallel": params.placement.get("tensor_parallel", 1)}
        ctx.stats.update({**totals, "n_unique": params.n_unique,
                          "max_samples": 1 if greedy else int(params.max_samples), "sampling": sampling.model_dump()})
        if totals["prompts_short"]:
            ctx.log(f"{totals['prompts_short']} of {len(prompts)} prompts have fewer than {params.n_unique} distinct "
                    f"responses: see table {ctx.outputs[1]}")


