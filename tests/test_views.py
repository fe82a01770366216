"""Canned views in every connect(), the interactive shell, and the README's example queries, on a real catalog."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xwin_data
from xwin_data.core.catalog import Catalog
from xwin_data.ops.base import register
from xwin_data.ops.readers.sql import SqlOp

PROJECT = Path(__file__).resolve().parents[1]


@register
class CostlySqlOp(SqlOp):
    """A SQL stage that records model-call cost fields in its stats, the way judge and generation ops do."""

    name = "test_views_costly_sql"

    def run(self, ctx, params) -> None:
        ctx.write_sql(params.query)
        ctx.stats.update({"calls": 12, "prompt_tokens": 3000, "completion_tokens": 500,
                          "cost": {"usd": 0.75, "cached_calls": 4}})


MSG = "STRUCT(role VARCHAR, content VARCHAR)[]"
RECIPE = f"""\
name: views_smoke
stages:
  - id: raw
    op: sql
    params:
      query: "SELECT id, messages::{MSG} AS messages FROM read_json('${{recipe_dir}}/conv.jsonl')"
  - id: sft_sharegpt
    op: filter
    inputs: [raw]
    params:
      where:
        too_few_turns: "len(messages) >= 2"
        empty_reply: "length(trim(messages[-1].content)) > 0"
  - id: xwin_pair
    op: test_views_costly_sql
    inputs: [sft_sharegpt]
    params:
      query: "SELECT 'p' || i AS prompt_id, [{{'role': 'user', 'content': 'q' || i}}]::{MSG} AS prompt,
              repeat('long ', 1 + i % 3) AS chosen, 'short' AS rejected, (i % 3)::DOUBLE AS strength,
              i % 4 <> 0 AS consistent, 'judge-x' AS judge, 'pair-v1' AS template_version
              FROM range(8) t(i)"
  - id: xwin_set
    op: sql
    params:
      query: "SELECT 'q' || (i // 4) AS prompt_id, [{{'role': 'user', 'content': 'q'}}]::{MSG} AS prompt,
              'r' || i AS response_id, 'resp ' || i AS response, ((i % 4) * (1 + i // 4))::DOUBLE AS score,
              4 - (i % 4) AS rank FROM range(12) t(i)"
"""

CONV = [
    {"id": f"c{i}", "messages": [{"role": "user", "content": f"question {i}"},
                                {"role": "assistant", "content": "answer " * (i + 1)}] * (1 + i % 2)}
    for i in range(6)
] + [
    {"id": "short", "messages": [{"role": "user", "content": "alone"}]},
    {"id": "blank", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
    {"id": "blank2", "messages": [{"role": "user", "content": "yo"}, {"role": "assistant", "content": ""}]},
]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    d = tmp_path_factory.mktemp("views")
    (d / "conv.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CONV))
    (d / "r.yaml").write_text(RECIPE)
    xwin_data.build(d / "r.yaml", d / "catalog", show_progress=False)
    return Catalog(d / "catalog")


def test_canned_views_numbers(catalog: Catalog) -> None:
    con = xwin_data.connect(catalog)
    funnel = {r[0]: r[1:] for r in con.execute(
        "SELECT table_name, rows_in, rows_out, dropped FROM funnel").fetchall()}
    assert funnel["raw"] == (9, 9, 0)  # a source stage reads 9 records, keeps 9
    assert funnel["sft_sharegpt"] == (9, 6, 3)
    drops = {r[0]: r[1] for r in con.execute("SELECT reason, dropped FROM drops_by_reason").fetchall()}
    assert drops == {"too_few_turns": 1, "empty_reply": 2}

    cost = con.execute("SELECT calls, prompt_tokens, completion_tokens, cost_usd FROM cost_by_stage "
                       "WHERE stage = 'xwin_pair'").fetchone()
    assert cost == (12, 3000, 500, 0.75)
    assert con.execute("SELECT sum(cost_usd) FROM cost_by_stage WHERE stage <> 'xwin_pair'").fetchone()[0] == 0

    pair = con.execute("SELECT pairs, consistent_share, mean_strength, chosen_longer_share FROM pair_stats").fetchone()
    # strengths i % 3 over i=0..7: 0,1,2,0,1,2,0,1 -> 7/8; consistent unless i % 4 == 0 -> 6/8;
    # chosen 'long ' * (1 + i % 3) is longer than 'short' unless i % 3 == 0 (same length) -> 5/8
    assert pair == (8, 0.75, 0.875, 0.625)

    spread = {r[0]: r[1:] for r in con.execute("SELECT prompt_id, responses, spread FROM set_spread").fetchall()}
    assert spread == {"q0": (4, 3.0), "q1": (4, 6.0), "q2": (4, 9.0)}
    con.close()


def test_views_on_missing_tables_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "conv.jsonl").write_text(json.dumps(CONV[0]) + "\n")
    (tmp_path / "r.yaml").write_text("name: only\nstages:\n  - id: raw\n    op: sql\n    params:\n      query: "
                                     "\"SELECT * FROM read_json('${recipe_dir}/conv.jsonl')\"\n")
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", show_progress=False)
    con = xwin_data.connect(tmp_path / "cat")
    views = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"funnel", "drops_by_reason", "cost_by_stage", "stage_stats"} <= views
    assert not {"pair_stats", "set_spread"} & views


def readme_queries() -> list[str]:
    text = (PROJECT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Exploring with SQL", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    return [q.strip() for b in blocks for q in b.split(";") if q.strip() and not q.strip().startswith("--")]


def test_readme_example_queries_run(catalog: Catalog) -> None:
    queries = readme_queries()
    assert len(queries) >= 10
    con = xwin_data.connect(catalog)
    for q in queries:
        rows = con.execute(q).fetchall()
        assert rows, f"README query returned no rows on the smoke catalog:\n{q}"
    con.close()


def test_shell_dot_commands_formats_and_history(catalog: Catalog) -> None:
    script = "\n".join([
        ".tables", ".views", ".format json",
        "SELECT table_name, rows_out FROM funnel", "WHERE table_name = 'sft_sharegpt';",
        ".format csv", "SELECT reason, dropped FROM drops_by_reason ORDER BY reason;",
        ".format nope", "SELECT nonsense FROM nowhere;", ".quit",
    ]) + "\n"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "xwin_data.cli", "sql", "--catalog", str(catalog.root)],
                          input=script, capture_output=True, text=True, env=env, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "xwin_set" in out and "cost_by_stage" in out and "canned" in out
    assert '"rows_out": 6' in out  # JSON result of the multi-line statement
    assert "empty_reply,2" in out and "too_few_turns,1" in out  # CSV
    assert ".format takes one of" in out and "nowhere" in out  # errors are printed, the shell goes on
    history = (catalog.root / ".sql_history").read_text()
    assert "SELECT table_name, rows_out FROM funnel WHERE table_name = 'sft_sharegpt';" in history
