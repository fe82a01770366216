"""Recorded alpaca_eval annotations: win rate from the continuous preferences, the discrete win rate, and the
length-controlled win rate of the GLM with its length and instruction-difficulty terms, on planted preferences."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xwin_data.evals.annotations import AnnotationsError, load_annotations, summarize_annotations


def write(path: Path, model: str, prefs, len_model, len_base=400, instructions=None) -> Path:
    recs = [{"instruction": (instructions or [f"q{i}" for i in range(len(prefs))])[i], "output_1": "b" * len_base,
             "output_2": "m" * int(n), "generator_1": "gpt4_turbo", "generator_2": model, "preference": p}
            for i, (p, n) in enumerate(zip(prefs, len_model))]
    path.write_text(json.dumps(recs))
    return path


def test_win_rates_from_continuous_and_discrete_preferences(tmp_path: Path) -> None:
    prefs = [1.0, 1.25, 1.5, 1.75, 2.0, 0, None, 1.9]  # 0: alpaca_eval's old draw code; None: invalid
    path = write(tmp_path / "a.json", "m", prefs, [400] * len(prefs))
    (s,) = summarize_annotations(load_annotations([path]), n_boot=200)
    p = [0.0, 0.25, 0.5, 0.75, 1.0, 0.5, 0.9]
    assert s["invalid"] == 1 and s["n"] == 7
    assert s["win_rate"] == pytest.approx(100 * sum(p) / 7)
    assert (s["win"], s["tie"], s["loss"]) == (3, 2, 2)
    assert s["discrete_win_rate"] == pytest.approx(100 * (3 + 0.5 * 2) / 7)
    assert s["ci_low"] <= s["win_rate"] <= s["ci_high"]


def test_length_controlled_rate_removes_a_length_effect(tmp_path: Path) -> None:
    """Preferences driven only by length (longer answers win): LC comes back to about 50%; a model as good as
    the baseline at equal length but always shorter is lifted back up."""
    rng = np.random.default_rng(0)
    n = 400
    delta = rng.normal(150, 200, n)  # mostly longer than the baseline
    p_true = 1 / (1 + np.exp(-2.0 * np.tanh(delta / delta.std())))
    prefs = 1 + rng.binomial(1, p_true)
    path = write(tmp_path / "long.json", "long", prefs.tolist(), (400 + delta).clip(1).tolist())
    (s,) = summarize_annotations(load_annotations([path]), n_boot=100)
    assert s["win_rate"] > 62
    assert abs(s["lc_win_rate"] - 50) < 6 and s["length_coef"] > 1
    assert s["lc_ci_low"] <= s["lc_win_rate"] <= s["lc_ci_high"]


def test_instruction_difficulty_is_fitted_jointly_over_models(tmp_path: Path) -> None:
    """Two models on the same instructions, with planted per-instruction difficulty: each model's LC comes out
    at its planted equal-length win rate, mean over instructions of σ(θ + γ_i)."""
    rng = np.random.default_rng(1)
    k, reps = 60, 5
    gamma = rng.normal(0, 2, k)
    files = []
    for model, theta in (("weak", -1.0), ("strong", 1.0)):
        instr = [f"q{i}" for i in range(k) for _ in range(reps)]
        g = np.repeat(gamma, reps)
        prefs = 1 + 1 / (1 + np.exp(-(theta + g)))  # continuous preferences, no length effect
        files.append(write(tmp_path / f"{model}.json", model, prefs.tolist(), [400] * len(prefs),
                           instructions=instr))
    results = {s["model"]: s for s in summarize_annotations(load_annotations(files), n_boot=50)}
    for model, theta in (("weak", -1.0), ("strong", 1.0)):
        want = 100 * np.mean(1 / (1 + np.exp(-(theta + gamma))))
        assert results[model]["lc_win_rate"] == pytest.approx(want, abs=3)
    assert results["strong"]["lc_win_rate"] > results["weak"]["lc_win_rate"] + 20


def test_a_file_that_is_not_annotations_names_what_is_missing(tmp_path: Path, cli) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "output_1": "a", "preference": 1.5}]))
    with pytest.raises(AnnotationsError, match="lacks output_2"):
        load_annotations([bad])
    proc = cli("eval", "alpaca", "--annotations", str(bad), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "lacks output_2" in proc.stderr
