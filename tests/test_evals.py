"""Evaluation runners: recorded GPT-4 judgments aggregated to the counts computed independently; the live
AlpacaEval-style and MT-bench paths with a tiny local model and a real OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_here

import xwin_data
from xwin_data.evals.stats import cohen_kappa, length_controlled_win_rate

VICUNA = "lm-sys_FastChat_vicuna-eval-2023/fastchat/eval/table"
FASTCHAT = "lm-sys_FastChat/fastchat/llm_judge/data"


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.01  # something is drawn


def _eval_results(catalog: Path) -> list[dict]:
    con = xwin_data.connect(catalog)
    try:
        return con.sql("SELECT * FROM eval_results ORDER BY created_at").to_arrow_table().to_pylist()
    finally:
        con.close()


def test_shipped_mtbench_prompts_are_fastchats(shared_data: Path) -> None:
    from xwin_data.evals.fastchat import load_judge_prompts

    shipped, original = load_judge_prompts(), load_judge_prompts(shared_data / FASTCHAT / "judge_prompts.jsonl")
    assert sorted(shipped) == sorted(original) and len(shipped) == 8
    for name, p in original.items():
        assert (shipped[name]["system_prompt"], shipped[name]["prompt_template"]) == (p["system_prompt"],
                                                                                      p["prompt_template"])
        assert "Apache-2.0" in shipped[name]["source"]


def test_recorded_vicuna_reviews_win_tie_loss(shared_data: Path, tmp_path: Path) -> None:
    base = shared_data / VICUNA
    files = sorted((base / "review").rglob("review_*.jsonl"))
    out = tmp_path / "rec"
    proc = run_here("eval", "recorded", *map(str, files), "--answers", str(base / "answer"), "--out", str(out),
                    "--n-boot", "200", "--catalog", str(tmp_path / "cat"))
    rows = {r["judge"]: r for r in _eval_results(tmp_path / "cat")}
    assert len(rows) == 13
    results = {r["review"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert len(results) == len(files) == 13
    for f in files:
        # Independent: the numeric `score` field (the runner parsed the review text), evaluated model = answer 2.
        scores = [json.loads(line)["score"] for line in f.read_text().splitlines()]
        expected = {"win": sum(s[1] > s[0] for s in scores), "tie": sum(s[1] == s[0] for s in scores),
                    "loss": sum(s[1] < s[0] for s in scores)}
        got = results[f.name]
        assert {k: got[k] for k in expected} == expected, f.name
        assert got["invalid"] == 0
        rate = 100 * (expected["win"] + 0.5 * expected["tie"]) / len(scores)
        assert got["win_rate"] == pytest.approx(rate)
        assert got["ci_low"] <= rate <= got["ci_high"]
        row = rows["recorded:" + f.name]  # the same numbers, by SQL
        assert (row["win"], row["tie"], row["loss"], row["invalid"]) == (expected["win"], expected["tie"],
                                                                         expected["loss"], 0)
        assert row["win_rate"] == pytest.approx(rate) and row["items"] == len(scores)
        assert got["shares"]["tie"][0] == pytest.approx(100 * expected["tie"] / len(scores))
    gpt35 = results["review_gpt35_vicuna-13b.jsonl"]
    assert gpt35["model"].startswith("vicuna-13b") and gpt35["reference_model"].startswith("gpt-3.5")
    assert (gpt35["win"], gpt35["tie"], gpt35["loss"]) == (14, 22, 44)
    assert pq.read_table(out / "records.parquet").num_rows == 13 * 80
    _png_ok(out / "recorded.png")


def test_length_controlled_win_rate_removes_planted_length_effect() -> None:
    """Preferences generated from a pure length effect (no quality gap): the raw win rate is far from 50%, the
    length-controlled one is near 50%."""
    rng = np.random.default_rng(0)
    d = rng.normal(300, 200, 2000)  # the model is usually longer
    p = 1 / (1 + np.exp(-2.0 * np.tanh(d / d.std())))
    y = (rng.random(d.size) < p).astype(float)
    lc = length_controlled_win_rate(y, 500 + d, np.full(d.size, 500.0))
    assert y.mean() > 0.7 and abs(lc["lc_win_rate"] - 50) < 6 and lc["length_coef"] > 1


def test_kappa_textbook_value() -> None:
    # 2x2 example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> p_o 0.7, p_e 0.5, kappa 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_live_alpaca_against_local_judge(shared_data: Path, tmp_path: Path, openai_server) -> None:
    from openai_server import pairwise_judge, prefer_longer

    base = shared_data / VICUNA
    qs = {json.loads(x)["question_id"]: json.loads(x)["text"] for x in (base / "question.jsonl").read_text().splitlines()}
    refs = [json.loads(x) for x in (base / "answer" / "answer_gpt35.jsonl").read_text().splitlines()][:4]
    ref_file = tmp_path / "ref.jsonl"
    ref_file.write_text("".join(json.dumps({"id": r["question_id"], "instruction": qs[r["question_id"]],
                                            "output": r["text"][: 20 + 30 * i]}) + "\n" for i, r in enumerate(refs)))
    openai_server.reply = pairwise_judge(prefer_longer)
    args = ("eval", "alpaca", "--model", "tiny-policy", "--reference", str(ref_file), "--judge-model", "test-judge",
            "--judge-base-url", openai_server.base_url, "--max-new-tokens", "24",
            "--catalog", str(tmp_path / "cat"), "--out", str(tmp_path / "out"))
    run_here(*args)
    assert openai_server.total == 8  # 4 instructions x 2 presentation orders
    recs = pq.read_table(tmp_path / "out" / "records.parquet").to_pylist()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    expected = ["win" if len(r["answer"]) > len(r["reference"]) else "loss" if len(r["answer"]) < len(r["reference"])
                else "tie" for r in recs]
    assert [r["outcome"] for r in recs] == expected
    assert (summary["win"], summary["tie"], summary["loss"]) == tuple(expected.count(k) for k in ("win", "tie", "loss"))
    # both orders reached the judge with the right answer in the right slot
    from openai_server import judge_answers

    slots = [judge_answers(body["messages"][-1]["content"]) for body in openai_server.requests]
    for r in recs:
        assert {"A": r["answer"].strip(), "B": r["reference"].strip()} in slots
        assert {"A": r["reference"].strip(), "B": r["answer"].strip()} in slots
    (row,) = _eval_results(tmp_path / "cat")  # the run is a row of the catalog table, with the same numbers
    assert (row["eval"], row["model"], row["items"]) == ("alpaca", "tiny-policy", 4)
    assert (row["win"], row["tie"], row["loss"]) == (summary["win"], summary["tie"], summary["loss"])
    assert row["win_rate"] == pytest.approx(100 * (expected.count("win") + 0.5 * expected.count("tie")) / 4)
    assert row["template"].startswith("pairwise-abc@v") and row["png"] == str(tmp_path / "out" / "alpaca.png")
    _png_ok(tmp_path / "out" / "alpaca.png")
    run_here(*args)  # a second run is answered from the request cache
    assert openai_server.total == 8


def test_live_mtbench_single_and_pairwise(shared_data: Path, tmp_path: Path, openai_server) -> None:
    from openai_server import ChatRequest, judge_answers, prefer_longer

    src = shared_data / FASTCHAT / "mt_bench"
    qs = [json.loads(x) for x in (src / "question.jsonl").read_text().splitlines()]
    picked = [q for q in qs if q["question_id"] in (81, 111)]  # one writing, one math (graded with a reference)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in picked))
    baseline = shared_data / "lm-sys_FastChat_pr3404-gpt-4o" / "fastchat/llm_judge/data/mt_bench/model_answer/gpt-4o.jsonl"

    def reply(req: ChatRequest) -> str:
        if "[[A]]" in req.text:  # the pairwise prompt
            ans = judge_answers(req.text)
            return f"[[{prefer_longer(ans['A'], ans['B'])}]]"
        if "Reference Answer" in req.text:
            return "Weak. Rating: [[3]]"
        return "Fine. Rating: [[8]]" if "Conversation with User" not in req.text else "Rating: [[6]]"

    openai_server.reply = reply
    run_here("eval", "mtbench", "--model", "tiny-policy", "--questions", str(tmp_path / "q.jsonl"),
             "--reference-answers", str(src / "reference_answer" / "gpt-4.jsonl"), "--baseline", str(baseline),
             "--judge-model", "test-judge", "--judge-base-url", openai_server.base_url, "--max-new-tokens", "16",
             "--catalog", str(tmp_path / "cat"), "--out", str(tmp_path / "out"))
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    # writing q81: turn 1 graded 8, turn 2 (multi-turn prompt) 6; math q111: both turns against a reference, 3
    assert s["turn_1"]["score"] == pytest.approx((8 + 3) / 2) and s["turn_2"]["score"] == pytest.approx((6 + 3) / 2)
    assert s["overall"]["score"] == pytest.approx((8 + 6 + 3 + 3) / 4)
    assert s["by_category"] == {"math": 3.0, "writing": 7.0} and s["invalid_grades"] == 0
    # the tiny model's short answers lose to GPT-4o's long ones in both orders under a length-preferring judge
    assert (s["pairwise"]["win"], s["pairwise"]["loss"]) == (0, 2)
    assert openai_server.total == 4 + 4
    (row,) = _eval_results(tmp_path / "cat")
    assert row["eval"] == "mtbench" and row["score"] == pytest.approx(5.0) and row["turn_2_score"] == pytest.approx(4.5)
    assert json.loads(row["by_category"]) == {"math": 3.0, "writing": 7.0} and (row["win"], row["loss"]) == (0, 2)
    _png_ok(tmp_path / "out" / "mtbench.png")
