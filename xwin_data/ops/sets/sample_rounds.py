"""Sampling a chunk of prompts to completion with one replica of the policy, wherever the executor runs it: rounds
until each prompt has `n_unique` responses that differ after whitespace and case normalisation, or `max_samples`
draws. Each round is one cached call for all the prompts still short (sample j of a prompt has its own seed), so a
killed build resumes without sampling again and a rebuild reproduces the same responses. What a prompt lacks
becomes a shortfall row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from xwin_data.conversation import MESSAGES_TYPE

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


@dataclass
class PromptState:
    """One prompt's sampling so far: the distinct responses kept (with the draw each came from) and what the others
    were."""

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


def sample_chunk(gen, cache, states, sampling, wanted, cap, gen_stats, totals, draw_cached) -> None:
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


def response_rows(st: PromptState, policy: str) -> list[dict]:
    """A prompt's kept responses as rows of the responses table, numbered in the order they were kept."""
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

    def __init__(self, policy: dict, sampling: dict, n_unique: int, max_samples: int, cache_path: str,
                 outputs: list[str], deferred: bool = False):
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.generation import GeneratorSpec, SamplingConfig, make_generator

        self.n_unique = n_unique
        self.sampling = SamplingConfig.model_validate(sampling)
        self.greedy = self.sampling.temperature == 0
        self.wanted = 1 if self.greedy else n_unique  # greedy decoding has one answer per prompt
        self.cap = 1 if self.greedy else int(max_samples)
        spec = GeneratorSpec.model_validate(policy)
        if deferred:  # samples drawn through ray.data.llm beforehand: render and key them, start no engine
            from xwin_data.llm.ray_llm import DeferredGenerator

            self.gen = TokenCounter(DeferredGenerator(spec))
        else:
            self.gen = TokenCounter(make_generator(spec))
        self.cache = RequestCache(cache_path)
        self.outputs = outputs

    def __call__(self, prompts: list[dict]) -> tuple[dict, dict]:
        from xwin_data.llm.generation import draw_cached

        n_unique = self.n_unique
        gen_stats: dict[str, int] = {}
        self.gen.tokens = 0
        counts = {"responses": 0, "samples_drawn": 0, "duplicates": 0, "blank": 0, "prompts_short": 0,
                  "prompts_failed": 0, "rounds": 0}
        states = [PromptState(p["prompt_id"], p["prompt"]) for p in prompts]
        sample_chunk(self.gen, self.cache, states, self.sampling, self.wanted, self.cap, gen_stats, counts,
                     draw_cached)
        rows, short_rows, failed = [], [], []
        for st in states:
            if st.failed is not None:
                failed.append((st.prompt_id, st.failed))
                counts["prompts_failed"] += 1
                continue
            rows.extend(response_rows(st, self.gen.model_id))
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
