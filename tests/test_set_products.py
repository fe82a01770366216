"""Derived tables of a scored set (RS, DPO strategies, WIND win rates, exact best-of-n curves) built through a
recipe on planted scores, each checked against a brute-force Python computation, and loaded as TRL expects."""
from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import pytest

import xwin_data
from scored_sets import SET_FROM_JSONL_STAGE
from xwin_data.core.catalog import Catalog

# Planted scores: ties at the top and bottom, an all-tied group, a singleton, a missing score, a short group.
PLANTED = {
    "p_ties": [1.0, 3.0, 3.0, 0.5, 2.0, 0.5, 2.0, -1.0],
    "p_plain": [0.11, -0.42, 1.93, 0.87, -1.25, 0.36, 1.02],
    "p_flat": [2.0, 2.0, 2.0],
    "p_single": [1.5],
    "p_missing": [0.3, None, 0.9, 0.1, 0.9],
    "p_short": [0.2, 0.8],
}
# Many identical groups for the seeded random pick: best first, four lower candidates (ranks 2..5).
UNIFORM = [5.0, 1.0, 2.0, 3.0, 4.0]
N_UNIFORM = 400

RECIPE = "name: planted_set\nstages:\n" + SET_FROM_JSONL_STAGE + """\
  - id: rs_best_of
    op: rs_best_of_n
    inputs: [xwin_set]
    params: {ns: [1, 2, 4, 8]}
  - id: dpo_pairs
    op: dpo_pairs
    inputs: [xwin_set]
    params: {k: 3, seed: 7, margin: 1.5}
  - id: capped
    op: dpo_pairs
    inputs: [xwin_set]
    params: {strategies: [margin], margin: 0.5, max_pairs_per_prompt: 3}
  - id: wind_groups
    op: wind_groups
    inputs: [xwin_set]
  - id: bon_curve
    op: bon_curve
    inputs: [xwin_set]
    params: {max_m: 8}
"""


def planted_rows() -> list[dict]:
    groups = dict(PLANTED)
    groups.update({f"u{i:03d}": UNIFORM for i in range(N_UNIFORM)})
    rows = []
    for pid, scores in groups.items():
        for j, s in enumerate(scores):
            rows.append({"prompt_id": pid, "prompt": [{"role": "user", "content": f"question {pid}"}],
                         "response_id": f"{pid}-{j}", "sample_index": j, "response": f"answer {j} to {pid}",
                         "score": s})
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("planted")
    rows = planted_rows()
    (root / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "r.yaml").write_text(RECIPE)
    xwin_data.build(root / "r.yaml", root / "cat", show_progress=False)
    return root / "cat", rows


def query(catalog: Path, sql: str) -> list[dict]:
    con = xwin_data.connect(catalog)
    try:
        return con.sql(sql).to_arrow_table().to_pylist()
    finally:
        con.close()


def groups_of(rows: list[dict]) -> dict[str, list[dict]]:
    """Scored rows per prompt, in rank order (score descending, earlier sample first)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        if r["score"] is not None:
            out.setdefault(r["prompt_id"], []).append(r)
    return {p: sorted(g, key=lambda r: (-r["score"], r["sample_index"])) for p, g in out.items()}


# ------------------------------------------------------------------------------------------------ RS
def test_rs_best_of_n_is_the_best_of_the_first_n(built) -> None:
    catalog, rows = built
    groups = groups_of(rows)
    for n in (1, 2, 4, 8):
        got = {r["prompt_id"]: r for r in query(catalog, f"SELECT * FROM rs_best_of_{n}")}
        assert set(got) == set(groups)
        for pid, g in groups.items():
            first = [r for r in g if r["sample_index"] < n]
            best = min(first, key=lambda r: (-r["score"], r["sample_index"]))
            row = got[pid]
            assert (row["response_id"], row["score"], row["n_available"]) == (best["response_id"], best["score"],
                                                                              len(first))
            assert row["messages"] == best["prompt"] + [{"role": "assistant", "content": best["response"]}]
    # p_ties: samples 1 and 2 tie at 3.0 -> the earlier one wins.
    assert query(catalog, "SELECT response_id FROM rs_best_of_8 WHERE prompt_id = 'p_ties'")[0]["response_id"] == "p_ties-1"
    # The unscored response is lost by every output table: filed under each, counted in responses.
    drops = query(catalog, "SELECT table_name, source_id, reason, unit FROM drops WHERE stage = 'rs_best_of' "
                           "ORDER BY table_name")
    assert drops == [{"table_name": f"rs_best_of_{n}", "source_id": "p_missing-1", "reason": "missing_score",
                      "unit": "responses"} for n in (1, 2, 4, 8)]


# ------------------------------------------------------------------------------------------------ DPO
def expected_pairs(rows: list[dict], strategy: str, k: int = 3, margin: float = 1.5) -> dict[str, set]:
    """Brute force: prompt_id -> {(chosen_id, rejected_id)} for each strategy except random_lower."""
    out: dict[str, set] = {}
    for pid, g in groups_of(rows).items():
        best = g[0]
        lower = [r for r in g if r["score"] < best["score"]]
        if strategy == "margin":
            pairs = {(a["response_id"], b["response_id"]) for a in g for b in g if a["score"] - b["score"] >= margin}
        elif not lower:
            pairs = set()
        elif strategy == "worst":
            pairs = {(best["response_id"], g[-1]["response_id"])}
        elif strategy == "rank_k":
            pairs = {(best["response_id"], g[k - 1]["response_id"])} if len(g) >= k and g[k - 1] in lower else set()
        elif strategy == "mean_minus_2sd":
            scores = [r["score"] for r in g]
            mu = sum(scores) / len(scores)
            sd = math.sqrt(sum((s - mu) ** 2 for s in scores) / len(scores))
            target = mu - 2 * sd
            pick = min(lower, key=lambda r: (abs(r["score"] - target), r["score"], g.index(r)))
            pairs = {(best["response_id"], pick["response_id"])}
        if pairs:
            out[pid] = pairs
    return out


@pytest.mark.parametrize("strategy", ["worst", "rank_k", "mean_minus_2sd", "margin"])
def test_dpo_strategy_matches_brute_force(built, strategy: str) -> None:
    catalog, rows = built
    got: dict[str, set] = {}
    for r in query(catalog, f"SELECT * FROM dpo_pairs_{strategy}"):
        got.setdefault(r["prompt_id"], set()).add((r["chosen_id"], r["rejected_id"]))
        assert r["chosen_score"] > r["rejected_score"] and r["strategy"] == strategy
        assert r["prompt"][-1]["role"] == "user"
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
    assert got == expected_pairs(rows, strategy)
    # Prompts without a pair are recorded, never silently missing.
    dropped = {r["source_id"] for r in query(catalog, f"SELECT source_id FROM drops WHERE reason = 'no_pair_{strategy}'")}
    assert dropped == set(groups_of(rows)) - set(got)
    assert {"p_flat", "p_single"} <= dropped


def test_dpo_worst_breaks_ties_towards_the_later_sample_and_rank_k_skips_ties_with_best(built) -> None:
    catalog, _ = built
    worst = query(catalog, "SELECT chosen_id, rejected_id FROM dpo_pairs_worst WHERE prompt_id = 'p_missing'")
    assert worst == [{"chosen_id": "p_missing-2", "rejected_id": "p_missing-3"}]
    # p_ties: ranks are 3.0 (s1), 3.0 (s2), 2.0 (s4), ... -> rank 3 is the 2.0 of sample 4.
    rank3 = query(catalog, "SELECT chosen_id, rejected_id, rejected_rank FROM dpo_pairs_rank_k WHERE prompt_id = 'p_ties'")
    assert rank3 == [{"chosen_id": "p_ties-1", "rejected_id": "p_ties-4", "rejected_rank": 3}]


def test_dpo_random_lower_is_seeded_and_uniform_over_lower_responses(built, tmp_path: Path) -> None:
    catalog, rows = built
    got = query(catalog, "SELECT prompt_id, rejected_rank, chosen_score, rejected_score FROM dpo_pairs_random_lower")
    assert all(r["rejected_score"] < r["chosen_score"] for r in got)
    ranks = Counter(r["rejected_rank"] for r in got if r["prompt_id"].startswith("u"))
    assert set(ranks) == {2, 3, 4, 5}
    # 400 draws over 4 ranks: each count is 100 +- 8.7 sd; 60..140 is a > 4.5 sd band.
    assert all(60 <= c <= 140 for c in ranks.values()), ranks
    # A different seed picks differently; the same seed again picks the same.
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(RECIPE.split("  - id: rs_best_of")[0] + "  - id: dpo_pairs\n    op: dpo_pairs\n"
                                     "    inputs: [xwin_set]\n    params: {strategies: [random_lower], seed: 7}\n")
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", show_progress=False)
    same = query(tmp_path / "cat", "SELECT prompt_id, rejected_rank FROM dpo_pairs_random_lower ORDER BY 1")
    assert same == sorted(({"prompt_id": r["prompt_id"], "rejected_rank": r["rejected_rank"]} for r in got),
                          key=lambda r: r["prompt_id"])
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", sets=["dpo_pairs.params.seed=8"], show_progress=False)
    other = query(tmp_path / "cat", "SELECT prompt_id, rejected_rank FROM dpo_pairs_random_lower ORDER BY 1")
    changed = sum(a != b for a, b in zip(same, other))
    assert changed > N_UNIFORM // 2


def test_dpo_margin_cap_keeps_the_widest_pairs(built) -> None:
    catalog, rows = built
    got: dict[str, list] = {}
    for r in query(catalog, "SELECT * FROM capped_margin"):
        got.setdefault(r["prompt_id"], []).append((r["chosen_id"], r["rejected_id"]))
    for pid, g in groups_of(rows).items():
        rank = {r["response_id"]: i for i, r in enumerate(g)}
        pairs = [(a, b) for a in g for b in g if a["score"] - b["score"] >= 0.5]
        pairs.sort(key=lambda p: (-(p[0]["score"] - p[1]["score"]), rank[p[0]["response_id"]],
                                  -rank[p[1]["response_id"]]))
        want = {(a["response_id"], b["response_id"]) for a, b in pairs[:3]}
        assert set(got.get(pid, [])) == want, pid


# ------------------------------------------------------------------------------------------------ WIND
def test_wind_groups_leave_one_out_win_rates(built) -> None:
    catalog, rows = built
    got = {r["response_id"]: r for r in query(catalog, "SELECT * FROM wind_groups")}
    for pid, g in groups_of(rows).items():
        if len(g) < 2:
            assert not any(r["response_id"] in got for r in g)
            continue
        for r in g:
            others = [o["score"] for o in g if o is not r]
            want = sum(1.0 if r["score"] > s else 0.5 if r["score"] == s else 0.0 for s in others) / len(others)
            row = got[r["response_id"]]
            assert row["win_rate"] == pytest.approx(want, abs=1e-12)
            assert row["group_size"] == len(g)
            assert row["completion"] == [{"role": "assistant", "content": r["response"]}]
    assert all(got[f"p_flat-{j}"]["win_rate"] == 0.5 for j in range(3))
    reasons = query(catalog, "SELECT source_id, reason FROM drops WHERE stage = 'wind_groups' ORDER BY 2")
    assert reasons == [{"source_id": "p_single", "reason": "group_too_small"},
                       {"source_id": "p_missing-1", "reason": "missing_score"}]


# ------------------------------------------------------------------------------------------------ best-of-n
def brute_force_curve(scores: list[float], n: int) -> tuple[float, float]:
    """Mean best score over every n-subset, and P(best-of-n beats an independent single draw), ties half."""
    subsets = list(itertools.combinations(range(len(scores)), n))
    best = [max(scores[i] for i in s) for s in subsets]
    win = [sum(1.0 if b > x else 0.5 if b == x else 0.0 for x in scores) / len(scores) for b in best]
    return sum(best) / len(best), sum(win) / len(win)


def test_bon_curve_matches_enumeration(built) -> None:
    catalog, rows = built
    per_prompt = {(r["prompt_id"], r["n"]): r for r in query(catalog, "SELECT * FROM bon_curve_per_prompt")}
    groups = {p: [r["score"] for r in g] for p, g in groups_of(rows).items()}
    assert len(per_prompt) == sum(len(s) for s in groups.values())
    for pid, scores in groups.items():
        for n in range(1, len(scores) + 1):
            mean_best, win = brute_force_curve(scores, n)
            row = per_prompt[(pid, n)]
            assert row["expected_best_score"] == pytest.approx(mean_best, abs=1e-12), (pid, n)
            assert row["win_rate_vs_best_of_1"] == pytest.approx(win, abs=1e-12), (pid, n)
    overall = {r["n"]: r for r in query(catalog, "SELECT * FROM bon_curve ORDER BY n")}
    assert sorted(overall) == list(range(1, 9))
    for n, row in overall.items():
        members = [brute_force_curve(s, n) for s in groups.values() if len(s) >= n]
        assert row["n_prompts"] == len(members)
        assert row["mean_best_score"] == pytest.approx(sum(m[0] for m in members) / len(members), abs=1e-12)
        assert row["win_rate_vs_best_of_1"] == pytest.approx(sum(m[1] for m in members) / len(members), abs=1e-12)
    assert overall[1]["win_rate_vs_best_of_1"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ TRL formats
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from xwin_data.llm.tiny import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny-tokenizer"))


def test_tables_load_in_trl_formats(built, tokenizer) -> None:
    from datasets import Dataset
    from trl.data_utils import is_conversational, maybe_apply_chat_template
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    catalog, _ = built
    sft = Dataset.from_list(query(catalog, "SELECT messages FROM rs_best_of_4 ORDER BY id"))
    assert is_conversational(sft[0])
    text = maybe_apply_chat_template(sft[0], tokenizer)["text"]
    assert text.startswith("<|user|>\nquestion ") and text.rstrip().endswith("<|end|>")
    masks = tokenizer.apply_chat_template(sft[0]["messages"], return_assistant_tokens_mask=True, return_dict=True)
    assert 0 < sum(masks["assistant_masks"]) < len(masks["input_ids"])  # assistant-only loss has tokens to learn

    dpo = Dataset.from_list(query(catalog, "SELECT prompt, chosen, rejected FROM dpo_pairs_worst ORDER BY id"))
    ex = dpo[0]
    assert is_conversational(ex)
    rendered = maybe_apply_chat_template(ex, tokenizer)
    assert rendered["prompt"].endswith("<|assistant|>\n") and rendered["chosen"] != rendered["rejected"]
    # Tokenised as DPOTrainer does, the prompt is a prefix of prompt + chosen, and the collator batches it.
    features = []
    for row in (dpo[0], dpo[1]):
        p = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
        c = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], return_dict=True)["input_ids"]
        r = tokenizer.apply_chat_template(row["prompt"] + row["rejected"], return_dict=True)["input_ids"]
        assert c[:len(p)] == p and r[:len(p)] == p
        features.append({"prompt_ids": p, "chosen_ids": c[len(p):], "rejected_ids": r[len(p):]})
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(features)
    assert batch["input_ids"].shape[0] == 4  # chosen and rejected of two examples

    wind = Dataset.from_list(query(catalog, "SELECT prompt, completion, win_rate FROM wind_groups ORDER BY id"))
    assert is_conversational(wind[0])
    pc = maybe_apply_chat_template(wind[0], tokenizer)
    assert pc["prompt"].endswith("<|assistant|>\n") and pc["completion"].endswith("<|end|>\n")


def test_set_ops_fail_clearly_on_a_table_that_is_not_a_scored_set(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("name: bad\nstages:\n  - id: t\n    op: sql\n    params:\n"
                                     "      query: \"SELECT 'a' AS prompt_id, 1.0 AS score\"\n"
                                     "  - id: w\n    op: wind_groups\n    inputs: [t]\n")
    with pytest.raises(ValueError, match="missing column.*prompt.*response_id"):
        xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", show_progress=False)
    assert Catalog(tmp_path / "cat").current("w") is None
