"""Xwin-Set: k distinct responses per prompt from a policy (`sample_unique`), scored by a reward model and ranked
within their prompt (`score_responses`).

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

from xwin_data.core.context import sql_str
from xwin_data.ops.base import Op, Params, register

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
RESPONSES_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("prompt", MESSAGES), ("response_id", pa.string()), ("sample_index", pa.int32()),
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
    roles = "list_transform(m, lambda x: x.role)"
    if "prompt" in columns:
        msgs = "prompt"
        cut = "m"
    elif "messages" in columns:
        msgs = "messages"
        cut = (f"list_slice(m, 1, coalesce(list_position({roles}, 'user'), 0))" if turns == "first" else
               f"list_slice(m, 1, len(m) + 1 - coalesce(list_position(list_reverse({roles}), 'user'), len(m) + 1))")
    else:
        raise ValueError(f"the prompts input needs a `prompt` or `messages` column (has: {', '.join(sorted(columns))})")
    base = (f"SELECT CAST({ident} AS VARCHAR) AS prompt_id, {cut} AS prompt, "
            f"count(*) OVER (PARTITION BY {ident}) AS copies "
            f"FROM (SELECT *, CAST({msgs} AS STRUCT(role VARCHAR, content VARCHAR)[]) AS m FROM {source})")
    bad = ("CASE WHEN prompt_id IS NULL THEN 'missing_id' WHEN copies > 1 THEN 'duplicate_prompt_id' "
           "WHEN prompt IS NULL OR len(prompt) = 0 OR prompt[-1].role <> 'user' THEN 'no_user_turn' "
           "WHEN NOT list_bool_and(list_transform(prompt, lambda x: x.role IN ('system', 'user', 'assistant'))) "
           "THEN 'unknown_role' "
           "WHEN length(trim(coalesce(prompt[-1].content, ''))) = 0 THEN 'empty_prompt' END")
    order = "md5(prompt_id)" if max_prompts else "prompt_id"
    limit = f" LIMIT {int(max_prompts)}" if max_prompts else ""
    keep = f"SELECT prompt_id, prompt FROM ({base}) WHERE ({bad}) IS NULL ORDER BY {order}{limit}"
    drops = (f"SELECT prompt_id AS source_id, {bad} AS reason, to_json(prompt)::VARCHAR AS detail "
             f"FROM ({base}) WHERE ({bad}) IS NOT NULL")
    return keep, drops


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
    prompts_per_chunk: int = Field(32, ge=1, description="prompts sampled to completion before the next ones "
                                                         "(bounds memory)")

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
    Params = SampleParams
    schema = None
    min_inputs = max_inputs = 1
    version = "1"
    summary = "sample until n_unique distinct (normalised) responses per prompt, capped; shortfall table"

    def output_tables(self, table: str, params: SampleParams) -> list[str]:
        return [table, f"{table}_shortfall"]

    def output_unit(self, table: str, main: str, params: SampleParams) -> str:
        return "responses" if table == main else "prompts"

    def external_fingerprint(self, params: SampleParams) -> dict:
        from xwin_data.llm.generation import model_identity

        spec = params.policy
        out = {"policy": model_identity(spec["model"], spec.get("extra", {}).get("revision"))}
        if spec.get("tokenizer"):
            out["tokenizer"] = model_identity(spec["tokenizer"])
        return out

    def estimate(self, view, params: SampleParams) -> dict | None:
        rows = view.input_rows(0)
        if rows is None:
            return None
        prompts = min(rows, params.max_prompts or rows)
        return {"prompts": prompts, "samples_at_least": prompts * params.n_unique,
                "samples_at_most": prompts * params.max_samples}

    def run(self, ctx, params: SampleParams) -> None:
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.generation import GeneratorSpec, SamplingConfig, generate_cached, make_generator

        con = ctx.con
        columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {ctx.input()}").fetchall()}
        keep_sql, drops_sql = prompts_sql(ctx.input(), columns, params.turns, params.max_prompts)
        ctx.drop_sql(drops_sql, unit="prompts")
        prompts = con.sql(keep_sql).to_arrow_table().to_pylist()
        sampling = SamplingConfig.model_validate(params.sampling)
        greedy = sampling.temperature == 0
        wanted = 1 if greedy else params.n_unique  # greedy decoding has one answer per prompt
        cap = 1 if greedy else int(params.max_samples)
        gen_stats: dict[str, int] = {}
        totals = {"prompts": len(prompts), "responses": 0, "samples_drawn": 0, "duplicates": 0, "blank": 0,
                  "prompts_short": 0, "prompts_failed": 0, "rounds": 0}
        cache = RequestCache(ctx.cache_dir / "generation.sqlite")
        try:
            with make_generator(GeneratorSpec.model_validate(params.policy)) as gen, \
                    ctx.writer(RESPONSES_SCHEMA) as out, ctx.writer(SHORTFALL_SCHEMA, ctx.outputs[1]) as short, \
                    ctx.track("sampling unique responses", len(prompts), unit="prompts") as bar:
                for lo in range(0, len(prompts), params.prompts_per_chunk):
                    states = [PromptState(p["prompt_id"], p["prompt"]) for p in prompts[lo:lo + params.prompts_per_chunk]]
                    self._sample_chunk(gen, cache, states, sampling, wanted, cap, gen_stats, totals, generate_cached)
                    rows, short_rows = [], []  # one write per chunk keeps row groups large
                    for st in states:
                        if st.failed is not None:
                            ctx.drop(st.prompt_id, "prompt_too_long", st.failed, unit="prompts")
                            totals["prompts_failed"] += 1
                            continue
                        rows.extend(self._rows(st, gen.model_id))
                        if len(st.kept) < params.n_unique:
                            reason = ("greedy decoding (temperature 0) gives one response" if greedy else
                                      f"{st.drawn} samples drawn (max_samples) gave {len(st.kept)} distinct")
                            short_rows.append({"prompt_id": st.prompt_id, "wanted": params.n_unique,
                                               "unique_responses": len(st.kept),
                                               "shortfall": params.n_unique - len(st.kept),
                                               "samples_drawn": st.drawn, "duplicates": st.duplicates,
                                               "blank": st.blank, "reason": reason})
                            totals["prompts_short"] += 1
                        totals["responses"] += len(st.kept)
                        totals["samples_drawn"] += st.drawn
                        totals["duplicates"] += st.duplicates
                        totals["blank"] += st.blank
                    if rows:
                        out.write(rows)
                    if short_rows:
                        short.write(short_rows)
                    bar.advance(len(states))
        finally:
            cache.close()
        ctx.stats.update({**totals, "samples_cached": gen_stats.get("cached", 0),
                          "samples_generated": gen_stats.get("generated", 0), "n_unique": params.n_unique,
                          "max_samples": cap, "sampling": sampling.model_dump()})
        if totals["prompts_short"]:
            ctx.log(f"{totals['prompts_short']} of {len(prompts)} prompts have fewer than {params.n_unique} distinct "
                    f"responses: see table {ctx.outputs[1]}")

    @staticmethod
    def _sample_chunk(gen, cache, states, sampling, wanted, cap, gen_stats, totals, generate_cached) -> None:
        from xwin_data.llm.generation import PromptTooLongError

        def draw(members: list[PromptState], start: int, count: int) -> None:
            try:
                outs = generate_cached(gen, cache, [(st.prompt_id, st.prompt) for st in members], count, sampling,
                                       start=start, stats=gen_stats)
            except PromptTooLongError as err:
                if len(members) == 1:
                    members[0].failed = str(err)
                    return
                for st in members:  # find the prompt(s) at fault; the others go on
                    draw([st], start, count)
                return
            for st, comps in zip(members, outs):
                st.take(comps, start, wanted)

        while True:
            groups: dict[tuple[int, int], list[PromptState]] = {}
            for st in states:
                if st.failed is None and len(st.kept) < wanted and st.drawn < cap:
                    count = next_round(st, wanted, cap)
                    if count > 0:
                        groups.setdefault((st.drawn, count), []).append(st)
            if not groups:
                return
            totals["rounds"] += 1
            for (start, count), members in sorted(groups.items()):
                draw(members, start, count)

    @staticmethod
    def _rows(st: PromptState, policy: str) -> list[dict]:
        return [{"prompt_id": st.prompt_id, "prompt": st.prompt, "response_id": f"{st.prompt_id}#{i}",
                 "sample_index": i, "attempt": attempt, "response": comp.text, "tokens": comp.tokens,
                 "finish_reason": comp.finish_reason, "policy": policy}
                for i, (attempt, comp) in enumerate(st.kept)]


# ------------------------------------------------------------------------------------------------ scoring
class ScoreParams(Params):
    rm: dict[str, Any] = Field({}, description="reward model spec (RewardSpec): backend "
                               "(transformers | vllm), model, tokenizer, chat_template, batch_size, max_length")
    rows_per_chunk: int = Field(4096, ge=1, description="responses read, scored and written at a time")

    @field_validator("rm")
    @classmethod
    def _rm(cls, v: dict) -> dict:
        from xwin_data.llm.reward import RewardSpec

        return RewardSpec.model_validate(v).model_dump()


SCORED_SCHEMA = pa.schema([("response_id", pa.string()), ("score", pa.float64()), ("rm", pa.string())])


@register
class ScoreResponses(Op):
    """Reward-model scores for sampled responses, ranked within each prompt: the xwin_set table."""

    name = "score_responses"
    Params = ScoreParams
    schema = "xwin_set"
    min_inputs = max_inputs = 1
    version = "1"
    summary = "reward-model score per (prompt, response), cached; rank within the prompt (1 = best)"

    def external_fingerprint(self, params: ScoreParams) -> dict:
        from xwin_data.llm.generation import model_identity

        spec = params.rm
        out = {"rm": model_identity(spec["model"], spec.get("extra", {}).get("revision"))}
        if spec.get("tokenizer"):
            out["tokenizer"] = model_identity(spec["tokenizer"])
        return out

    def estimate(self, view, params: ScoreParams) -> dict | None:
        rows = view.input_rows(0)
        return None if rows is None else {"responses_to_score": rows}

    def run(self, ctx, params: ScoreParams) -> None:
        import pyarrow.parquet as pq

        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.reward import RewardSpec, make_scorer, score_cached

        src = ctx.input()
        con = ctx.con
        needed = ("prompt_id", "prompt", "response_id", "sample_index", "attempt", "response", "tokens",
                  "finish_reason", "policy")
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        missing = [c for c in needed if c not in have]
        if missing:
            raise ValueError(f"score_responses reads sampled responses; missing column(s) {', '.join(missing)}")
        ctx.drop_sql(f"SELECT response_id AS source_id, 'blank_response' AS reason, prompt_id AS detail "
                     f"FROM {src} WHERE length(trim(coalesce(response, ''))) = 0")
        rows_sql = (f"SELECT prompt_id, prompt, response_id, response FROM {src} "
                    f"WHERE length(trim(coalesce(response, ''))) > 0")
        total = con.execute(f"SELECT count(*) FROM ({rows_sql})").fetchall()[0][0]
        scored_path = ctx.work_dir / "scores.parquet"
        stats: dict[str, int] = {}
        cache = RequestCache(ctx.cache_dir / "reward.sqlite")
        try:
            with make_scorer(RewardSpec.model_validate(params.rm)) as scorer, \
                    pq.ParquetWriter(scored_path, SCORED_SCHEMA) as writer, \
                    ctx.track("reward-model scores", total, unit="responses") as bar:
                reader = con.cursor().sql(rows_sql).to_arrow_reader(params.rows_per_chunk)
                for batch in reader:
                    rows = batch.to_pylist()
                    convs = [list(r["prompt"]) + [{"role": "assistant", "content": r["response"]}] for r in rows]
                    cached_before = stats.get("cached", 0)
                    scores = score_cached(scorer, cache, convs, stats, on_scored=bar.advance)
                    bar.advance(stats["cached"] - cached_before)
                    writer.write_table(pa.table({"response_id": [r["response_id"] for r in rows], "score": scores,
                                                 "rm": [scorer.model_id] * len(rows)}, schema=SCORED_SCHEMA))
                rm_id = scorer.model_id
        finally:
            cache.close()
        ctx.write_sql(f"""
            SELECT r.prompt_id, r.prompt, r.response_id, CAST(r.sample_index AS INTEGER) AS sample_index,
                   CAST(r.attempt AS INTEGER) AS attempt, r.response, CAST(r.tokens AS INTEGER) AS tokens,
                   r.finish_reason, s.score,
                   CAST(row_number() OVER (PARTITION BY r.prompt_id ORDER BY s.score DESC, r.sample_index) AS INTEGER)
                       AS rank,
                   CAST(count(*) OVER (PARTITION BY r.prompt_id) AS INTEGER) AS group_size,
                   r.policy, s.rm
            FROM {src} r JOIN read_parquet({sql_str(str(scored_path))}) s USING (response_id)
            ORDER BY r.prompt_id, r.sample_index""", total_rows=total)
        ctx.stats.update({"responses": total, "scores_cached": stats.get("cached", 0),
                          "scores_computed": stats.get("scored", 0), "truncated": stats.get("truncated", 0),
                          "rm": rm_id})
