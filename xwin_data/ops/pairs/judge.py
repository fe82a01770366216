"""Xwin-Pair, second half: judge candidate pairs in both presentation orders and keep the decided ones.

Outputs (for table T, by default `xwin_pair`):
- T: decided pairs (prompt, chosen, rejected, strength, consistent, judge, template_version, per-order
  verdicts, tokens, cost): what `xwin-data export T OUT --format trl` turns into DPO / reward-model data;
- T_judgments: every pair with its outcome (first / second / tie / invalid);
- T_calls: every judge call (both orders, every parse retry): raw text, verdict, parse status, tokens, cost.
Pairs not in T are in the drops table with a reason (tie, inconsistent, below_min_strength,
judge_unparseable, judge_call_failed).

`judge.kind: openai` calls any OpenAI-compatible endpoint through the cached, rate-limited client, from the driver;
`judge.kind: reward_model` (the offline default) lets a reward model decide, in executor units of `pairs_per_unit`
pairs with one model per replica (a Ray actor each on a cluster), each unit committed as it finishes; any judge backend registered in
`xwin_data.llm.registry` is one more name (`backend` and `kind` are the same setting). The judge stage's fingerprint
includes the judge and parser code, so a parser fix rebuilds it from the request cache with no new calls
(`xwin-data build RECIPE --force STAGE` re-parses on demand).
"""
from __future__ import annotations

from pydantic import Field

from xwin_data.llm.judging import JudgeSpec
from xwin_data.ops.base import Op, Params, register
from xwin_data.ops.pairs.candidates import upstream_rows
from xwin_data.ops.pairs.tables import CALLS_SCHEMA, JUDGMENT_SCHEMA, PAIR_SCHEMA


class JudgePairsParams(Params):
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    keep_inconsistent: bool = Field(True, description="keep pairs whose orders disagree but still lean one way")
    min_strength: float = Field(0.0, ge=0)
    pairs_per_unit: int = Field(64, ge=1, description="a local judge model (reward_model) judges pairs in executor "
                                "units of this many, each committed as it finishes")


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


@register
class JudgePairs(Op):
    """Judge candidate pairs (both orders) with an LLM or a reward model -> chosen / rejected / strength."""

    name = "judge_pairs"
    Params = JudgePairsParams
    schema = "xwin_pair"
    min_inputs = max_inputs = 1
    version = "1"
    needs = {"pair_id", "prompt_id", "prompt", "first", "second", "first_id", "second_id", "first_policy",
             "second_policy"}
    adds = set(PAIR_SCHEMA.names)

    def output_tables(self, table: str, params) -> list[str]:
        return [table, f"{table}_judgments", f"{table}_calls"]

    def output_unit(self, table: str, main: str, params) -> str:
        return {main: "pairs", f"{main}_judgments": "judgments"}.get(table, "calls")

    def output_schema(self, table: str, main: str, params) -> str | None:
        return self.schema if table == main else None

    def output_columns(self, table: str, main: str, params, input_columns: set | None) -> set | None:
        schema = {main: PAIR_SCHEMA, f"{main}_judgments": JUDGMENT_SCHEMA, f"{main}_calls": CALLS_SCHEMA}[table]
        return set(schema.names)

    def external_fingerprint(self, params: JudgePairsParams) -> dict:
        j = params.judge
        return {**j.backend_class().fingerprint(j), "backend_code": j.code_fingerprint()}

    def preflight(self, params: JudgePairsParams) -> None:
        from xwin_data.llm.registry import canonical_name

        j = params.judge
        if canonical_name("judge", j.backend) == "openai":
            from xwin_data.evals.preflight import check_judge

            check_judge(j.base_url, j.api_key_env, url_flag="judge.base_url", key_flag="judge.api_key_env")

    def runs_for(self, params: JudgePairsParams) -> str:
        """A reward-model judge runs on the executor's replicas; an HTTP judge's client stays on the driver."""
        return "model" if params.judge.kind == "reward_model" else "driver"

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
        from xwin_data.ops.pairs.tables import write_outputs

        rows = ctx.con.sql(f"SELECT * FROM {ctx.input()} ORDER BY pair_id").to_arrow_table().to_pylist()
        pairs = [PairToJudge(r["pair_id"], [dict(m) for m in r["prompt"]], r["first"], r["second"]) for r in rows]
        judge = params.judge.build()
        replica = judge.replica(ctx.cache_dir)
        if replica is None:
            verdicts = judge.judge(pairs, ctx.cache_dir, ctx.track)
        else:
            verdicts = _judge_on_executor(ctx, judge, replica, pairs, params.pairs_per_unit)
        write_outputs(ctx, params, rows, verdicts.run, verdicts.judge_id, verdicts.template_id)
        ctx.stats.update(verdicts.stats)


def _judge_on_executor(ctx, judge, replica: tuple, pairs: list, per_unit: int):
    """A local judge model's work as executor units of `per_unit` pairs in pair-id order, one model per
    replica; each unit's output is committed (a killed build rejudges nothing it finished) and the verdicts are
    decided here from the rows of every unit."""
    import pyarrow.parquet as pq

    from xwin_data.core.executors import Model, Unit

    cls, kwargs, schema = replica
    units = []
    for lo in range(0, len(pairs), per_unit):
        chunk = pairs[lo:lo + per_unit]
        units.append(Unit(("pairs", chunk[0].pair_id, chunk[-1].pair_id, len(chunk)),
                          [(p.pair_id, p.prompt, p.first, p.second) for p in chunk], len(chunk)))
    stats = {"cached": 0, "scored": 0}
    model_ids: set[str] = set()

    def record(extra: dict) -> None:
        model_ids.add(extra.pop("model_id"))
        for name, n in extra.items():
            stats[name] = stats.get(name, 0) + n

    name = "judge_rows"
    results = ctx.executor.run(ctx, Model(cls, kwargs), units, {name: schema}, on_result=record, publish=False,
                               description=f"judge {judge.identity(judge.spec)}", unit="pairs")
    rows: dict = {}
    for part in (r.part(name) for r in results):
        if part is None:
            continue
        for row in pq.read_table(part).to_pylist():
            pid = row.pop("pair_id")
            rows[pid] = tuple(row.values())
    model_id = next(iter(model_ids)) if model_ids else judge.identity(judge.spec)
    return judge.verdicts(pairs, rows, model_id, {"judge_model_calls": stats})
