"""Xwin-Pair, second half: judge candidate pairs in both presentation orders and keep the decided ones.

Outputs (for table T, by default `xwin_pair`):
- T: decided pairs (prompt, chosen, rejected, strength, consistent, judge, template_version, per-order
  verdicts, tokens, cost): what `xwin-data export T OUT --format trl` turns into DPO / reward-model data;
- T_judgments: every pair with its outcome (first / second / tie / invalid);
- T_calls: every judge call (both orders, every parse retry): raw text, verdict, parse status, tokens, cost.
Pairs not in T are in the drops table with a reason (tie, inconsistent, below_min_strength,
judge_unparseable, judge_call_failed).

`judge.kind: openai` calls any OpenAI-compatible endpoint through the cached, rate-limited client;
`judge.kind: reward_model` (the offline default) lets a reward model decide. The judge stage's fingerprint
includes the judge and parser code, so a parser fix rebuilds it from the request cache with no new calls
(`xwin-data build RECIPE --force STAGE` re-parses on demand).
"""
from __future__ import annotations

import hashlib
import inspect
import json
from typing import Literal

import pyarrow as pa
from pydantic import Field

from xwin_data.ops.base import Op, Params, register
from xwin_data.ops.pairs.candidates import upstream_rows

CLIENT_FIELDS = ("model", "base_url", "api_key_env", "concurrency", "requests_per_minute", "tokens_per_minute",
                 "timeout_s", "max_retries", "backoff_initial_s", "backoff_max_s", "retry_after_max_s", "budget_usd",
                 "prices")


class JudgeSettings(Params):
    kind: Literal["openai", "reward_model"] = Field("reward_model", description="openai: any OpenAI-compatible "
                                                    "endpoint; reward_model: offline, a reward model decides")
    model: str = "gpt-4o"
    base_url: str | None = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    template: str = Field("pairwise-abc", description="a shipped template name or a path to a YAML template")
    temperature: float = 0.0
    max_tokens: int = Field(1024, ge=1)
    both_orders: bool = True
    parse_retries: int = Field(2, ge=0, description="ask again this many times when a reply has no verdict")
    retry_temperature: float | None = Field(0.7, description="temperature of parse retries (None: unchanged)")
    concurrency: int = Field(16, ge=1)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    timeout_s: float = 120.0
    max_retries: int = Field(6, ge=0, description="transport retries (429, 5xx, time-outs, malformed JSON)")
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    retry_after_max_s: float = Field(60.0, ge=0, description="longest Retry-After honoured; longer asks are "
                                     "retried with backoff or failed, never stalling the stage")
    budget_usd: float | None = Field(None, ge=0, description="dollars of new calls this build may spend")
    prices: dict[str, list[float]] = Field(default_factory=dict)
    max_failed_calls: int = Field(0, ge=0, description="calls that may still fail after retries before the "
                                                       "stage fails (their pairs are dropped with a reason)")
    reward_model: str = "tiny-reward"
    tie_margin: float = Field(0.0, ge=0, description="reward_model: score gap under which a pair is a tie")
    batch_size: int = Field(8, ge=1)
    expected_reply_tokens: int = Field(250, ge=1, description="plan estimate of a judge reply's length")


class JudgePairsParams(Params):
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    keep_inconsistent: bool = Field(True, description="keep pairs whose orders disagree but still lean one way")
    min_strength: float = Field(0.0, ge=0)


def _answer_tokens(plan_view, default: int = 256) -> int:
    """max_new_tokens of the candidates two stages up, when this build makes them."""
    node = plan_view.stage
    for _ in range(3):
        producer = plan_view.planned.get(node.inputs[0].producer) if node.inputs and node.inputs[0].producer else None
        if producer is None:
            return default
        sampling = getattr(producer.params, "sampling", None)
        if sampling is not None:
            return int(sampling.max_new_tokens)
        node = producer
    return default


def _judge_code() -> str:
    from xwin_data.llm import client, judge, judge_rm

    src = "".join(inspect.getsource(m) for m in (client, judge, judge_rm))
    return hashlib.sha256(src.encode()).hexdigest()[:16]


@register
class JudgePairs(Op):
    """Judge candidate pairs (both orders) with an LLM or a reward model -> chosen / rejected / strength."""

    name = "judge_pairs"
    Params = JudgePairsParams
    schema = "xwin_pair"
    min_inputs = max_inputs = 1
    version = "1"

    def output_tables(self, table: str, params) -> list[str]:
        return [table, f"{table}_judgments", f"{table}_calls"]

    def output_schema(self, table: str, main: str, params) -> str | None:
        return self.schema if table == main else None

    def external_fingerprint(self, params: JudgePairsParams) -> dict:
        from xwin_data.llm.judge import load_template

        j = params.judge
        out = {"judge_code": _judge_code()}
        if j.kind == "openai":
            out["template"] = load_template(j.template).version_id
        else:
            from xwin_data.llm.generation import model_identity

            out["reward_model"] = model_identity(j.reward_model)
        return out

    def estimate(self, plan_view, params: JudgePairsParams) -> dict | None:
        from xwin_data.llm.costs import PriceTable
        from xwin_data.llm.judge import load_template

        j = params.judge
        pairs = upstream_rows(plan_view)
        if pairs is None:
            return None
        if j.kind == "reward_model":
            return {"pairs": pairs, "calls": 0, "usd": 0.0, "judge": f"reward model {j.reward_model}"}
        answer_tokens = _answer_tokens(plan_view)
        template = load_template(j.template)
        base = (len(template.system) + len(template.prompt)) // 4
        prompt_tokens = base + 2 * answer_tokens + 100  # + the question
        calls = pairs * (2 if j.both_orders else 1)
        p_tok, c_tok = calls * prompt_tokens, calls * min(j.max_tokens, j.expected_reply_tokens)
        usd = PriceTable.with_overrides(j.prices).cost(j.model, p_tok, c_tok)
        return {"pairs": pairs, "calls": calls, "prompt_tokens": p_tok, "completion_tokens": c_tok,
                "usd": round(usd, 4), "judge": j.model}

    # ------------------------------------------------------------------------------------------ run
    def run(self, ctx, params: JudgePairsParams) -> None:
        from xwin_data.llm.judge import PairToJudge

        rows = ctx.con.sql(f"SELECT * FROM {ctx.input()} ORDER BY pair_id").to_arrow_table().to_pylist()
        pairs = [PairToJudge(r["pair_id"], [dict(m) for m in r["prompt"]], r["first"], r["second"]) for r in rows]
        j = params.judge
        if j.kind == "openai":
            run, judge_id, template_id, ledger, client = self._judge_openai(ctx, pairs, j)
        else:
            run, judge_id, template_id = self._judge_reward_model(ctx, pairs, j)
            ledger = client = None
        from xwin_data.ops.pairs.tables import write_outputs

        write_outputs(ctx, params, rows, run, judge_id, template_id)
        if ledger is not None:
            ctx.stats["spend_this_build"] = ledger.summary()
            ctx.stats["transport_retries"] = client.retries

    def _judge_openai(self, ctx, pairs, j: JudgeSettings):
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.client import ChatClient, ClientSettings
        from xwin_data.llm.costs import BudgetExceeded
        from xwin_data.llm.judge import judge_pairs, load_template

        template = load_template(j.template)
        settings = ClientSettings(**{f: getattr(j, f) for f in CLIENT_FIELDS})
        cache = RequestCache(ctx.cache_dir / "judge.sqlite")
        client = ChatClient(settings, cache)
        orders = 2 if j.both_orders else 1
        try:
            with ctx.track(f"judge {j.model}", len(pairs) * orders, "calls") as bar:
                run = judge_pairs(pairs, template, client, params={"temperature": j.temperature,
                                                                   "max_tokens": j.max_tokens},
                                  both_orders=j.both_orders, parse_retries=j.parse_retries,
                                  retry_temperature=j.retry_temperature,
                                  on_call=lambda rec: bar.advance(1) if rec.attempt == 0 else None)
        finally:
            cache.close()
        failed = [c for c in run.calls if c.parse_status == "error"]
        if client.ledger.stopped:
            done = sum(1 for c in run.calls if c.parse_status != "error")
            raise BudgetExceeded(f"judge budget of ${j.budget_usd} reached: {done} of {len(run.calls)} calls "
                                 f"answered (spent ${client.ledger.spent_usd:.4f} this build); they are cached, "
                                 f"so raising judge.budget_usd and building again resumes without paying twice")
        if len(failed) > j.max_failed_calls:
            kinds = sorted({c.error.split(":")[0] for c in failed})
            raise RuntimeError(f"{len(failed)} judge calls failed after retries ({', '.join(kinds)}; first: "
                               f"{failed[0].error}); finished calls are cached, build again to resume "
                               f"(or allow judge.max_failed_calls)")
        return run, j.model, template.version_id, client.ledger, client

    def _judge_reward_model(self, ctx, pairs, j: JudgeSettings):
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.judge import CallRecord, JudgeRun, aggregate, parse_verdict
        from xwin_data.llm.judge_rm import RewardModelScorer, verdict_text

        cache = RequestCache(ctx.cache_dir / "reward.sqlite")
        try:
            scorer = RewardModelScorer(j.reward_model, j.batch_size, cache=cache)
            convs = [p.prompt + [{"role": "assistant", "content": ans}] for p in pairs for ans in (p.first, p.second)]
            with ctx.track(f"reward-model judge {j.reward_model}", len(pairs), "pairs") as bar:
                scores = []
                for lo in range(0, len(convs), 64):
                    scores += scorer.score(convs[lo:lo + 64])
                    bar.advance(min(64, len(convs) - lo) // 2)
        finally:
            cache.close()
        run = JudgeRun()
        for i, p in enumerate(pairs):
            sx, sy = scores[2 * i], scores[2 * i + 1]
            for order, (sa, sb) in (("ab", (sx, sy)), ("ba", (sy, sx))):
                text = verdict_text(sa, sb, j.tie_margin)
                v = parse_verdict("abc", text)
                key = hashlib.sha256(json.dumps([scorer.model_id, p.pair_id, order]).encode()).hexdigest()[:40]
                rec = CallRecord(p.pair_id, order, 0, key, text, v.label, v.preference, v.status, None, 0, 0, 0.0,
                                 False)
                run.calls.append(rec)
                run.final[(p.pair_id, order)] = rec
            run.outcomes[p.pair_id] = aggregate(run.final[(p.pair_id, "ab")].preference,
                                                run.final[(p.pair_id, "ba")].preference)
        return run, f"reward_model:{scorer.model_id}", f"reward-model@{j.tie_margin:g}"
