"""Xwin-Set scoring: every sampled response scored by a reward model and ranked within its prompt
(`score_responses`), row group by row group on the executor, so a killed build rescores nothing it finished.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from xwin_data.conversation import with_response
from xwin_data.core.context import sql_str
from xwin_data.ops.base import Op, Params, register


class ScoreParams(Params):
    rm: dict[str, Any] = Field({}, description="reward model spec (ScorerSpec): backend "
                               "(transformers | vllm | any registered scorer), model, revision, tokenizer, "
                               "chat_template, batch_size, max_length (default: the RM's own), options")
    rows_per_chunk: int = Field(4096, ge=1, description="responses read, scored and written at a time")
    placement: dict[str, Any] = Field({}, exclude=True, description="rm.replicas / gpus / tensor_parallel: where "
                                      "the reward model runs on a cluster (never in the fingerprint)")

    @model_validator(mode="before")
    @classmethod
    def _placement(cls, data: Any) -> Any:
        """`rm.replicas`, `rm.gpus` and `rm.tensor_parallel` say where the reward model runs, not what it scores."""
        from xwin_data.llm.spec import move_placement

        return move_placement(data, "rm")

    @field_validator("rm")
    @classmethod
    def _rm(cls, v: dict) -> dict:
        from xwin_data.llm.reward import ScorerSpec

        return ScorerSpec.model_validate(v).model_dump()


SCORED_SCHEMA = pa.schema([("response_id", pa.string()), ("score", pa.float64()), ("rm", pa.string())])


@register
class ScoreResponses(Op):
    """Reward-model scores for sampled responses, ranked within each prompt: the xwin_set table."""

    name = "score_responses"
    needs = {"prompt_id", "prompt", "response_id", "sample_index", "attempt", "response", "tokens", "finish_reason",
             "policy"}
    adds = {"prompt_id", "prompt", "response_id", "sample_index", "attempt", "response", "tokens", "finish_reason",
            "score", "rank", "group_size", "policy", "rm"}
    Params = ScoreParams
    schema = "xwin_set"
    min_inputs = max_inputs = 1
    version = "1"
    runs = "model"
    summary = "reward-model score per (prompt, response), cached; rank within the prompt (1 = best)"

    def resources(self, params: ScoreParams, declared: dict) -> dict:
        from xwin_data.llm.reward import ScorerSpec
        from xwin_data.llm.spec import Placement

        on_llm = ScorerSpec.model_validate(params.rm).backend == "vllm"  # on Ray: a ray.data.llm classify processor
        return Placement.model_validate(params.placement).resources(declared, "classify" if on_llm else None)

    def external_fingerprint(self, params: ScoreParams) -> dict:
        from xwin_data.llm.reward import ScorerSpec

        spec = ScorerSpec.model_validate(params.rm)
        return {"rm": spec.identity(), "backend_code": spec.code_fingerprint()}

    def estimate(self, view, params: ScoreParams) -> dict | None:
        rows = view.input_rows(0)
        return None if rows is None else {"responses_to_score": rows}

    def run(self, ctx, params: ScoreParams) -> None:
        import pyarrow.parquet as pq

        from xwin_data.core.executors import Model
        from xwin_data.core.executors.base import row_group_units

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
        # One unit per row group of the sampled responses, scored by one replica of the reward model.
        units = row_group_units(ctx.inputs[0].glob)
        stats: dict[str, Any] = {"cached": 0, "scored": 0, "truncated": 0}

        def record(extra: dict) -> None:
            for name in ("cached", "scored", "truncated"):
                stats[name] += extra[name]
            stats["rm"] = extra["rm"]

        from xwin_data.llm.reward import ScorerSpec

        on_llm = getattr(ctx.executor, "name", "") == "ray" and ScorerSpec.model_validate(params.rm).backend == "vllm"
        prefill = resources = None
        if on_llm:  # every score computed on vLLM classify replicas first; the units below then read the cache
            from xwin_data.core.executors import Resources

            prefill = self._score_on_ray(ctx, params, rows_sql, total)
            resources = Resources(cpus=1.0, gpus=0.0, replicas=Resources.of(ctx.resources).replicas)
        worker = Model(RowGroupScorer, {"rm": params.rm, "cache_path": str(ctx.cache_dir / "reward.sqlite"),
                                        "rows_per_chunk": params.rows_per_chunk, "deferred": on_llm})
        results = ctx.executor.run(ctx, worker, units, {"scores": SCORED_SCHEMA}, on_result=record, publish=False,
                                   description="reward-model scores", unit="responses", resources=resources)
        if prefill is not None:
            stats["scored"] += prefill.scored
            stats["cached"] -= prefill.scored
            stats["truncated"] += prefill.truncated
            ctx.stats["ray_data_llm"] = {"engine_replicas": prefill.replicas, "scores_computed": prefill.scored,
                                         "scores_cached": prefill.cached,
                                         "tensor_parallel": params.placement.get("tensor_parallel", 1)}
        parts = [r.part("scores") for r in results if r.part("scores")]
        scored_path = ctx.work_dir / "scores-none.parquet"
        if not parts:
            pq.write_table(SCORED_SCHEMA.empty_table(), scored_path)
        scores_sql = "read_parquet([" + ", ".join(sql_str(p) for p in parts or [str(scored_path)]) + "])"
        rm_id = stats.get("rm")
        ctx.write_sql(f"""
            SELECT r.prompt_id, r.prompt, r.response_id, CAST(r.sample_index AS INTEGER) AS sample_index,
                   CAST(r.attempt AS INTEGER) AS attempt, r.response, CAST(r.tokens AS INTEGER) AS tokens,
                   r.finish_reason, s.score,
                   CAST(row_number() OVER (PARTITION BY r.prompt_id ORDER BY s.score DESC, r.sample_index) AS INTEGER)
                       AS rank,
                   CAST(count(*) OVER (PARTITION BY r.prompt_id) AS INTEGER) AS group_size,
                   r.policy, s.rm
            FROM {src} r JOIN {scores_sql} s USING (response_id)
            ORDER BY r.prompt_id, r.sample_index""", total_rows=total)
        ctx.stats.update({"responses": total, "scores_cached": stats.get("cached", 0),
                          "scores_computed": stats.get("scored", 0), "truncated": stats.get("truncated", 0),
                          "rm": rm_id})

    @staticmethod
    def _score_on_ray(ctx, params: ScoreParams, rows_sql: str, total: int):
        """Every score the stage will ask for, computed through `ray.data.llm`'s classify task on vLLM engine
        replicas (`rm.replicas` of them) and stored in the reward cache (see `xwin_data.llm.ray_llm`)."""
        from xwin_data.core.executors import Resources
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.ray_llm import RayScorer
        from xwin_data.llm.reward import ScorerSpec

        ray = ctx.executor.connected()
        stage = Resources.of(ctx.resources)
        tp = int(params.placement.get("tensor_parallel") or 1)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if stage.replicas or not gpus:
            replicas = ctx.executor.replicas(stage, True, total) or 1
        else:  # as many engines as the cluster's GPUs hold, tensor_parallel GPUs each
            replicas = max(1, gpus // tp)

        def batches():  # the responses a chunk at a time: the driver never holds them all
            cursor = ctx.con.execute(f"SELECT prompt, response FROM ({rows_sql})")
            while chunk := cursor.fetchmany(params.rows_per_chunk):
                yield [with_response(p, r) for p, r in chunk]

        with ctx.track("scores", total, unit="responses") as bar, \
                RequestCache(str(ctx.cache_dir / "reward.sqlite")) as cache:
            scorer = RayScorer(ScorerSpec.model_validate(params.rm), cache, replicas=replicas, ray=ray,
                               tensor_parallel=params.placement.get("tensor_parallel"))
            try:
                return scorer.run(batches(), on_scored=bar.advance)
            finally:
                scorer.close()


class RowGroupScorer:
    """One replica of the reward model: scores the non-blank responses of one row group of sampled responses
    through the request cache. Loaded once per replica, wherever the executor runs it."""

    def __init__(self, rm: dict, cache_path: str, rows_per_chunk: int, deferred: bool = False):
        from xwin_data.llm.cache import RequestCache
        from xwin_data.llm.reward import RewardSpec, make_scorer

        spec = RewardSpec.model_validate(rm)
        if deferred:  # scores computed through ray.data.llm beforehand: render and key them, load no engine
            from xwin_data.llm.ray_llm import DeferredScorer

            self.scorer = DeferredScorer(spec)
        else:
            self.scorer = make_scorer(spec)
        self.cache = RequestCache(cache_path)
        self.rows_per_chunk = rows_per_chunk

    def __call__(self, payload: tuple[str, int]) -> tuple[pa.Table, dict]:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from xwin_data.llm.reward import score_cached

        source, row_group = payload
        group = pq.ParquetFile(source).read_row_group(row_group, columns=["prompt", "response_id", "response"])
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(group.column("response"), ""))), 0)
        group = group.filter(pc.invert(blank))
        stats: dict[str, int] = {}
        outs = []
        for batch in group.to_batches(max_chunksize=self.rows_per_chunk):
            rows = batch.to_pylist()
            convs = [with_response(r["prompt"], r["response"]) for r in rows]
            scores = score_cached(self.scorer, self.cache, convs, stats)
            outs.append(pa.table({"response_id": [r["response_id"] for r in rows], "score": scores,
                                  "rm": [self.scorer.model_id] * len(rows)}, schema=SCORED_SCHEMA))
        table = pa.concat_tables(outs) if outs else SCORED_SCHEMA.empty_table()
        return table, {"cached": stats.get("cached", 0), "scored": stats.get("scored", 0),
                       "truncated": stats.get("truncated", 0), "rm": self.scorer.model_id}

    def close(self) -> None:
        self.scorer.close()
        self.cache.close()
