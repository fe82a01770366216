"""The paper's evaluation after each stage: on held-out prompts, the mean reward of best-of-n samples.

max(n) samples are drawn per prompt from the policy and scored by a reward model; best-of-n for every n is then
the exact expectation of the best of n draws without replacement from those samples (order statistics: with
scores sorted ascending, P(the best of n is the k-th) = C(k-1, n-1) / C(m, n)), computed by `xwin_data.bon`, the
weights the `bon_curve` table uses, so no resampling noise is added on top of the sampling itself. Scores come
from `xwin_data.llm.reward`, the scorer the Xwin-Set `score_responses` op uses.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from xwin_data.bon import mean_best_of
from xwin_data.core.catalog import Catalog


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


def reward_scorer(settings: BonEvalSettings):
    """The evaluation's reward scorer (close it when done)."""
    from xwin_data.llm.reward import ScorerSpec, make_scorer

    return make_scorer(ScorerSpec(model=settings.reward_model, batch_size=settings.batch_size))


def score_samples(scorer, prompts: list[dict], texts: list[list[str]]) -> dict[str, list[float]]:
    """{prompt_id: scores of its sampled texts, in order}, all prompts scored in one length-sorted pass."""
    flat_prompts = [p["prompt"] for p, ts in zip(prompts, texts) for _ in ts]
    flat_scores = scorer.score_responses(flat_prompts, [t for ts in texts for t in ts])
    out: dict[str, list[float]] = {}
    k = 0
    for p, ts in zip(prompts, texts):
        out[p["prompt_id"]] = flat_scores[k:k + len(ts)]
        k += len(ts)
    return out


def sample_and_score(model_path: str | Path, prompts: list[dict], settings: BonEvalSettings,
                     scorer=None) -> tuple[dict[str, list[float]], float]:
    """max(n) samples per prompt from the policy (the generation layer's transformers backend), scored by the
    reward model (`scorer`, else `reward_scorer(settings)`) -> ({prompt_id: scores}, mean generated tokens)."""
    from xwin_data.llm.generation import GeneratorSpec, SamplingConfig, make_generator

    n = max(settings.best_of)
    gen = make_generator(GeneratorSpec(backend="transformers", model=str(model_path), batch_size=settings.batch_size))
    try:
        sampling = SamplingConfig(temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
                                  seed=settings.seed)
        completions = gen.generate([p["prompt"] for p in prompts], n=n, sampling=sampling)
    finally:
        gen.close()
    own = scorer is None
    scorer = reward_scorer(settings) if own else scorer
    try:
        out = score_samples(scorer, prompts, [[c.text for c in cs] for cs in completions])
    finally:
        if own:
            scorer.close()
    tokens = [c.tokens for cs in completions for c in cs]
    return out, sum(tokens) / max(1, len(tokens))


def evaluate_policy(catalog: str | Path, model_path: str | Path, stage: str, settings: BonEvalSettings,
                    run_id: str | None = None, record: bool = True, scorer=None) -> dict:
    """Sample, score, compute best-of-n means and (by default) append a row to the catalog's `evals` table."""
    from xwin_data.training.data import prompt_rows, read_rows
    from xwin_data.training.records import EvalRecord, record_eval, table_identity

    start = time.perf_counter()
    prompts = prompt_rows(read_rows(catalog, settings.prompts_table), settings.prompts_table, settings.max_prompts)
    scores, mean_tokens = sample_and_score(model_path, prompts, settings, scorer)
    bon = mean_best_of(scores, settings.best_of)
    entry = EvalRecord(
        run_id=run_id, stage=stage, model_path=str(model_path), reward_model=settings.reward_model,
        prompts_table=settings.prompts_table,
        prompts_fingerprint=table_identity(catalog, settings.prompts_table)["table_fingerprint"],
        n_prompts=len(prompts), samples_per_prompt=max(settings.best_of), best_of=bon, mean_tokens=mean_tokens,
        seconds=time.perf_counter() - start)
    if record:
        record_eval(Catalog(catalog) if not isinstance(catalog, Catalog) else catalog, entry)
    row = entry.row()
    return row
