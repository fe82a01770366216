"""The WIND trainer: its regression target reproduces the exact tabular update, win rates are leave-one-out
with ties counting half, and a few iterations on real prompts with tiny models fit each iteration's samples,
start from the stored `wind_groups`-style groups when asked, and save a policy that reloads."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import xwin_data
from xwin_data.training.scripts import run_script
from xwin_data.training.wind import centred, group_win_rates, wind_target
from xwin_data.training.wind_tabular import bradley_terry, softmax, win_rates, wind_step


def test_fitted_target_is_the_tabular_wind_step():
    rng = np.random.default_rng(0)
    P = bradley_terry(rng.normal(size=(4, 6)) * 2)
    pi_t, pi_ref = softmax(rng.normal(size=(4, 6))), softmax(rng.normal(size=(4, 6)))
    for eta, beta in [(1.0, 0.1), (0.5, 2.0)]:
        w = torch.tensor(win_rates(P, pi_t))
        target = centred(wind_target(w, torch.tensor(np.log(pi_t)), torch.tensor(np.log(pi_ref)), eta, beta))
        fitted = torch.softmax(torch.tensor(np.log(pi_t)) + target, dim=-1).numpy()
        assert np.abs(fitted - wind_step(pi_t, pi_ref, P, eta, beta)).max() < 1e-12


def test_group_win_rates_are_leave_one_out_with_half_ties():
    scores = torch.tensor([[0.5, 2.0, 0.5, -1.0], [1.0, 1.0, 1.0, 1.0]])
    got = group_win_rates(scores)
    for g, i in itertools.product(range(2), range(4)):
        others = [j for j in range(4) if j != i]
        want = sum(1.0 if scores[g, i] > scores[g, j] else 0.5 if scores[g, i] == scores[g, j] else 0.0
                   for j in others) / 3
        assert float(got[g, i]) == pytest.approx(want)


@pytest.fixture(scope="module")
def wind_catalog(tmp_path_factory, shared_data, project_dir):
    cat = tmp_path_factory.mktemp("wind") / "catalog"
    sets = [f"hh_dir={shared_data / 'anthropics_hh-rlhf'}"]
    assert xwin_data.build(project_dir / "train/recipes/hh_rlhf.yaml", cat, sets=sets,
                           show_progress=False).status == "ok"
    groups = tmp_path_factory.mktemp("recipe") / "groups.yaml"
    # a wind_groups-shaped table from real pairs: chosen scored 1, rejected 0 (stored groups of two)
    groups.write_text("""name: groups
stages:
  - id: hh_groups
    op: sql
    inputs: [hh_pairs]
    params:
      query: |
        SELECT id AS prompt_id, prompt, chosen[1].content AS response, 1.0 AS score, 0 AS sample_index
        FROM hh_pairs
        UNION ALL
        SELECT id, prompt, rejected[1].content, 0.0, 1 FROM hh_pairs
""")
    assert xwin_data.build(groups, cat, show_progress=False).status == "ok"
    return cat


def test_wind_iterations_fit_their_samples_and_policy_reloads(wind_catalog, project_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "wind"
    rec = run_script("wind", [
        str(project_dir / "train/configs/wind.yaml"), f"catalog={wind_catalog}", "table=hh_groups",
        "model_name_or_path=tiny-policy", "reward_model=tiny-reward", f"output_dir={out}", "max_rows=4",
        "group_size=2", "steps_per_iteration=4", "max_steps=12", "per_device_train_batch_size=2",
        "max_completion_length=12", "learning_rate=3e-4", "eta=1.0", "beta=0.1", "logging_steps=4",
        "bon_eval_prompts_table=hh_prompts", "bon_eval_max_prompts=2", "bon_eval_max_new_tokens=6",
        "bon_eval_reward_model=tiny-reward"])
    its = rec["metrics"]["iterations"]
    assert [it["iteration"] for it in its] == [0, 1, 2]
    assert [it["from_table"] for it in its] == [True, False, False]  # stored groups first, then fresh samples
    for it in its:  # every iteration's regression loss goes down on its own (fixed) samples
        assert it["loss_after"] < it["loss_before"], it
    m = rec["metrics"]
    assert (m["fixed_batch_loss_before"], m["fixed_batch_loss_after"]) == (its[0]["loss_before"],
                                                                          its[0]["loss_after"])

    tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]

    con = xwin_data.connect(wind_catalog)
    assert con.sql("SELECT kind, table_name FROM runs").fetchall() == [("wind", "hh_groups")]
    assert con.sql("SELECT stage, n_prompts FROM evals").fetchall() == [("wind", 2)]
