"""The data-scaling study end to end: the ShareGPT recipe with small nested subsets, SFT of the tiny policy on
each through the training layer, reward-model and judge evaluators, and resumption (counted trainings)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_here

import xwin_data
from xwin_data.core.catalog import Catalog

PROJECT = Path(__file__).resolve().parents[1]
SIZES = [20, 40, 80]
FAST = ["--set", "evaluator.max_prompts=6", "--set", "evaluator.n_boot=200"]


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.01


def _runs(catalog: Path) -> list[tuple]:
    con = xwin_data.connect(catalog)
    try:
        return con.execute("SELECT table_name, stage, output_dir FROM runs ORDER BY created_at").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("scaling")
    run_here("build", str(PROJECT / "recipes" / "sharegpt_sft.yaml"), "--set", f"subset_sizes={SIZES}",
             "--set", "near_dedup=false", "--quiet", cwd=work)
    return work


def test_scaling_study_trains_each_size_once_and_evaluates(work: Path, openai_server) -> None:
    catalog = work / "xwin-catalog"
    out = work / "study"
    run_here("study", "scaling", str(PROJECT / "recipes" / "scaling.yaml"), "--out", str(out), *FAST, cwd=work)

    runs = _runs(catalog)
    assert [r[0] for r in runs] == [f"sft_sharegpt_{s}" for s in SIZES]  # one training per size, in order
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["size"] for r in rows] == SIZES and all(r["trained_now"] for r in rows)
    assert [r["model_path"] for r in rows] == [r[2] for r in runs]
    per_prompt = pq.read_table(out / "per_prompt.parquet").to_pylist()
    for r in rows:
        mine = [p for p in per_prompt if p["size"] == r["size"]]
        assert len(mine) == r["n"] == 6
        outcomes = ["win" if p["gap"] > 0 else "loss" if p["gap"] < 0 else "tie" for p in mine]
        assert [p["outcome"] for p in mine] == outcomes
        assert (r["win"], r["tie"], r["loss"]) == tuple(outcomes.count(k) for k in ("win", "tie", "loss"))
        assert r["win_rate"] == pytest.approx(100 * (r["win"] + 0.5 * r["tie"]) / 6)
        assert r["ci_low"] <= r["win_rate"] <= r["ci_high"]

    # Independent check of one size: the reward model scores the stored answer and reference again.
    from xwin_data.llm.reward import RewardSpec, make_scorer

    con = xwin_data.connect(catalog)
    prompts = {i: m for i, m in con.execute("SELECT id, messages FROM sft_sharegpt").fetchall()}
    in_subsets = {i for (i,) in con.execute("SELECT id FROM sft_sharegpt_80").fetchall()}
    con.close()
    p = next(p for p in per_prompt if p["size"] == 40)
    assert p["id"] not in in_subsets  # held out from every subset
    msgs = [dict(m) for m in prompts[p["id"]]]
    first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    assert p["reference"] == msgs[first]["content"]
    with make_scorer(RewardSpec(model="tiny-reward")) as rm:
        s_model, s_ref = rm.score_responses([msgs[:first]] * 2, [p["answer"], p["reference"]])
    assert (s_model, s_ref) == (pytest.approx(p["score_model"], abs=1e-4), pytest.approx(p["score_reference"], abs=1e-4))
    _png_ok(out / "scaling.png")

    # Same config again (library API): nothing trained, nothing re-evaluated.
    from xwin_data.studies.scaling import load_scaling_config, run_scaling_study

    cfg = load_scaling_config(PROJECT / "recipes" / "scaling.yaml", FAST[1::2])
    summary = run_scaling_study(Catalog(catalog), cfg, out, log=lambda m: None)
    assert summary["trained"] == [] and summary["reused"] == SIZES and len(_runs(catalog)) == 3
    assert pq.read_table(out / "results.parquet").to_pylist() == [r | {"trained_now": False} for r in rows]

    # A lost size (its state removed, as if the study died mid-training) and a new evaluator (a judge on a local
    # server): only that size is trained again; every size is evaluated by the judge.
    from openai_server import pairwise_judge, prefer_longer

    (out / "state" / f"train-{rows[-1]['train_key']}.json").unlink()
    openai_server.reply = pairwise_judge(prefer_longer)
    cfg = load_scaling_config(PROJECT / "recipes" / "scaling.yaml", FAST[1::2] + [
        "evaluator.kind=judge", "evaluator.judge.model=test-judge", f"evaluator.judge.base_url={openai_server.base_url}"])
    summary = run_scaling_study(Catalog(catalog), cfg, out, log=lambda m: None)
    assert summary["trained"] == [80] and summary["reused"] == [20, 40] and len(_runs(catalog)) == 4
    judged = pq.read_table(out / "results.parquet").to_pylist()
    judged_prompts = pq.read_table(out / "per_prompt.parquet").to_pylist()
    # every (prompt, answer) judged in both orders; sizes that gave the same answer share cached calls
    assert openai_server.total == 2 * len({(p["id"], p["answer"]) for p in judged_prompts}) > 0
    assert [r["evaluator"] for r in judged] == ["judge"] * 3
    assert [r["train_key"] for r in judged] == [r["train_key"] for r in rows]
    for r in judged:
        mine = [p for p in judged_prompts if p["size"] == r["size"]]
        expected = ["win" if len(p["answer"].strip()) > len(p["reference"].strip()) else "loss"
                    if len(p["answer"].strip()) < len(p["reference"].strip()) else "tie" for p in mine]
        assert [p["outcome"] for p in mine] == expected
        assert r["win"] == expected.count("win") and r["loss"] == expected.count("loss")


def test_scaling_config_errors_are_clear(work: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: s\ntrain:\n  overides: {max_steps: 1}\n")
    proc = run_here("study", "scaling", str(bad), "--catalog", str(work / "xwin-catalog"), check=False)
    assert proc.returncode == 2 and "unknown key 'train.overides'" in proc.stdout + proc.stderr
    proc = run_here("study", "scaling", str(PROJECT / "recipes" / "scaling.yaml"), "--catalog",
                    str(tmp_path / "empty"), check=False)
    assert proc.returncode == 2 and "sft_sharegpt_subsets" in proc.stdout + proc.stderr
