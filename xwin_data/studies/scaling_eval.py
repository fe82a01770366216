"""Evaluators of the data-scaling study: how often a trained model's answer beats a reference answer.

- `reward_model`: one greedy answer per held-out prompt; a reward model scores the answer and the reference
  answer; win / tie / loss by the score gap (a tie when |gap| <= tie_margin). Offline and cheap.
- `judge`: the AlpacaEval-style runner (`xwin_data.evals.live.run_alpaca`): the answer and the reference judged
  pairwise in both presentation orders by any OpenAI-compatible judge, through the cached judge client.

Both return the per-prompt records and a summary with the win rate (ties count half) in percent and its
percentile bootstrap 95% CI over prompts.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from xwin_data.evals.stats import bootstrap_ci, win_rate_summary


class JudgeEvaluator(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "gpt-4o"
    base_url: str | None = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    template: str = Field("pairwise-abc", description="a shipped pairwise judge template or a YAML path")
    concurrency: int = Field(8, ge=1)
    budget_usd: float | None = Field(None, ge=0)


class EvaluatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["reward_model", "judge"] = "reward_model"
    reference: str = Field("holdout", description="holdout: conversations of `source_table` outside every subset "
                           "(first user turn -> first assistant reply); else a catalog table or a JSON/JSONL file "
                           "of instruction/output, prompt/response or messages records")
    max_prompts: int = Field(16, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    reward_model: str = "tiny-reward"
    tie_margin: float = Field(0.0, ge=0, description="reward_model: |score gap| at or under this is a tie")
    n_boot: int = Field(1000, ge=10)
    judge: JudgeEvaluator = Field(default_factory=JudgeEvaluator)


def _outcome(gap: float, margin: float) -> str:
    return "win" if gap > margin else "loss" if gap < -margin else "tie"


class RewardModelEvaluator:
    """Keeps the reward model loaded across sizes; scores are cached (the references are scored once)."""

    def __init__(self, spec: EvaluatorSpec, cache) -> None:
        from xwin_data.llm.reward import ScorerSpec, make_scorer

        self.spec, self.cache = spec, cache
        self.scorer = make_scorer(ScorerSpec(model=spec.reward_model))

    def _scores(self, items: list[dict], responses: list[str]) -> list[float]:
        from xwin_data.llm.reward import score_cached, with_response

        convs = [with_response(it["prompt"], r) for it, r in zip(items, responses)]
        return score_cached(self.scorer, self.cache, convs)

    def __call__(self, model_path: str, items: list[dict]) -> tuple[list[dict], dict]:
        answers = greedy_answers(model_path, items, self.spec.max_new_tokens, self.cache)
        s_model = self._scores(items, answers)
        s_ref = self._scores(items, [it["reference"] for it in items])
        records = [{"id": it["id"], "answer": a, "reference": it["reference"], "score_model": sm, "score_reference": sr,
                    "gap": sm - sr, "outcome": _outcome(sm - sr, self.spec.tie_margin)}
                   for it, a, sm, sr in zip(items, answers, s_model, s_ref)]
        summary = win_rate_summary([r["outcome"] for r in records], n_boot=self.spec.n_boot)
        gaps = [r["gap"] for r in records]
        lo, hi = bootstrap_ci(gaps, n_boot=self.spec.n_boot)
        summary.update(mean_gap=sum(gaps) / len(gaps) if gaps else math.nan, gap_ci_low=lo, gap_ci_high=hi)
        return records, summary


def greedy_answers(model_path: str, items: list[dict], max_new_tokens: int, cache) -> list[str]:
    from xwin_data.llm.generation import GeneratorSpec, SamplingConfig, generate_cached, make_generator

    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    with make_generator(GeneratorSpec(backend="transformers", model=str(model_path))) as gen:
        outs = generate_cached(gen, cache, [(it["id"], it["prompt"]) for it in items], 1, sampling)
    return [o[0].text for o in outs]


def judge_evaluator(spec: EvaluatorSpec, cache):
    from xwin_data.evals.live import JudgeConfig, run_alpaca

    from xwin_data.evals.preflight import check_judge

    j = spec.judge
    check_judge(j.base_url, j.api_key_env, url_flag="evaluator.judge.base_url", key_flag="evaluator.judge.api_key_env")
    cfg = JudgeConfig(model=j.model, base_url=j.base_url, api_key_env=j.api_key_env, concurrency=j.concurrency,
                      budget_usd=j.budget_usd)

    def evaluate(model_path: str, items: list[dict]) -> tuple[list[dict], dict]:
        records, summary = run_alpaca(str(model_path), items, cfg, cache, template=j.template,
                                      max_new_tokens=spec.max_new_tokens, n_boot=spec.n_boot)
        return records, summary

    return evaluate


def make_evaluator(spec: EvaluatorSpec, cache):
    return RewardModelEvaluator(spec, cache) if spec.kind == "reward_model" else judge_evaluator(spec, cache)


def evaluator_identity(spec: EvaluatorSpec) -> dict:
    """What changes an evaluation's result (the judge key's variable name and budget do not)."""
    from xwin_data.llm.reward import ScorerSpec

    data = spec.model_dump(exclude={"judge"} if spec.kind == "reward_model" else {"reward_model", "tie_margin"})
    if spec.kind == "reward_model":
        data["reward_model_id"] = ScorerSpec(model=spec.reward_model).identity()
    else:
        from xwin_data.llm.judge import load_template

        data["judge"] = {"model": spec.judge.model, "base_url": spec.judge.base_url,
                         "template": load_template(spec.judge.template).version_id}
    return data


def conversation_key(con, table: str) -> str:
    """SQL for the conversation a row belongs to: pieces of a split conversation share its `conversation_id`."""
    cols = {r[0] for r in con.execute(f'DESCRIBE SELECT * FROM "{table}"').fetchall()}
    return "coalesce(conversation_id, id)" if "conversation_id" in cols else "id"


def holdout_items(catalog, source_table: str, exclude_tables: list[str], limit: int) -> list[dict]:
    """Conversations of `source_table` with no piece in any of `exclude_tables`, in a fixed pseudo-random order, one
    item per conversation (its first piece): the first user turn (with any system turn before it) is the prompt,
    the first assistant reply the reference."""
    from xwin_data.core.connection import connect

    con = connect(catalog, canned_views=False)
    try:
        excl = " UNION ALL ".join(f'SELECT {conversation_key(con, t)} AS k FROM "{t}"' for t in exclude_tables) \
            or "SELECT NULL::VARCHAR AS k"
        key = conversation_key(con, source_table)
        rows = con.sql(f"""
            SELECT id, messages FROM (SELECT *, {key} AS __k FROM "{source_table}")
            WHERE __k NOT IN (SELECT k FROM ({excl}) WHERE k IS NOT NULL)
            QUALIFY row_number() OVER (PARTITION BY __k ORDER BY id) = 1
            ORDER BY md5(__k), id""").to_arrow_table().to_pylist()
    finally:
        con.close()
    items = []
    for r in rows:
        msgs = [dict(m) for m in r["messages"]]
        first_assistant = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), None)
        if first_assistant is None or not any(m["role"] == "user" for m in msgs[:first_assistant]):
            continue
        ref = msgs[first_assistant]["content"]
        if not ref.strip():
            continue
        items.append({"id": str(r["id"]), "prompt": msgs[:first_assistant], "reference": ref})
        if len(items) >= limit:
            break
    return items


def reference_items(catalog, spec: EvaluatorSpec, source_table: str, subset_tables: list[str],
                    heldout_table: str | None = None) -> tuple[list[dict], dict]:
    """(items, identity of the reference data for the evaluation key). With `heldout_table` (conversations set
    aside before the subsets were cut) the held-out prompts are its conversations; else those of `source_table`
    in no subset."""
    from xwin_data.core.fingerprint import path_fingerprint
    from xwin_data.studies.judge import StudyError

    if spec.reference == "holdout" and heldout_table:
        items = holdout_items(catalog, heldout_table, [], spec.max_prompts)
        ident = {"heldout": heldout_table, "fingerprint": catalog.current(heldout_table).fingerprint}
    elif spec.reference == "holdout":
        tv = catalog.current(source_table)
        if tv is None:
            raise StudyError(f"evaluator.reference holdout needs table {source_table!r} (the table the subsets "
                             f"were cut from) in catalog {catalog.root}; build recipes/sharegpt_sft.yaml, or set "
                             "source_table or evaluator.reference")
        items = holdout_items(catalog, source_table, subset_tables, spec.max_prompts)
        ident = {"holdout": source_table, "fingerprint": tv.fingerprint,
                 "excluded": {t: catalog.current(t).fingerprint for t in subset_tables}}
        if not items:
            raise StudyError(f"no held-out prompts: every conversation of {source_table} is in a subset; rebuild "
                             "recipes/sharegpt_sft.yaml (it sets aside `heldout` conversations before cutting the "
                             "subsets) or set evaluator.reference to a table or file of reference answers")
    else:
        from xwin_data.evals.live import load_reference

        items = load_reference(spec.reference, catalog)[: spec.max_prompts]
        path = Path(spec.reference)
        ident = {"file": path_fingerprint(path)} if path.is_file() else {
            "table": spec.reference, "fingerprint": catalog.current(spec.reference).fingerprint}
    if not items:
        raise StudyError(f"no evaluation prompts from evaluator.reference={spec.reference!r}")
    return items, ident
