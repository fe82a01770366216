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


@register_backend("reward_model", kind="judge")
class RewardModelJudge(Judge):
    @classmethod
    def identity(cls, spec: JudgeSpec) -> str:
        return local_identity(scorer_spec(spec))

    @classmethod
    def fingerprint(cls, spec: JudgeSpec) -> dict:
        return {"reward_model": cls.identity(spec)}

    def scores(self, pairs: Sequence[PairToJudge], cache_dir: Path, track: Track) -> tuple[list[float], str]:
        """(score of each pair's first and second answer, in that order; the scorer's model id)."""
        from xwin_data.llm.cache import RequestCache

        convs = [with_response(p.prompt, ans) for p in pairs for ans in (p.first, p.second)]
        scores: list[float] = []
        with RequestCache(Path(cache_dir) / "reward.sqlite") as cache, make_scorer(scorer_spec(self.spec)) as rm, \
                track(f"reward-model judge {self.spec.reward_model}", len(pairs), "pairs") as bar:
            for lo in range(0, len(convs), 64):
                scores += score_cached(rm, cache, convs[lo:lo + 64])
                bar.advance(min(64, len(convs) - lo) // 2)
            return scores, rm.model_id

    def judge(self, pairs: Sequence[PairToJudge], cache_dir: Path, track: Track) -> Verdicts:
        scores, model_id = self.scores(pairs, cache_dir, track)
        run = JudgeRun()
        for i, p in enumerate(pairs):
            sx, sy = scores[2 * i], scores[2 * i + 1]
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
        return Verdicts(run, f"reward_model:{model_id}", f"reward-model@{self.spec.tie_margin:g}")
