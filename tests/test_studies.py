"""Judge and best-of-n studies through the CLI on real catalogs: the numbers behind each PNG are checked against
an independent computation, and each PNG is opened."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_here

import xwin_data
from xwin_data.bon import mean_best_of
from xwin_data.core.catalog import Catalog

VICUNA = "lm-sys_FastChat_vicuna-eval-2023/fastchat/eval/table"


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.01  # something is drawn


def _metrics(folder: Path) -> dict:
    return {r["metric"]: r for r in pq.read_table(folder / "results.parquet").to_pylist()}


def test_judge_study_on_recorded_gpt4_reviews(tmp_path: Path, shared_data: Path) -> None:
    base = shared_data / VICUNA
    recipe = f"""\
name: vicuna_reviews
stages:
  - id: vicuna_reviews
    op: sql
    params:
      query: "SELECT r.review_id AS pair_id, a1.text AS response_a, a2.text AS response_b, r.text AS judgment
              FROM read_json('{base}/review/*/*.jsonl', format='newline_delimited') r
              JOIN read_json('{base}/answer/*.jsonl', format='newline_delimited') a1 ON a1.answer_id = r.answer1_id
              JOIN read_json('{base}/answer/*.jsonl', format='newline_delimited') a2 ON a2.answer_id = r.answer2_id"
"""
    (tmp_path / "r.yaml").write_text(recipe)
    run_here("build", "r.yaml", "--quiet", cwd=tmp_path)
    out = tmp_path / "study"
    res = run_here("study", "judge", "vicuna_reviews", "--out", str(out), "--n-boot", "300", cwd=tmp_path)
    assert "longer_wins_share" in res.stdout + res.stderr

    # Independent computation from the reviews' numeric `score` field (the study parsed the text instead).
    answers = {}
    for f in (base / "answer").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            a = json.loads(line)
            answers[a["answer_id"]] = len(a["text"])
    reviews = [json.loads(line) for f in sorted((base / "review").rglob("*.jsonl")) for line in f.read_text().splitlines()]
    ties = sum(r["score"][0] == r["score"][1] for r in reviews)
    decisive = [r for r in reviews if r["score"][0] != r["score"][1]]
    first_wins = sum(r["score"][0] > r["score"][1] for r in decisive)
    by_len = [r for r in decisive if answers[r["answer1_id"]] != answers[r["answer2_id"]]]
    longer = sum((r["score"][0] > r["score"][1]) == (answers[r["answer1_id"]] > answers[r["answer2_id"]]) for r in by_len)

    m = _metrics(out)
    assert len(reviews) == 1040
    assert m["invalid_rate"]["value"] == 0.0 and m["invalid_rate"]["n"] == 1040
    assert m["tie_rate"]["value"] == pytest.approx(ties / 1040)
    assert m["first_position_win_share"]["value"] == pytest.approx(first_wins / len(decisive))
    assert m["longer_wins_share"]["value"] == pytest.approx(longer / len(by_len))
    assert m["longer_wins_share"]["ci_low"] < m["longer_wins_share"]["value"] < m["longer_wins_share"]["ci_high"]
    assert m["position_flip_rate"]["n"] == 0  # one presentation order per review: no flips can be measured
    _png_ok(out / "judge_rates.png")


def test_judge_study_both_orders_labels_and_rewards(tmp_path: Path) -> None:
    """A planted judge: right on pairs 0-5, always picks the first-shown answer on pairs 6-9, one bad reply."""
    rows = []
    for i in range(10):
        truth = "a" if i % 2 == 0 else "b"
        if i < 6:
            ab, ba = ("A", "B") if truth == "a" else ("B", "A")
        else:
            ab, ba = "A", "A"
        if i == 9:
            ba = "garbage"
        rows.append({"pair_id": f"p{i}", "verdict_ab": ab, "verdict_ba": ba, "label": truth,
                     "response_a": "x" * (10 + 5 * i), "response_b": "y" * 30,
                     "reward_a": 1.0 if truth == "a" else 0.0, "reward_b": 0.0 if truth == "a" else 1.0})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text("name: planted\nstages:\n  - id: judged\n    op: sql\n    params:\n"
                                     "      query: \"SELECT * FROM read_json('${recipe_dir}/pairs.jsonl')\"\n")
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", show_progress=False)
    out = tmp_path / "study"
    run_here("study", "judge", "judged", "--catalog", str(tmp_path / "cat"), "--out", str(out), "--n-boot", "200")
    m = _metrics(out)
    summary = json.loads((out / "summary.json").read_text())
    assert m["invalid_rate"]["value"] == pytest.approx(1 / 20)
    # pairs 6-8 were judged in both orders and flipped with the order (A then A = a then b)
    assert m["position_flip_rate"]["value"] == pytest.approx(3 / 9)
    # decisive valid calls: 19; first-shown wins: 12 correct calls split 6/6 (pairs 0-5) + 7 biased calls
    assert m["first_position_win_share"]["value"] == pytest.approx((6 + 7) / 19)
    # aggregated: pairs 0-5 correct, 6-8 ties (flipped), 9 one valid order 'a' (label b, since 9 is odd)
    judge = ["a", "b", "a", "b", "a", "b", "tie", "tie", "tie", "a"]
    label = ["a" if i % 2 == 0 else "b" for i in range(10)]
    assert m["label_accuracy"]["value"] == pytest.approx(6 / 10)
    p_o = 0.6
    p_e = (4 / 10) * (5 / 10) + (3 / 10) * (5 / 10) + (3 / 10) * 0
    assert summary["label_kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert summary["label_confusion"] == [[3, 0, 2], [1, 3, 1], [0, 0, 0]]
    assert judge.count("tie") == 3 and len(label) == 10
    # reward model agrees with the truth; judge decisive on 7 pairs, 6 right
    assert m["rm_judge_agreement"]["value"] == pytest.approx(6 / 7)
    for png in ("judge_rates.png", "judge_vs_labels.png"):
        _png_ok(out / png)


def test_bon_study_curves_match_enumeration(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for policy, shift in (("sft", 0.0), ("rs", 0.5)):
        for p in range(6):
            for r in range(5):
                rows.append({"policy": policy, "prompt_id": f"q{p}", "response_id": f"{policy}-{p}-{r}",
                             "score": round(float(rng.normal(shift, 1)), 4)})
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text("name: planted_set\nstages:\n  - id: xwin_set\n    op: sql\n    params:\n"
                                     "      query: \"SELECT * FROM read_json('${recipe_dir}/set.jsonl')\"\n")
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", show_progress=False)
    out = tmp_path / "bon"
    run_here("study", "bon", "--catalog", str(tmp_path / "cat"), "--out", str(out), "--n-boot", "200")
    got = {(r["policy"], r["n"]): r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert len(got) == 10
    for policy in ("sft", "rs"):
        # per policy and prompt, the exact expectation (brute-force checked in tests/test_bon.py)
        by_prompt = {f"q{p}": [r["score"] for r in rows if r["policy"] == policy and r["prompt_id"] == f"q{p}"]
                     for p in range(6)}
        expected = mean_best_of(by_prompt, range(1, 6))
        for n in range(1, 6):
            assert got[(policy, n)]["mean_best_score"] == pytest.approx(expected[n], abs=1e-9)
        assert got[(policy, 1)]["mean_best_score"] < got[(policy, 5)]["mean_best_score"]
    _png_ok(out / "bon_curves.png")


def test_judge_study_and_pair_stats_on_the_xwin_pair_recipe(tmp_path: Path, openai_server) -> None:
    """The Xwin-Pair recipe built with its judge on a local server that is position-biased on some pairs: the study
    reads the judgments table (ties included), and its rates match the ones computed from the judge's rule."""
    from openai_server import judge_answers

    def decide(a: str, b: str) -> str:  # biased to the first-shown answer when the total length is a multiple of 3
        return "A" if (len(a) + len(b)) % 3 == 0 else "A" if len(a) > len(b) else "B" if len(b) > len(a) else "C"

    openai_server.reply = lambda req: "Compared. [[{}]]".format(decide(*(judge_answers(req.text)[k] for k in "AB")))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "xwin_pair.yaml"
    xwin_data.build(recipe, tmp_path / "cat", show_progress=False,
                    sets=["max_prompts=5", "judge.kind=openai", "judge.model=test-judge",
                          f"judge.base_url={openai_server.base_url}", "judge.budget_usd=null"])
    out = tmp_path / "study"
    res = run_here("study", "judge", "xwin_pair", "--catalog", str(tmp_path / "cat"), "--out", str(out),
                   "--n-boot", "200")
    assert "xwin_pair_judgments" in res.stdout + res.stderr

    con = xwin_data.connect(tmp_path / "cat")
    judged = con.sql("SELECT first, second FROM xwin_pair_judgments").to_arrow_table().to_pylist()
    stats = con.sql("SELECT * FROM pair_stats").to_arrow_table().to_pylist()
    decided = con.sql("SELECT chosen, rejected, consistent FROM xwin_pair").to_arrow_table().to_pylist()
    con.close()
    # Expected, from the rule: per-order verdicts for the response shown first in the ab order (x = first).
    exp = []
    for p in judged:
        x, y = p["first"].strip(), p["second"].strip()
        ab, ba = decide(x, y), decide(y, x)
        exp.append(({"A": "x", "B": "y", "C": "tie"}[ab], {"A": "y", "B": "x", "C": "tie"}[ba], p))
    calls = [(v, order, p) for v_ab, v_ba, p in exp for v, order in ((v_ab, "ab"), (v_ba, "ba"))]
    decisive = [(v, o, p) for v, o, p in calls if v != "tie"]
    m = _metrics(out)
    assert len(judged) >= 4 and m["invalid_rate"]["n"] == 2 * len(judged) and m["invalid_rate"]["value"] == 0
    assert m["tie_rate"]["value"] == pytest.approx(sum(v == "tie" for v, _, _ in calls) / len(calls))
    first_wins = sum(v == ("x" if o == "ab" else "y") for v, o, _ in decisive)
    assert m["first_position_win_share"]["value"] == pytest.approx(first_wins / len(decisive))
    flips = sum({a, b} == {"x", "y"} for a, b, _ in exp)
    assert m["position_flip_rate"]["value"] == pytest.approx(flips / len(exp))
    by_len = [(v, p) for v, _, p in decisive if len(p["first"]) != len(p["second"])]
    longer = sum((v == "x") == (len(p["first"]) > len(p["second"])) for v, p in by_len)
    if by_len:
        assert m["longer_wins_share"]["value"] == pytest.approx(longer / len(by_len))
    # pair_stats reads the decided table: the pairs whose orders did not cancel out
    kept = [(a, b) for a, b, _ in exp if not ({a, b} == {"x", "y"} or a == b == "tie")]
    assert len(decided) == len(kept) and len(stats) == (1 if kept else 0)
    if kept:
        assert stats[0]["pairs"] == len(kept) and stats[0]["judge"] == "test-judge"
        assert stats[0]["consistent_share"] == pytest.approx(round(sum(a == b for a, b in kept) / len(kept), 4))
    _png_ok(out / "judge_rates.png")
