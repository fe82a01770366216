"""Read-only means read-only: escape attempts against `xwin-data sql` and against recipe SQL, each refused
with a one-line error, on a real catalog built by the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from conftest import invoke_in as _invoke
from conftest import run_here

from xwin_data.core.catalog import Catalog
from xwin_data.core.recipe import load_recipe

RECIPE = """\
name: smoke
vars:
  input: conv.jsonl
  min_len: 3
  who: "o'brien"
  flag: true
stages:
  - id: raw
    op: sql
    params:
      query: "SELECT id, messages::STRUCT(role VARCHAR, content VARCHAR)[] AS messages FROM read_json('${input}')"
  - id: kept
    op: filter
    inputs: [raw]
    params:
      where:
        short_content: "length(messages[1].content) >= ${min_len}"
"""

ROWS = [
    {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"id": "b", "messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hey"}]},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sqlconf")
    (d / "conv.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (d / "r.yaml").write_text(RECIPE)
    (d / "secret.txt").write_text("top secret\n")
    run_here("build", "r.yaml", "-q", cwd=d)
    return d




def _sql(d: Path, query: str, *extra: str):
    return _invoke(d, "sql", query, "--format", "json", *extra)


def test_reads_work(built: Path) -> None:
    out = _sql(built, "SELECT id FROM kept ORDER BY id")
    assert out.exit_code == 0, out.output
    assert [r["id"] for r in json.loads(out.output[out.output.index("["):])] == ["b"]
    assert json.loads(_sql(built, "SELECT count(*) AS n FROM drops").stdout)[0]["n"] == 1


def _data_part(d: Path, table: str) -> Path:
    tv = Catalog(d / "xwin-catalog").current(table)
    return d / "xwin-catalog" / tv.path / "data" / "part-00000.parquet"


ESCAPES = [
    ("attach the metadata file", "ATTACH 'xwin-catalog/catalog.duckdb' AS m"),
    ("attach and delete", "ATTACH 'xwin-catalog/catalog.duckdb' AS m; DELETE FROM m.table_versions"),
    ("copy out", "COPY (SELECT * FROM kept) TO 'stolen.csv'"),
    ("copy into a published table", "COPY (SELECT * FROM kept) TO '{part_dir}/part-00009.parquet' (FORMAT parquet)"),
    ("overwrite a published part", "COPY (SELECT * FROM raw) TO '{part}' (FORMAT parquet)"),
    ("read /etc/passwd", "SELECT * FROM read_csv('/etc/passwd')"),
    ("read a local file", "SELECT * FROM read_text('secret.txt')"),
    ("glob the disk", "SELECT * FROM glob('/*')"),
    ("re-enable access", "SET enable_external_access = true"),
    ("widen allowed paths", "SET allowed_directories = ['/']"),
    ("unlock configuration", "SET lock_configuration = false"),
    ("export the database", "EXPORT DATABASE 'dump'"),
    ("install an extension", "INSTALL httpfs"),
    ("multi-statement", "SELECT 1; SELECT 2"),
    ("read through a table function in a view", "CREATE VIEW x AS SELECT * FROM read_csv('/etc/passwd')"),
]


@pytest.mark.parametrize("what,query", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escape_refused(built: Path, what: str, query: str) -> None:
    part = _data_part(built, "kept")
    before = {p: p.stat().st_size for p in part.parent.iterdir()}
    meta_before = (built / "xwin-catalog" / "catalog.duckdb").read_bytes()
    out = _sql(built, query.format(part=part, part_dir=part.parent))
    assert out.exit_code != 0, f"{what} was not refused: {out.output}"
    message = out.output
    assert ("refused" in message or "Permission Error" in message or "locked" in message), message
    assert {p: p.stat().st_size for p in part.parent.iterdir()} == before  # no part added or rewritten
    assert (built / "xwin-catalog" / "catalog.duckdb").read_bytes() == meta_before
    assert not (built / "stolen.csv").exists() and not (built / "dump").exists()


def test_write_mode_still_attaches(built: Path) -> None:
    out = _sql(built, "SELECT count(*) AS n FROM catalog_db.table_versions", "--write")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output[out.output.index("["):])[0]["n"] >= 2


RECIPE_ESCAPES = [
    ("copy breakout", "SELECT 1 AS x) TO 'pwned.csv' (FORMAT csv); SELECT (1"),
    ("second statement", "SELECT 1 AS x; COPY (SELECT 1) TO 'pwned.csv'"),
    ("attach", "ATTACH 'xwin-catalog/catalog.duckdb' AS m"),
    ("copy statement", "COPY (SELECT 1) TO 'pwned.csv'"),
    ("not a select", "SET enable_external_access = true"),
]


@pytest.mark.parametrize("what,query", RECIPE_ESCAPES, ids=[e[0] for e in RECIPE_ESCAPES])
def test_recipe_sql_must_be_one_select(built: Path, cli, what: str, query: str) -> None:
    (built / f"bad_{what[:4]}.yaml").write_text(
        "name: bad\nstages:\n  - id: evil\n    op: sql\n    params:\n      query: " + json.dumps(query) + "\n")
    out = _invoke(built, "build", f"bad_{what[:4]}.yaml", "-q")
    assert out.exit_code == 2, out.output
    assert "bad_" in out.output and ":6" in out.output and "evil.params.query" in out.output, out.output
    assert not (built / "pwned.csv").exists()


def test_recipe_filter_predicate_is_one_expression(built: Path, cli) -> None:
    (built / "badf.yaml").write_text(
        "name: badf\nstages:\n  - id: f\n    op: filter\n    inputs: [raw]\n    params:\n      where:\n"
        "        x: \"true); COPY (SELECT 1) TO 'pwned.csv' (FORMAT csv); SELECT (1\"\n")
    out = _invoke(built, "build", "badf.yaml", "-q")
    assert out.exit_code == 2 and "one SQL expression" in out.output, out.output
    assert not (built / "pwned.csv").exists()


def test_recipe_sql_cannot_read_unnamed_files(built: Path, cli) -> None:
    """A recipe query reads its inputs and the files it names; a path it builds at run time is refused."""
    (built / "sneak.yaml").write_text(
        "name: sneak\nstages:\n  - id: s\n    op: sql\n    inputs: [raw]\n    params:\n      query: "
        "\"SELECT * FROM read_text('/etc/' || 'passwd')\"\n")
    out = _invoke(built, "build", "sneak.yaml", "-q")
    assert out.exit_code == 1 and "Permission Error" in out.output, out.output
    (built / "meta.yaml").write_text(
        "name: meta\nstages:\n  - id: s\n    op: sql\n    inputs: [raw]\n    params:\n      query: "
        "\"SELECT * FROM read_text(concat('xwin-catalog/', 'catalog.duckdb'))\"\n")
    out = _invoke(built, "build", "meta.yaml", "-q")
    assert out.exit_code == 1 and "Permission Error" in out.output, out.output


def test_vars_in_recipe_sql_are_typed(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "name: typed\nvars:\n  n: 3\n  ok: true\n  who: \"x' OR 1=1 --\"\n  dir: /data\nstages:\n  - id: s\n"
        "    op: sql\n    params:\n      query: \"SELECT ${n} AS n, ${ok} AS ok, ${who} AS who, "
        "'${dir}/a.json' AS path, '${who}' AS inside\"\n")
    q = load_recipe(tmp_path / "r.yaml").stages[0].params["query"]
    assert q == ("SELECT 3 AS n, true AS ok, 'x'' OR 1=1 --' AS who, '/data/a.json' AS path, "
                 "'x'' OR 1=1 --' AS inside")
    row = duckdb.connect().execute(q).fetchone()
    assert row == (3, True, "x' OR 1=1 --", "/data/a.json", "x' OR 1=1 --")
