"""A DPO pair strategy is one registered class: a toy one defined here is used by name from a recipe, and an
unknown name fails at plan time with the known names."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import xwin_data
from xwin_data.ops.sets.pair_strategies import PAIR_STRATEGIES, PairStrategy, pair_strategy
from xwin_data.core.yaml_lines import RecipeError
from scored_sets import SET_FROM_JSONL_STAGE


@pair_strategy
class MedianLower(PairStrategy):
    """The lower response at the middle of the ranks below the best (a toy strategy, registered by this test)."""

    name = "toy_median_lower"
    summary = "the response halfway down the ranks below the best"

    def rejected_rank(self, params) -> str:
        return "CASE WHEN m > n_best THEN n_best + ((m - n_best + 1) // 2) END"


RECIPE = "name: toy_strategy\nstages:\n" + SET_FROM_JSONL_STAGE + """\
  - id: pairs
    op: dpo_pairs
    inputs: [xwin_set]
    params: {strategies: [toy_median_lower, worst]}
"""
SCORES = {"a": [3.0, 9.0, 1.0, 5.0, 7.0], "b": [2.0, 2.0, 2.0], "c": [4.0, 8.0]}


def write_set(root: Path) -> None:
    rows = [{"prompt_id": pid, "prompt": [{"role": "user", "content": f"q {pid}"}], "response_id": f"{pid}-{j}",
             "sample_index": j, "response": f"answer {j}", "score": s}
            for pid, scores in SCORES.items() for j, s in enumerate(scores)]
    (root / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_registered_strategy_writes_its_table_and_drops(tmp_path: Path) -> None:
    assert "toy_median_lower" in PAIR_STRATEGIES
    write_set(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE)
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", show_progress=False)
    con = xwin_data.connect(tmp_path / "cat")
    got = con.execute("SELECT prompt_id, chosen_id, rejected_id, rejected_rank FROM pairs_toy_median_lower "
                      "ORDER BY prompt_id").fetchall()
    # a: ranks 9,7,5,3,1 -> four below the best, halfway = rank 1 + 2 = 3 (score 5); c: one below -> rank 2
    assert got == [("a", "a-1", "a-3", 3), ("c", "c-1", "c-0", 2)]
    assert con.execute("SELECT count(*) FROM pairs_worst").fetchone()[0] == 2
    drops = con.execute("SELECT source_id, reason, detail FROM drops ORDER BY reason").fetchall()
    assert drops == [("b", "no_pair_toy_median_lower", "all 3 responses tie the best score"),
                     ("b", "no_pair_worst", "all 3 responses tie the best score")]


def test_an_unknown_strategy_fails_before_any_work_naming_the_known_ones(tmp_path: Path) -> None:
    write_set(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE.replace("toy_median_lower, worst", "best_of_three"))
    with pytest.raises(RecipeError, match="unknown pair strategy 'best_of_three'.*worst, random_lower, rank_k"):
        xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", show_progress=False)
    assert not (tmp_path / "cat" / "tables").exists() or not any((tmp_path / "cat" / "tables").iterdir())
