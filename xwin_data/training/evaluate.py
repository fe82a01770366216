"""The paper's evaluation after each stage: on held-out prompts, the mean reward of best-of-n samples.

max(n) samples are drawn per prompt from the policy and scored by a reward model; best-of-n for every n is then
the exact expectation of the best of n draws without replacement from those samples (order statistics: with
scores sorted ascending, P(the best of n is the k-th) = C(k-1, n-1) / C(m, n)), computed with the same formula
as the `bon_curve` table, so no resampling noise is added on top of the sampling itself.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from math import comb
from pathlib import Path
from typing import Sequence

from ..catalog import Catalog


@dataclass
class BonEvalSettings:
    prompts_table: str
    max_prompts: int = 32
    best_of: Sequence[int] = (1, 16, 64)
    reward_model: str = "tiny-reward"
    max_new_tokens: int = 64
    temperature: float = 1.0
    batch_size: int = 64
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> "BonEvalSettings | None":
        if not cfg.bon_eval_prompts_table:
            return None
        return cls(cfg.bon_eval_prompts_table, cfg.bon_eval_max_prompts, tuple(cfg.bon_eval_n),
                   cfg.bon_eval_reward_model, cfg.bon_eval_max_new_tokens, cfg.bon_eval_temperature,
                   cfg.bon_eval_batch_size, cfg.seed)


@lru_cache(maxsize=256)
def best_of_weights(m: int, n: int) -> list[float]:
    """P(the best of n draws without replacement from m sorted values is the k-th smallest), k = 1..m:
    C(k-1, n-1) / C(m, n), in exact integer arithmetic, rounded once."""
    total = comb(m, n)
    return [float(Fraction(comb(k - 1, n - 1), total)) for k in range(1, m + 1)]


def expected_best_of(scores_by_prompt: dict[str, list[float]], ns: Sequence[int]) -> dict[int, float]:
    """Mean over prompts of E[max of n draws without replacement from the prompt's scores], exact (the
    order-statistics formula of the `bon_curve` table; ties are equal values, so their order does not matter)."""
    if not scores_by_prompt:
        raise ValueError("no scores to evaluate")
    smallest = min(len(s) for s in scores_by_prompt.values())
    if max(ns) > smallest:
        raise ValueError(f"best-of-{max(ns)} needs at least {max(ns)} samples per prompt (have {smallest})")
    out = {}
    for n in ns:
        per_prompt = []
        for scores in scores_by_prompt.values():
            ordered = sorted(float(s) for s in scores)
            per_prompt.append(sum(w * s for w, s in zip(best_of_weights(len(ordered), n), ordered)))
        out[int(n)] = sum(per_prompt) / len(per_prompt)
    return out


def sample_and_score(model_path: str | Path, prompts: list[dict], settings: BonEvalSettings,
                     reward=None) -> tuple[dict[str, list[float]], float]:
    """max(n) samples per prompt from the policy (the generation layer's transformers backend), scored by the
    reward model -> ({prompt_id: scores}, mean generated tokens)."""
    from ..llm.generation import GeneratorSpec, SamplingConfig, make_generator
    from .models import load_reward, load_tokenizer, score_responses

    n = max(settings.best_of)
    gen = make_generator(GeneratorSpec(backend="transformers", model=str(model_path), batch_size=settings.batch_size))
    try:
        sampling = SamplingConfig(temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
                                  seed=settings.seed)
        completions = gen.generate([p["prompt"] for p in prompts], n=n, sampling=sampling)
    finally:
        gen.close()
    rm, rm_tok = reward if reward is not None else (load_reward(settings.reward_model),
                                                     load_tokenizer(settings.reward_model))
    flat_prompts = [p["prompt"] for p, cs in zip(prompts, completions) for _ in cs]
    flat_texts = [c.text for cs in completions for c in cs]
    flat_scores = score_responses(rm, rm_tok, flat_prompts, flat_texts, batch_size=settings.batch_size)
    out: dict[str, list[float]] = {}
    k = 0
    for p, cs in zip(prompts, completions):
        out[p["prompt_id"]] = flat_scores[k:k + len(cs)]
        k += len(cs)
    tokens = [c.tokens for cs in completions for c in cs]
    return out, sum(tokens) / max(1, len(tokens))


def evaluate_policy(catalog: str | Path, model_path: str | Path, stage: str, settings: BonEvalSettings,
                    run_id: str | None = None, record: bool = True, reward=None) -> dict:
    """Sample, score, compute best-of-n means and (by default) append a row to the catalog's `evals` table."""
    from .data import prompt_rows, read_rows
    from .records import record_eval, table_identity

    start = time.perf_counter()
    prompts = prompt_rows(read_rows(catalog, settings.prompts_table), settings.prompts_table, settings.max_prompts)
    scores, mean_tokens = sample_and_score(model_path, prompts, settings, reward)
    bon = expected_best_of(scores, settings.best_of)
    row = {
        "run_id": run_id, "stage": stage, "model_path": str(model_path), "reward_model": settings.reward_model,
        "prompts_table": settings.prompts_table,
        "prompts_fingerprint": table_identity(catalog, settings.prompts_table)["table_fingerprint"],
        "n_prompts": len(prompts), "samples_per_prompt": max(settings.best_of),
        "best_of_1": bon.get(1), "best_of_16": bon.get(16), "best_of_64": bon.get(64),
        "best_of": json.dumps({str(k): v for k, v in bon.items()}), "mean_tokens": mean_tokens,
        "seconds": time.perf_counter() - start,
    }
    if record:
        row = record_eval(Catalog(catalog) if not isinstance(catalog, Catalog) else catalog, row)
    return row
