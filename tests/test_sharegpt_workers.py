"""The conversation stages give the same tables and drops when their batches run in forked worker processes as when
they run in this process: the reader parsing JSONL blocks in workers (ids repeated across blocks, bad lines, ids
taken from the position), cleaning and stats writing their batches' Parquet files in workers."""
from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb
import pytest

import xwin_data
from xwin_data.core import workers
from xwin_data.ops.readers import sharegpt as sharegpt_read

RECIPE = """\
name: workers
vars: {input: x}
stages:
  - {id: raw, op: read_conversations, schema: conversations, params: {path: "${input}", file_type: jsonl}}
  - {id: clean, op: clean_conversations, inputs: [raw], params: {batch_size: 7}}
  - {id: stats, op: conversation_stats, inputs: [clean], params: {batch_size: 7}}
  - {id: exact, op: dedup_exact, inputs: [stats]}
  - {id: near, op: dedup_near, inputs: [exact], params: {enabled: false}}
"""


def _write_input(path: Path, n: int = 120) -> None:
    rng = random.Random(3)
    lines = []
    for i in range(n):
        answer = rng.choice(["Sure, here it is.", "<div><p>HTML answer</p><p>two</p></div>", "Itâ€™s fine",
                             "spaces   \r\n\r\n\r\n and more  ", "Das ist eine deutsche Antwort auf die Frage.",
                             "这是一个中文的回答，内容很短。"])
        rec = {"conversations": [{"from": "human", "value": f"Question {i % 50}: what is {rng.random():.3f}?"},
                                 {"from": "gpt", "value": answer}]}
        if i % 9:
            rec["id"] = f"r{i % 40}"  # repeats, some of them in other blocks
        lines.append(json.dumps(rec, ensure_ascii=False))
        if i % 17 == 0:
            lines.append('{"broken": ')
        if i % 23 == 0:
            lines.append(json.dumps({"conversations": [{"from": "gpt", "value": "no question"}]}))
        if i % 29 == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _tables(catalog: Path) -> dict[str, tuple[list, list]]:
    con = xwin_data.connect(catalog)
    out = {}
    for name in ("raw", "clean", "stats", "exact", "near"):
        rows = con.execute(f"SELECT * FROM {name}").fetchall()
        drops = con.execute(f"SELECT source_id, reason, detail FROM drops WHERE table_name = '{name}' "
                            "ORDER BY ALL").fetchall()
        out[name] = (rows, drops)
    return out


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of ~600 bytes, so a small file spans many blocks and goes to the workers."""
    monkeypatch.setattr(sharegpt_read, "BLOCK_BYTES", 600)


def test_workers_give_the_same_tables_and_drops(tmp_path, small_blocks, monkeypatch) -> None:
    if workers.available_workers() < 2:
        pytest.skip("needs fork and two cores")
    data = tmp_path / "in.jsonl"
    _write_input(data)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    xwin_data.build(recipe, tmp_path / "forked", [f"input={data}"], show_progress=False)
    forked = _tables(tmp_path / "forked")

    monkeypatch.setattr(workers, "available_workers", lambda: 0)
    xwin_data.build(recipe, tmp_path / "here", [f"input={data}"], show_progress=False)
    here = _tables(tmp_path / "here")

    assert forked == here
    raw_rows, raw_drops = here["raw"]
    ids = [r[0] for r in raw_rows]
    assert len(set(ids)) == len(ids) and any("~" in i for i in ids)  # repeats renamed by position
    assert {d[1] for d in raw_drops} >= {"broken_json", "first_turn_not_user"}
    con = xwin_data.connect(tmp_path / "forked")
    stats = con.execute("SELECT stats FROM table_versions WHERE name = 'raw' AND is_current").fetchone()[0]
    assert '"renamed_duplicate_ids"' in str(stats)
    # the switched-off near-dedup stage reuses its input's validation and says so; so does exact dedup, which found
    # no duplicate here and publishes its input's files
    for stage in ("near", "exact"):
        checks = con.execute(f"SELECT results FROM validations WHERE table_name = '{stage}'").fetchone()[0]
        assert "same_files_as_validated_input" in str(checks), stage
    assert not here["exact"][1]


def test_cleaning_with_stats_in_one_pass_gives_the_stats_stage_table(tmp_path, small_blocks) -> None:
    data = tmp_path / "in.jsonl"
    _write_input(data)
    (tmp_path / "two.yaml").write_text(RECIPE)
    one_pass = RECIPE.replace("params: {batch_size: 7}}\n  - {id: stats, op: conversation_stats, inputs: [clean], "
                              "params: {batch_size: 7}}", "params: {batch_size: 7, stats: {}}}")
    (tmp_path / "one.yaml").write_text(one_pass.replace("inputs: [stats]", "inputs: [clean]"))
    assert "conversation_stats" not in (tmp_path / "one.yaml").read_text()
    xwin_data.build(tmp_path / "two.yaml", tmp_path / "two", [f"input={data}"], show_progress=False)
    xwin_data.build(tmp_path / "one.yaml", tmp_path / "one", [f"input={data}"], show_progress=False)
    two, one = xwin_data.connect(tmp_path / "two"), xwin_data.connect(tmp_path / "one")
    assert one.execute("SELECT * FROM clean").fetchall() == two.execute("SELECT * FROM stats").fetchall()
    columns = one.execute("DESCRIBE clean").fetchall()
    assert columns == two.execute("DESCRIBE stats").fetchall() and "n_tokens" in {c[0] for c in columns}
    drops = "SELECT stage, source_id, reason, detail FROM drops ORDER BY ALL"
    assert one.execute(drops).fetchall() == two.execute(drops).fetchall()


def test_worker_parts_keep_the_input_order(tmp_path, small_blocks) -> None:
    if workers.available_workers() < 2:
        pytest.skip("needs fork and two cores")
    data = tmp_path / "in.jsonl"
    _write_input(data, n=300)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    xwin_data.build(recipe, tmp_path / "cat", [f"input={data}"], show_progress=False)
    con = duckdb.connect()
    lines = [json.loads(line) for line in data.read_text().splitlines() if line.strip().startswith('{"conv')]
    first_questions = [r["conversations"][0]["value"] for r in lines if r["conversations"][0]["from"] == "human"]
    cat = xwin_data.connect(tmp_path / "cat")
    got = [r[0] for r in cat.execute("SELECT messages[1].content FROM raw").fetchall()]
    assert got == first_questions
    for name in ("clean", "stats"):
        assert [r[0] for r in cat.execute(f"SELECT id FROM {name}").fetchall()] == \
               [r[0] for r in cat.execute("SELECT id FROM raw").fetchall()]
    con.close()
