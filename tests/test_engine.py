"""The engine, catalog and recipe loader through the CLI and library API on a tiny SQL recipe."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_here

import xwin_data
from xwin_data.core.catalog import Catalog
from xwin_data.core.recipe import load_recipe
from xwin_data.core.yaml_lines import RecipeError

RECIPE = """\
name: smoke
vars:
  input: conv.jsonl
  min_len: 3
stages:
  - id: raw
    op: sql
    params:
      query: "SELECT id, messages::STRUCT(role VARCHAR, content VARCHAR)[] AS messages FROM read_json('${input}')"
  - id: kept
    op: filter
    inputs: [raw]
    schema: conversations
    params:
      where:
        too_short: "len(messages) >= 2"
        short_content: "length(messages[1].content) >= ${min_len}"
"""

ROWS = [
    {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"id": "b", "messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hey you"}]},
    {"id": "c", "messages": [{"role": "user", "content": "x"}]},
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "conv.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path


def test_build_skip_and_partial_rebuild(workdir: Path) -> None:
    run_here("build", "r.yaml", cwd=workdir)
    cat = Catalog(workdir / "xwin-catalog")
    raw_v, kept_v = cat.current("raw"), cat.current("kept")
    assert (raw_v.rows, kept_v.rows, kept_v.n_drops) == (3, 1, 2)

    out = run_here("build", "r.yaml", cwd=workdir)
    assert "nothing to do" in out.stderr
    assert cat.current("kept").version == kept_v.version

    run_here("build", "r.yaml", "--set", "min_len=1", cwd=workdir)
    assert cat.current("raw").version == raw_v.version  # upstream untouched
    assert cat.current("kept").version == kept_v.version + 1
    assert cat.current("kept").rows == 2

    # Going back to the first config restores the stored version without recomputing.
    run_here("build", "r.yaml", cwd=workdir)
    assert cat.current("kept").version == kept_v.version

    con = xwin_data.connect(workdir / "xwin-catalog")
    reasons = dict(con.execute("SELECT reason, count(*) FROM drops GROUP BY 1").fetchall())
    assert reasons == {"too_short": 1, "short_content": 1}
    statuses = [r[0] for r in con.execute("SELECT status FROM builds ORDER BY started_at").fetchall()]
    assert statuses == ["ok"] * 4


def test_sql_json_and_readonly(workdir: Path) -> None:
    run_here("build", "r.yaml", cwd=workdir)
    out = run_here("sql", "--format", "json", "SELECT id FROM kept ORDER BY id", cwd=workdir)
    assert json.loads(out.stdout) == [{"id": "b"}]
    bad = run_here("sql", "DELETE FROM catalog_db.builds", cwd=workdir, check=False)
    assert bad.returncode != 0


@pytest.mark.parametrize("mutation, line, key", [
    (lambda t: t.replace("    op: filter", "    op: filter\n    colour: red"), 12, "colour"),
    (lambda t: t.replace("op: filter", "op: filtr"), 11, "kept.op"),
    (lambda t: t.replace("too_short:", "too short:").replace("where:", "wher:"), 15, "wher"),
    (lambda t: t.replace("inputs: [raw]", "inputs: [nowhere]"), 12, "kept.inputs"),
])
def test_broken_recipe_names_line_and_key(workdir: Path, mutation, line, key) -> None:
    path = workdir / "bad.yaml"
    path.write_text(mutation(RECIPE))
    with pytest.raises(RecipeError) as err:
        from xwin_data.core.engine import plan

        plan(load_recipe(path), Catalog(workdir / "cat"))
    assert err.value.line == line, str(err.value)
    assert key in str(err.value)
    assert str(path) in str(err.value)
    assert not (workdir / "cat" / "tables").exists() or not any((workdir / "cat" / "tables").iterdir())


def test_unknown_set_key_fails_before_work(workdir: Path, cli) -> None:
    out = cli("build", "r.yaml", "--set", "min_lenn=2", cwd=workdir, check=False)
    assert out.returncode == 2
    assert "min_lenn" in out.stderr and "unknown key" in out.stderr
    assert not (workdir / "xwin-catalog" / "tables").exists()


def test_failed_validation_blocks_publish(workdir: Path) -> None:
    bad = RECIPE.replace('too_short: "len(messages) >= 2"', 'too_short: "len(messages) >= 1"')
    (workdir / "bad.yaml").write_text(bad)
    out = run_here("build", "bad.yaml", "--set", "min_len=1", cwd=workdir, check=False)
    assert out.returncode == 1
    assert "last_turn_assistant" in out.stderr and "'c'" in out.stderr
    cat = Catalog(workdir / "xwin-catalog")
    assert cat.current("raw") is not None and cat.current("kept") is None
    con = xwin_data.connect(cat.root)
    assert con.execute("SELECT count(*) FROM validations WHERE NOT success").fetchone()[0] == 1
    assert con.execute("SELECT status FROM builds").fetchone()[0] == "failed"


def test_second_build_fails_clearly_or_waits(workdir: Path, cli) -> None:
    import threading

    from filelock import FileLock

    cat = Catalog(workdir / "xwin-catalog")
    cat.root.mkdir(parents=True)
    holder = FileLock(str(cat.root / ".build.lock"), thread_local=False)  # another "build" holds the catalog
    holder.acquire()
    (cat.root / ".build.lock.json").write_text('{"build_id": "b-1", "pid": 4242, "recipe": "other"}')
    try:
        out = cli("build", "r.yaml", cwd=workdir, check=False)
        assert out.returncode == 2
        assert "locked by build b-1" in out.stderr and "4242" in out.stderr
        assert cat.current("raw") is None

        timer = threading.Timer(1.0, holder.release)
        timer.start()
        out = cli("build", "r.yaml", "--wait", "30", cwd=workdir)
        timer.join()
    finally:
        if holder.is_locked:
            holder.release()
    assert cat.current("kept").rows == 1


def test_sql_write_is_opt_in(workdir: Path) -> None:
    run_here("build", "r.yaml", cwd=workdir)
    run_here("sql", "CREATE TABLE notes AS SELECT 1 AS x", cwd=workdir)
    assert run_here("sql", "--format", "csv",
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = 'notes'",
                    cwd=workdir).stdout.splitlines()[1] == "0"
    run_here("sql", "--write", "CREATE TABLE catalog_db.notes AS SELECT 1 AS x", cwd=workdir)
    out = run_here("sql", "--write", "--format", "csv", "SELECT x FROM catalog_db.notes", cwd=workdir)
    assert out.stdout.splitlines() == ["x", "1"]


def test_library_build_and_connect(workdir: Path, monkeypatch) -> None:
    monkeypatch.chdir(workdir)
    report = xwin_data.build("r.yaml", catalog=workdir / "cat", sets=["min_len=1"], show_progress=False)
    assert report.status == "ok"
    assert [s.status for s in report.stages] == ["built", "built"]
    con = xwin_data.connect(workdir / "cat")
    assert con.execute("SELECT count(*) FROM kept").fetchone()[0] == 2
    lineage = con.execute("SELECT inputs, library_versions FROM table_versions WHERE name = 'kept'").fetchone()
    assert json.loads(lineage[0])[0]["name"] == "raw"
    assert "duckdb" in json.loads(lineage[1])


def test_target_builds_a_stage_and_what_it_needs_only(workdir: Path) -> None:
    recipe = RECIPE + """\
  - id: counted
    op: sql
    inputs: [kept]
    params:
      query: "SELECT count(*) AS n FROM kept"
"""
    (workdir / "r.yaml").write_text(recipe)
    planned = run_here("plan", "r.yaml", "--target", "kept", "--json", cwd=workdir)
    assert [r["stage"] for r in json.loads(planned.stdout)] == ["raw", "kept"]
    out = run_here("build", "r.yaml", "--target", "kept", cwd=workdir)
    cat = Catalog(workdir / "xwin-catalog")
    assert cat.current("kept").rows == 1 and cat.current("counted") is None
    assert "counted" not in out.stderr

    # Each dropped row is filed with the first predicate it fails, paired with its own id.
    con = xwin_data.connect(workdir / "xwin-catalog")
    assert dict(con.execute("SELECT source_id, reason FROM drops").fetchall()) == {"a": "short_content",
                                                                                    "c": "too_short"}
    con.close()

    kept_version = cat.current("kept").version
    out = run_here("build", "r.yaml", cwd=workdir)  # the whole recipe: only the stage left out runs now
    assert "▶ counted" in out.stderr and "▶ kept" not in out.stderr and "▶ raw" not in out.stderr
    assert cat.current("kept").version == kept_version and cat.current("counted").rows == 1

    bad = run_here("build", "r.yaml", "--target", "nope", cwd=workdir, check=False)
    assert bad.returncode != 0
    assert "--target names no stage or table of recipe smoke: nope (stages: raw, kept, counted)" in bad.stderr


NUMBERS = """\
name: numbers
stages:
  - id: raw
    op: sql
    schema: conversations
    params:
      query: >
        SELECT 'n' || i AS id, [{'role': 'user', 'content': 'q' || i}, {'role': 'assistant', 'content': 'a' || i}]
        AS messages, i FROM range(200) t(i) ORDER BY i
  - id: kept
    op: filter
    inputs: [raw]
    schema: conversations
    params:
      where: {odd: "i % 2 = 1", small: "i < 150"}
  - id: repeated
    op: sql
    params:
      query: "SELECT i % 10 AS id, i FROM range(40) t(i) ORDER BY i"
  - id: repeated_kept
    op: filter
    inputs: [repeated]
    params:
      where: {big: "i >= 25"}
"""


def test_filter_keeps_the_input_order_and_drops_each_reject_once(tmp_path: Path) -> None:
    (tmp_path / "n.yaml").write_text(NUMBERS)
    xwin_data.build(tmp_path / "n.yaml", tmp_path / "cat", show_progress=False)
    con = xwin_data.connect(tmp_path / "cat")
    assert [r[0] for r in con.execute("SELECT i FROM kept").fetchall()] == list(range(1, 150, 2))
    reasons = dict(con.execute("SELECT reason, count(*) FROM drops WHERE table_name = 'kept' GROUP BY 1").fetchall())
    assert reasons == {"odd": 100, "small": 25}  # the first failed predicate names each reject
    # the kept rows are the validated input's, unchanged: its row checks carry over, with a note saying so
    results = con.execute("SELECT success, results FROM validations WHERE table_name = 'kept'").fetchone()
    assert results[0] and "rows_of_validated_input" in results[1] and "last_turn_assistant" in results[1]
    # ids that repeat cannot tell rows apart: the predicates decide each row
    assert [r[0] for r in con.execute("SELECT i FROM repeated_kept").fetchall()] == list(range(25, 40))
    assert con.execute("SELECT count(*) FROM drops WHERE table_name = 'repeated_kept'").fetchone()[0] == 25
