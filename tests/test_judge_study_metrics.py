"""Judge-study accuracies as papers report them (per order, averaged over the orders, strict both-orders), the
invalid-as-wrong switch, and typed loading of JSON-typed response columns."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_here

import xwin_data
from xwin_data.core.catalog import Catalog
from xwin_data.studies.judge import load_pairs, run_judge_study

# (verdict in AB order, verdict in BA order, label); verdicts in presentation terms (A = shown first).
PLANTED = [
    ("A", "B", "a"),        # right in both orders
    ("A", "B", "a"),
    ("B", "A", "b"),        # right in both orders
    ("A", "A", "a"),        # right in AB only (position bias)
    ("A", "A", "b"),        # right in BA only
    ("B", "B", "a"),        # right in BA only
    ("A", "garbage", "a"),  # right in AB, invalid in BA
    ("???", "A", "b"),      # invalid in AB, right in BA
]
# Responses as a JSON file holds them: some are JSON booleans or numbers, one has quotes and a newline.
RESPONSES_B = [True, 42, "say \"hi\"\nthen go", 3.5, False, "plain", 7, "x"]


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    rows = [{"pair_id": f"p{i}", "verdict_ab": ab, "verdict_ba": ba, "label": lab, "response_a": "a" * (i + 1),
             "response_b": RESPONSES_B[i]} for i, (ab, ba, lab) in enumerate(PLANTED)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text("name: planted\nstages:\n  - id: judged\n    op: sql\n    params:\n"
                                     "      query: \"SELECT * FROM read_json('${recipe_dir}/pairs.jsonl')\"\n")
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", show_progress=False)
    return Catalog(tmp_path / "cat")


def _metrics(folder: Path) -> dict:
    return {r["metric"]: r for r in pq.read_table(folder / "results.parquet").to_pylist()}


def test_typed_loading_measures_text_not_json(catalog: Catalog) -> None:
    con = xwin_data.connect(catalog.root)
    assert dict(con.execute("DESCRIBE judged").fetchall()[i][:2] for i in range(6))["response_b"] == "JSON"
    pairs = load_pairs(catalog, "judged")
    assert [p["len_b"] for p in pairs] == [len(json.dumps(v) if not isinstance(v, str) else v) if
                                           not isinstance(v, bool) else len(str(v).lower()) for v in RESPONSES_B]
    assert pairs[2]["len_b"] == len('say "hi"\nthen go')  # no JSON quotes or escapes counted
    assert pairs[1]["len_b"] == 2  # the number 42 is the text "42", not a length of 42


def test_order_averaged_and_strict_accuracies(catalog: Catalog, tmp_path: Path) -> None:
    out = tmp_path / "study"
    run_here("study", "judge", "judged", "--catalog", str(catalog.root), "--out", str(out), "--n-boot", "100")
    m = _metrics(out)
    # AB order: right on p0, p1, p2, p3, p6 of 7 valid; BA: right on p0, p1, p2, p4, p5, p7 of 7 valid.
    assert m["label_accuracy_ab"]["value"] == pytest.approx(5 / 7) and m["label_accuracy_ab"]["n"] == 7
    assert m["label_accuracy_ba"]["value"] == pytest.approx(6 / 7)
    assert m["label_accuracy_order_avg"]["value"] == pytest.approx((5 / 7 + 6 / 7) / 2)
    assert m["label_accuracy_both_orders"]["value"] == pytest.approx(3 / 6)  # p6, p7 left out (one invalid)

    out2 = tmp_path / "study_strict"
    run_judge_study(catalog, "judged", out2, n_boot=100, invalid_as_wrong=True)
    m2 = _metrics(out2)
    assert m2["label_accuracy_ab"]["value"] == pytest.approx(5 / 8)
    assert m2["label_accuracy_ba"]["value"] == pytest.approx(6 / 8)
    assert m2["label_accuracy_order_avg"]["value"] == pytest.approx((5 / 8 + 6 / 8) / 2)
    assert m2["label_accuracy_both_orders"]["value"] == pytest.approx(3 / 8)
    assert json.loads((out2 / "summary.json").read_text())["invalid_as_wrong"] is True
