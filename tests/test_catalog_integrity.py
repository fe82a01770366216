"""A catalog that checks itself: parts recorded at publish, damaged or missing outputs rebuilt, `validate
--files`, and one broken table leaving the others queryable. Real builds on a real DuckDB catalog."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import invoke_in as invoke

import xwin_data
from xwin_data.core.catalog import Catalog

RECIPE = """\
name: smoke
stages:
  - id: raw
    op: sql
    params:
      query: "SELECT id, messages::STRUCT(role VARCHAR, content VARCHAR)[] AS messages FROM read_json('conv.jsonl')"
  - id: kept
    op: filter
    inputs: [raw]
    params:
      where:
        short_content: "length(messages[1].content) >= 3"
"""
DOWNSTREAM = """\
name: downstream
stages:
  - id: counted
    op: sql
    inputs: [kept]
    params:
      query: "SELECT count(*) AS n FROM kept"
"""
ROWS = [{"id": str(i), "messages": [{"role": "user", "content": "x" * (i % 5)},
                                    {"role": "assistant", "content": "answer " * 20}]} for i in range(200)]




@pytest.fixture
def built(tmp_path: Path) -> Path:
    (tmp_path / "conv.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "down.yaml").write_text(DOWNSTREAM)
    res = invoke(tmp_path, "build", "r.yaml", "-q")
    assert res.exit_code == 0, res.output
    return tmp_path


def _part(d: Path, table: str) -> Path:
    cat = Catalog(d / "xwin-catalog")
    return Path(cat.data_files(cat.current(table))[0])


def test_parts_recorded_at_publish(built: Path) -> None:
    cat = Catalog(built / "xwin-catalog")
    tv = cat.current("kept")
    recs = cat.part_records(tv)
    assert {r.file.split("/")[0] for r in recs} == {"data", "drops"}  # kept has drops: both recorded
    for r in recs:
        assert (built / "xwin-catalog" / tv.path / r.file).stat().st_size == r.bytes
        assert r.checksum.startswith("xxh3_128:")


def test_truncated_output_is_rebuilt(built: Path) -> None:
    cat = Catalog(built / "xwin-catalog")
    raw_v, kept_v = cat.current("raw").version, cat.current("kept").version
    part = _part(built, "raw")
    part.write_bytes(part.read_bytes()[:100])
    res = invoke(built, "build", "r.yaml", "-q")
    assert res.exit_code == 0, res.output
    assert "output damaged" in res.text and str(part) in res.text
    assert "nothing to do" not in res.output
    assert cat.current("raw").version == raw_v + 1 and cat.current("kept").version == kept_v
    assert xwin_data.connect(cat).execute("SELECT count(*) FROM raw").fetchone()[0] == 200
    assert "nothing to do" in invoke(built, "build", "r.yaml", "-q").output


def test_missing_output_is_rebuilt(built: Path) -> None:
    cat = Catalog(built / "xwin-catalog")
    shutil.rmtree(built / "xwin-catalog" / cat.current("kept").path)
    res = invoke(built, "build", "r.yaml", "-q")
    assert res.exit_code == 0 and "output damaged" in res.output and "folder is missing" in res.output, res.output
    assert xwin_data.connect(cat).execute("SELECT count(*) FROM kept").fetchone()[0] == 80


def test_same_size_damage_needs_verify(built: Path) -> None:
    cat = Catalog(built / "xwin-catalog")
    part = _part(built, "kept")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    assert "nothing to do" in invoke(built, "build", "r.yaml", "-q").output  # sizes match: not seen
    v = cat.current("kept").version
    res = invoke(built, "build", "r.yaml", "-q", "--verify")
    assert res.exit_code == 0 and "checksum differs" in res.output, res.output
    assert cat.current("kept").version == v + 1


def test_validate_files_names_the_damaged_table(built: Path) -> None:
    ok = invoke(built, "validate", "--files")
    assert ok.exit_code == 0 and "2 of 2 tables sound" in ok.output, ok.output
    part = _part(built, "raw")
    data = bytearray(part.read_bytes())
    data[-20] ^= 0x01
    part.write_bytes(bytes(data))
    res = invoke(built, "validate", "--files")
    assert res.exit_code == 1, res.output
    assert "✗ raw" in res.output and "checksum differs" in res.output and "✓ kept" in res.output
    assert "1 of 2 tables sound" in res.output


def test_a_damaged_table_leaves_the_others_queryable(built: Path) -> None:
    part = _part(built, "raw")
    part.write_bytes(b"not parquet at all")
    con = xwin_data.connect(built / "xwin-catalog")
    assert con.execute("SELECT count(*) FROM kept").fetchone()[0] == 80
    assert con.execute("SELECT count(*) FROM drops").fetchone()[0] == 120
    with pytest.raises(Exception, match="raw.*damaged.*part-00000.parquet"):
        con.execute("SELECT count(*) FROM raw").fetchall()
    res = invoke(built, "sql", "SELECT count(*) AS n FROM raw")
    assert res.exit_code != 0 and "damaged" in res.output and "part-00000.parquet" in res.text
    assert invoke(built, "sql", "SELECT count(*) AS n FROM kept").exit_code == 0


def test_damaged_input_from_another_recipe_stops_the_build(built: Path) -> None:
    part = _part(built, "kept")
    part.write_bytes(part.read_bytes()[:-10])
    res = invoke(built, "build", "down.yaml", "-q")
    assert res.exit_code == 1, res.output
    assert "input table 'kept'" in res.output and "damaged" in res.output and "smoke" in res.output
    assert Catalog(built / "xwin-catalog").current("counted") is None


def test_unpublished_part_in_a_table_folder_is_found(built: Path) -> None:
    part = _part(built, "kept")
    shutil.copyfile(part, part.with_name("part-00042.parquet"))
    con = xwin_data.connect(built / "xwin-catalog")
    with pytest.raises(Exception, match="not published"):
        con.execute("SELECT count(*) FROM kept").fetchall()
    res = invoke(built, "validate", "--files")
    assert res.exit_code == 1 and "part-00042.parquet" in res.text
