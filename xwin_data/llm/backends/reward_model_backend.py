"""An offline pairwise judge: a reward model scores each (prompt, answer) through the one reward scorer
(`xwin_data.llm.reward`, the scores the Xwin-Set op stores) and the higher score wins. It needs no server, so a
recipe builds end to end on a fresh machine (with the project's tiny random reward model its verdicts are
arbitrary but deterministic).

It answers in the `abc` format of the text judges (`[[A]]`, `[[B]]`, `[[C]]` when the scores differ by less
than `tie_margin`), so the same parsing, aggregation and tables apply; being order-blind it is always consistent.
Scores are cached in the request cache exactly as the Xwin-Set op caches them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from xwin_data.llm.judge import CallRecord, JudgeRun, PairToJudge, aggregate, parse_verdict
from xwin_data.llm.judging import Judge, JudgeSpec, Track, Verdicts
from xwin_data.llm.registry import register_backend
from xwin_data.llm.reward import ScorerSpec, make_scorer, score_cached, with_response
from xwin_data.llm.spec import local_identity


def scorer_spec(spec: JudgeSpec) -> ScorerSpec:
    """The reward scorer this judge decides with: `reward_model`, with the judge's batch size and options."""
    return ScorerSpec(model=spec.reward_model, revision=spec.revision, batch_size=spec.batch_size,
                      options=spec.options)


def verdict_text(score_a: float, score_b: float, tie_margin: float) -> str:
    label = "C" if abs(score_a - score_b) < tie_margin else "A" if score_a > score_b else "B"
    return f"reward(A)={score_a:.6f} reward(B)={score_b:.6f}\n\n[[{label}]]"


class PairScorer:
    """One replica of the judging reward model: scores both answers of each pair of a unit through the request
    cache. Loaded once per replica, wherever the executor runs it (this process, or a Ray actor)."""

    def __init__(self, spec: dict, cache_path: str):
        from xwin_data.llm.cache import RequestCache

        self.scorer = make_scorer(scorer_spec(JudgeSpec.model_validate(spec)))
        self.cache = RequestCache(cache_path)

    def __call__(self, pairs: list[tuple[str, list, str, str]]):
        """(pair id, prompt, first, second) of each pair -> (a table of both scores per pair, cache counts)."""
        import pyarrow as pa

        convs = [with_response(prompt, ans) for _, prompt, first, second in pairs for ans in (first, second)]
        stats: dict[str, int] = {}
        scores = score_cached(self.scorer, self.cache, convs, stats)
        table = pa.table({"pair_id": [p[0] for p in pairs], "score_first": scores[0::2],
                          "score_second": scores[1::2]}, schema=PAIR_SCORES_SCHEMA)
        return table, {"model_id": self.scorer.model_id, "cached": stats.get("cached", 0),
                       "scored": stats.get("scored", 0)}

    def close(self) -> None:
        self.scorer.close()
        self.cache.close()


def _pair_scores_schema():
    import pyarrow as pa

    return pa.schema([("pair_id", pa.string()), ("score_first", pa.float64()), ("score_second", pa.float64())])


PAIR_SCORES_SCHEMA = _pair_scores_schema()


@register_backend("reward_model", kind="judge")
class RewardModelJudge(Judge):
    @classmethod
    def identity(cls, spec: JudgeSpec) -> str:
        return local_identity(scorer_spec(spec))

    @classmethod
    def fingerprint(cls, spec: JudgeSpec) -> dict:
        return {"reward_model": cls.identity(spec)}

    def replica(self, cache_dir: Path) -> tuple[type, dict, "object"]:
        """The judge's model as an executor replica: its class, arguments and output schema."""
        return PairScorer, {"spec": self.spec.model_dump(), "cache_path": str(Path(cache_dir) / "reward.sqlite")}, \
            PAIR_SCORES_SCHEMA

    def scores(self, pairs: Sequence[PairToJudge], cache_dir: Path, track: Track) -> tuple[list[float], str]:
        """(score of each pair's first and second answer, in that order; the scorer's model id), in this process."""
        cls, kwargs, _ = self.replica(cache_dir)
        scorer = cls(**kwargs)
        scores: list[float] = []
        model_id = scorer.scorer.model_id
        try:
            with track(f"reward-model judge {self.spec.reward_model}", len(pairs), "pairs") as bar:
                for lo in range(0, len(pairs), 32):
                    chunk = pairs[lo:lo + 32]
                    table, _ = scorer([(p.pair_id, p.prompt, p.first, p.second) for p in chunk])
                    for a, b in zip(table.column("score_first").to_pylist(), table.column("score_second").to_pylist()):
                        scores += [a, b]
                    bar.advance(len(chunk))
        finally:
            scorer.close()
        return scores, model_id

    def judge(self, pairs: Sequence[PairToJudge], cache_dir: Path, track: Track) -> Verdicts:
        scores, model_id = self.scores(pairs, cache_dir, track)
        return self.verdicts(pairs, {p.pair_id: (scores[2 * i], scores[2 * i + 1]) for i, p in enumerate(pairs)},
                             model_id)

    def verdicts(self, pairs: Sequence[PairToJudge], scores: dict[str, tuple[float, float]], model_id: str,
                 stats: dict | None = None) -> Verdicts:
        """Both orders of each pair decided by its two scores (wherever they were computed)."""
        run = JudgeRun()
        for p in pairs:
            sx, sy = scores[p.pair_id]
            for order, (sa, sb) in (("ab", (sx, sy)), ("ba", (sy, sx))):
                text = verdict_text(sa, sb, self.spec.tie_margin)
                v = parse_verdict("abc", text)
                key = hashlib.sha256(json.dumps([model_id, p.pair_id, order]).encode()).hexdigest()[:40]
                rec = CallRecord(p.pair_id, order, 0, key, text, v.label, v.preference, v.status, None, 0, 0, 0.0,
                                 False)
                run.calls.append(rec)
                run.final[(p.pair_id, order)] = rec
            run.outcomes[p.pair_id] = aggregate(run.final[(p.pair_id, "ab")].preference,
                                                run.final[(p.pair_id, "ba")].preference)
        return Verdicts(run, f"reward_model:{model_id}", f"reward-model@{self.spec.tie_margin:g}", dict(stats or {}))
