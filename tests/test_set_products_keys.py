"""The derived-table ops name a picked response by (prompt_id, sample_index, score): two responses of one prompt
that share both cannot be told apart (nor ranked), so a build that picks one fails with a clear error, while a
missing sample_index still ranks last among equal scores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import xwin_data
from scored_sets import SET_FROM_JSONL_STAGE

RECIPE = "name: keys\nstages:\n" + SET_FROM_JSONL_STAGE + """\
  - id: dpo_pairs
    op: dpo_pairs
    inputs: [xwin_set]
    params: {strategies: [worst, rank_k], k: 2}
"""


def build(root: Path, rows: list[tuple[int | None, float]]) -> Path:
    lines = [{"prompt_id": "p", "prompt": [{"role": "user", "content": "q"}], "response_id": f"r{j}",
              "sample_index": si, "response": f"answer {j}", "score": score} for j, (si, score) in enumerate(rows)]
    (root / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (root / "r.yaml").write_text(RECIPE)
    xwin_data.build(root / "r.yaml", root / "cat", show_progress=False)
    return root / "cat"


def test_responses_sharing_sample_index_and_score_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="several responses with sample_index 1 and score 0.5"):
        build(tmp_path, [(0, 2.0), (1, 0.5), (1, 0.5)])


def test_a_missing_sample_index_ranks_last_among_equal_scores(tmp_path: Path) -> None:
    catalog = build(tmp_path, [(None, 0.5), (0, 2.0), (1, 0.5)])
    con = xwin_data.connect(catalog)
    try:
        worst = con.sql("SELECT rejected_id, rejected_rank FROM dpo_pairs_worst").fetchall()
        runner_up = con.sql("SELECT rejected_id, rejected_rank FROM dpo_pairs_rank_k").fetchall()
    finally:
        con.close()
    assert worst == [("r0", 3)] and runner_up == [("r2", 2)]
