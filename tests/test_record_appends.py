"""`runs`, `evals` and `eval_results` grow by appending a Parquet part per row: earlier rows are never rewritten,
and every version of the table history stays readable."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import xwin_data
from xwin_data.core.catalog import Catalog
from xwin_data.evals.results import record_results
from xwin_data.training.records import EVALS_SCHEMA, EvalRecord, append_record, record_eval


def versions(cat: Catalog, name: str) -> list[tuple[int, str, int]]:
    with cat.meta() as con:
        return con.execute("SELECT version, path, rows FROM table_versions WHERE name = ? ORDER BY version",
                           [name]).fetchall()


def test_each_append_is_one_new_part(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "cat")
    n = 25
    for i in range(n):
        record_eval(cat, EvalRecord(stage=f"s{i}", model_path=f"/models/{i}", reward_model="rm", prompts_table="p",
                                    prompts_fingerprint="f", n_prompts=i, samples_per_prompt=1,
                                    best_of={1: i / 10}, mean_tokens=1.0, seconds=0.0))
    history = versions(cat, "evals")
    assert [v[2] for v in history] == list(range(1, n + 1))
    first_part = cat.root / history[0][1] / "data" / "part-00000.parquet"
    for version, path, rows in history:
        parts = sorted((cat.root / path / "data").glob("*.parquet"))
        assert len(parts) == rows  # one part per appended row
        # The first row's file is the same file in every version: linked, never rewritten.
        assert parts[0].stat().st_ino == first_part.stat().st_ino
        assert pq.read_table(parts[-1]).num_rows == 1
        assert pq.read_table(parts[-1]).column("stage").to_pylist() == [f"s{version - 1}"]
    con = xwin_data.connect(cat.root)
    assert con.execute("SELECT count(*), sum(n_prompts) FROM evals").fetchone() == (n, sum(range(n)))
    # An older version is still whole.
    old = cat.root / history[9][1] / "data" / "*.parquet"
    assert con.execute(f"SELECT count(*) FROM read_parquet('{old}')").fetchone()[0] == 10


def test_eval_results_append_and_schema_change(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "cat")
    record_results(cat, [{"eval_id": f"e{i}", "eval": "alpaca", "model": f"m{i}", "win_rate": 50.0 + i}
                         for i in range(3)])
    assert [v[2] for v in versions(cat, "eval_results")] == [1, 2, 3]
    assert xwin_data.connect(cat.root).execute("SELECT count(*) FROM eval_results").fetchone()[0] == 3

    # Records written under an older, narrower schema are rewritten once into the current one, then appended to.
    narrow = pa.schema([f for f in EVALS_SCHEMA if f.name in ("eval_id", "stage", "n_prompts")])
    append_record(cat, "legacy", {"eval_id": "old", "stage": "a", "n_prompts": 3}, narrow)
    append_record(cat, "legacy", {"eval_id": "new", "stage": "b", "n_prompts": 4, "best_of_1": 0.5}, EVALS_SCHEMA)
    append_record(cat, "legacy", {"eval_id": "newer", "stage": "c"}, EVALS_SCHEMA)
    history = versions(cat, "legacy")
    assert [v[2] for v in history] == [1, 2, 3]
    assert len(list((cat.root / history[1][1] / "data").glob("*.parquet"))) == 1  # the one rewrite
    assert len(list((cat.root / history[2][1] / "data").glob("*.parquet"))) == 2  # then appends again
    rows = xwin_data.connect(cat.root).execute(
        "SELECT eval_id, n_prompts, best_of_1 FROM legacy ORDER BY eval_id").fetchall()
    assert rows == [("new", 4, 0.5), ("newer", None, None), ("old", 3, None)]
