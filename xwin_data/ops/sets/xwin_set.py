"""Xwin-Set sampling: k distinct responses per prompt from a policy (`sample_unique`); `reward_scoring.py` scores
and ranks them.

`sample_unique` samples in rounds until a prompt has `n_unique` responses that differ after whitespace and case
normalisation, or until `max_samples` draws; what a prompt lacks is written to `<table>_shortfall`, never hidden.
Every draw goes through the request cache (sample j of a prompt has its own seed), so a killed build resumes
without sampling again, and a rebuild reproduces the same responses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from xwin_data.conversation import MESSAGES_SQL_TYPE, MESSAGES_TYPE, ROLES_SQL, prompt_turns_sql
from xwin_data.ops.base import Op, Params, register

RESPONSES_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("prompt", MESSAGES_TYPE), ("response_id", pa.string()), ("sample_index", pa.int32()),
    ("attempt", pa.int32()), ("response", pa.string()), ("tokens", pa.int32()), ("finish_reason", pa.string()),
    ("policy", pa.string()),
])
SHORTFALL_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("wanted", pa.int32()), ("unique_responses", pa.int32()), ("shortfall", pa.int32()),
    ("samples_drawn", pa.int32()), ("duplicates", pa.int32()), ("blank", pa.int32()), ("reason", pa.string()),
])


def normalise(text: str) -> str:
    """What makes two responses the same: equal after collapsing whitespace and folding case."""
    return " ".join(text.split()).casefold()


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


@dataclass
class PromptState:
    prompt_id: str
    prompt: list[dict]
    kept: list[tuple[int, Any]] = field(default_factory=list)  # (attempt, Completion)
    seen: set[str] = field(default_factory=set)
    drawn: int = 0
    duplicates: int = 0
    blank: int = 0
    failed: str | None = None  # why this prompt cannot be sampled (it becomes a drop)

    def take(self, completions: list, first_attempt: int, wanted: int) -> None:
        for j, comp in enumerate(completions):
            key = normalise(comp.text)
            if not key:
                self.blank += 1
            elif key in self.seen:
                self.duplicates += 1
            elif len(self.kept) < wanted:
                self.seen.add(key)
                self.kept.append((first_attempt + j, comp))
        self.drawn = max(self.drawn, first_attempt + len(completions))


def next_round(state: PromptState, wanted: int, cap: int) -> int:
    """Draws for the next round: what is missing, scaled by the yield of distinct responses so far, rounded up to
    a power of two (prompts in the same situation share a call), within the cap."""
    need = wanted - len(state.kept)
    if state.drawn == 0:
        return min(cap, wanted)
    rate = max(len(state.kept) / state.drawn, 1 / 8)
    return max(0, min(cap - state.drawn, 1 << max(0, math.ceil(math.log2(max(1, need / rate))))))


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
        from xwin_data.llm.spec import Placement

        return Placement.model_validate(params.placement).resources(declared)

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
        worker = Model(ChunkSampler, {"params": params.model_dump(mode="json"),
                                      "cache_path": str(ctx.cache_dir / "generation.sqlite"),
                                      "outputs": ctx.outputs, "deferred": on_llm})
        # At least n_unique samples per prompt are drawn (more where duplicates come back): the bar's total is
        # that lower bound, so it shows a rate and an ETA from the first finished chunk on.
        with ctx.track("samples", len(prompts) * (1 if greedy else params.n_unique), unit="samples") as samples_bar, \
                ctx.track("generated tokens", None, unit="tokens") as tokens_bar:
            prefill = None
            if on_llm:  # every sample drawn on vLLM engine replicas first; the units below then read the cache
                prefill = self._sample_on_ray(ctx, params, spec, sampling, prompts, samples_bar, tokens_bar)

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

    @staticmethod
    def _sample_on_ray(ctx, params: SampleParams, spec, sampling, prompts: list[dict], samples_bar, tokens_bar):
        """Every sample the stage will ask for, drawn through `ray.data.llm` on vLLM engine replicas and stored in
        the request cache (see `xwin_data.llm.ray_llm`)."""
        from xwin_data.core.executors import Resources
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.ray_llm import RaySampler

        greedy = sampling.temperature == 0
        wanted = 1 if greedy else params.n_unique
        cap = 1 if greedy else int(params.max_samples)
        ray = ctx.executor.connected()
        stage = Resources.of(ctx.resources)
        tp = int(params.placement.get("tensor_parallel") or 1)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if stage.replicas or not gpus:
            replicas = ctx.executor.replicas(stage, True, len(prompts) * wanted) or 1
        else:  # as many engines as the cluster's GPUs hold, tensor_parallel GPUs each
            replicas = max(1, gpus // tp)

        def progress(samples: int, tokens: int) -> None:
            samples_bar.advance(samples)
            tokens_bar.advance(tokens)

        with RequestCache(str(ctx.cache_dir / "generation.sqlite")) as cache:
            sampler = RaySampler(spec, sampling, cache, replicas=replicas,
                                 tensor_parallel=params.placement.get("tensor_parallel"), ray=ray)
            return sampler.run(prompts, wanted, cap, PromptState, next_round, on_samples=progress)

    @staticmethod
    def _sample_chunk(gen, cache, states, sampling, wanted, cap, gen_stats, totals, draw_cached) -> None:
        """Rounds until every prompt has `wanted` distinct responses or `cap` draws; each round is one cached call
        for all its prompts whatever each one still needs, so a continuously batching engine runs them together."""
        from xwin_data.llm.generation import PromptTooLongError

        def draw(members: list[tuple[PromptState, int]]) -> None:
            try:
                outs = draw_cached(gen, cache, [(st.prompt_id, st.prompt, st.drawn, count) for st, count in members],
                                   sampling, stats=gen_stats)
            except PromptTooLongError as err:
                if len(members) == 1:
                    members[0][0].failed = str(err)
                    return
                for member in members:  # find the prompt(s) at fault; the others go on
                    draw([member])
                return
            for (st, _count), comps in zip(members, outs):
                st.take(comps, st.drawn, wanted)

        while True:
            members = []
            for st in states:
                if st.failed is None and len(st.kept) < wanted and st.drawn < cap:
                    count = next_round(st, wanted, cap)
                    if count > 0:
                        members.append((st, count))
            if not members:
                return
            totals["rounds"] += 1
            draw(members)

    @staticmethod
    def _rows(st: PromptState, policy: str) -> list[dict]:
        return [{"prompt_id": st.prompt_id, "prompt": st.prompt, "response_id": f"{st.prompt_id}#{i}",
                 "sample_index": i, "attempt": attempt, "response": comp.text, "tokens": comp.tokens,
                 "finish_reason": comp.finish_reason, "policy": policy}
                for i, (attempt, comp) in enumerate(st.kept)]


class TokenCounter:
    """A generator that counts the tokens it generates (for tokens/s across replicas); otherwise the same."""

    def __init__(self, gen):
        self._gen, self.tokens = gen, 0

    def generate(self, *args: Any, **kwargs: Any):
        outs = self._gen.generate(*args, **kwargs)
        self.tokens += sum(c.tokens or 0 for comps in outs for c in comps)
        return outs

    def generate_mixed(self, *args: Any, **kwargs: Any):
        outs = self._gen.generate_mixed(*args, **kwargs)
        self.tokens += sum(c.tokens or 0 for comps in outs for c in comps)
        return outs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gen, name)


class ChunkSampler:
    """One replica of the policy: samples a chunk of prompts to completion through the request cache and returns
    its response rows, its shortfall rows and its counts. Loaded once per replica, wherever the executor runs it."""

    def __init__(self, params: dict, cache_path: str, outputs: list[str], deferred: bool = False):
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.generation import GeneratorSpec, SamplingConfig, make_generator

        self.params = SampleParams.model_validate(params)
        self.sampling = SamplingConfig.model_validate(self.params.sampling)
        self.greedy = self.sampling.temperature == 0
        self.wanted = 1 if self.greedy else self.params.n_unique  # greedy decoding has one answer per prompt
        self.cap = 1 if self.greedy else int(self.params.max_samples)
        spec = GeneratorSpec.model_validate(self.params.policy)
        if deferred:  # samples drawn through ray.data.llm beforehand: render and key them, start no engine
            from xwin_data.llm.ray_llm import DeferredGenerator

            self.gen = TokenCounter(DeferredGenerator(spec))
        else:
            self.gen = TokenCounter(make_generator(spec))
        self.cache = RequestCache(cache_path)
        self.outputs = outputs

    def __call__(self, prompts: list[dict]) -> tuple[dict, dict]:
        from xwin_data.llm.generation import draw_cached

        n_unique = self.params.n_unique
        gen_stats: dict[str, int] = {}
        self.gen.tokens = 0
        counts = {"responses": 0, "samples_drawn": 0, "duplicates": 0, "blank": 0, "prompts_short": 0,
                  "prompts_failed": 0, "rounds": 0}
        states = [PromptState(p["prompt_id"], p["prompt"]) for p in prompts]
        SampleUnique._sample_chunk(self.gen, self.cache, states, self.sampling, self.wanted, self.cap, gen_stats,
                                   counts, draw_cached)
        rows, short_rows, failed = [], [], []
        for st in states:
            if st.failed is not None:
                failed.append((st.prompt_id, st.failed))
                counts["prompts_failed"] += 1
                continue
            rows.extend(SampleUnique._rows(st, self.gen.model_id))
            if len(st.kept) < n_unique:
                reason = ("greedy decoding (temperature 0) gives one response" if self.greedy else
                          f"{st.drawn} samples drawn (max_samples) gave {len(st.kept)} distinct")
                short_rows.append({"prompt_id": st.prompt_id, "wanted": n_unique, "unique_responses": len(st.kept),
                                   "shortfall": n_unique - len(st.kept), "samples_drawn": st.drawn,
                                   "duplicates": st.duplicates, "blank": st.blank, "reason": reason})
                counts["prompts_short"] += 1
            counts["responses"] += len(st.kept)
            counts["samples_drawn"] += st.drawn
            counts["duplicates"] += st.duplicates
            counts["blank"] += st.blank
        tables = {self.outputs[0]: pa.Table.from_pylist(rows, schema=RESPONSES_SCHEMA),
                  self.outputs[1]: pa.Table.from_pylist(short_rows, schema=SHORTFALL_SCHEMA)}
        return tables, {**counts, "failed": failed, "samples_cached": gen_stats.get("cached", 0),
                        "samples_generated": gen_stats.get("generated", 0),
                        "tokens_generated": self.gen.tokens}

    def close(self) -> None:
        self.gen.close()
        self.cache.close()
