"""No record aborts a build: a generated corpus of malformed shards (tests/fuzz_corpus.py: ~10,000 records over
more than 30 kinds of malformation, truncated and fake containers, a mixed-type folder) is read in this process and
in worker processes; every record is kept or dropped exactly once, by id, and both ways give the same tables.
Folders and globs of shards go through the parallel reader and give what one file with the same records gives."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import xwin_data
from xwin_data.core import workers
from xwin_data.core.catalog import Catalog
from xwin_data.ops.readers import sharegpt as sharegpt_read

from fuzz_corpus import check, make_corpus

RECIPE = """\
name: fuzz
vars: {input: x, file_type: auto}
stages:
  - {id: raw, op: read_conversations, schema: conversations, params: {path: "${input}", file_type: "${file_type}"}}
  - {id: clean, op: clean_conversations, inputs: [raw]}
"""
READ_ONLY = """\
name: shards
vars: {input: x, file_type: auto}
stages:
  - {id: raw, op: read_conversations, params: {path: "${input}", file_type: "${file_type}"}}
"""


def _build(tmp_path: Path, name: str, data: str, file_type: str = "auto", recipe_text: str = RECIPE
           ) -> tuple[list, list, dict]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    catalog = tmp_path / f"cat_{name}"
    report = xwin_data.build(recipe, catalog, [f"input={data}", f"file_type={file_type}"], show_progress=False)
    assert report.status == "ok"
    con = xwin_data.connect(catalog)
    kept = [r[0] for r in con.execute("SELECT id FROM raw").fetchall()]
    drops = con.execute("SELECT source_id, reason FROM drops WHERE table_name = 'raw'").fetchall()
    con.close()
    stats = Catalog(catalog).current("raw").stats
    return kept, drops, stats


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("fuzz") / "in", 10_000, seed=1)


def test_fuzz_corpus_every_record_kept_or_dropped_once(corpus, tmp_path, monkeypatch) -> None:
    assert corpus.records >= 10_000 and len(corpus.kinds) >= 30
    monkeypatch.setattr(workers, "available_workers", lambda: 0)
    kept, drops, stats = _build(tmp_path, "here", str(corpus.folder))
    counts = check(corpus, kept, [d[0] for d in drops])
    assert stats["records"] == len(kept) + len(drops) == counts["accounted"]
    reasons = {r for _, r in drops}
    assert {"too_deeply_nested", "lone_surrogate", "truncated_file", "not_gzip", "unreadable_file",
            "not_a_data_file", "invalid_utf8", "broken_json", "unknown_role"} <= reasons
    assert "read_workers" not in stats


def test_fuzz_corpus_in_worker_processes_gives_the_same(corpus, tmp_path, monkeypatch) -> None:
    if workers.available_workers() < 2:
        pytest.skip("needs fork and two cores")
    monkeypatch.setattr(sharegpt_read, "BLOCK_BYTES", 16_384)  # many blocks per shard, so workers take them
    kept, drops, stats = _build(tmp_path, "forked", str(corpus.folder))
    assert stats["read_workers"] >= 2
    check(corpus, kept, [d[0] for d in drops])
    monkeypatch.setattr(workers, "available_workers", lambda: 0)
    kept_here, drops_here, _ = _build(tmp_path, "here", str(corpus.folder))
    assert kept == kept_here  # the same rows in the same order
    assert sorted(drops) == sorted(drops_here)


def _conversations(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"question {i}"},
                                              {"from": "gpt", "value": f"answer {i}"}]} for i in range(start, start + n)]


def test_folder_and_glob_of_shards_read_in_parallel_like_one_file(tmp_path, monkeypatch) -> None:
    if workers.available_workers() < 2:
        pytest.skip("needs fork and two cores")
    records = _conversations(600)
    whole = tmp_path / "all.jsonl"
    whole.write_text("".join(json.dumps(r) + "\n" for r in records))
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(6):
        chunk = records[k * 100:(k + 1) * 100]
        text = "".join(json.dumps(r) + "\n" for r in chunk)
        if k % 3 == 0:
            (shards / f"part-{k}.jsonl").write_text(text)
        elif k % 3 == 1:
            (shards / f"part-{k}.jsonl.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (shards / f"part-{k}.jsonl").write_text(text)
    jsonl_only = tmp_path / "jsonl_only"
    jsonl_only.mkdir()
    for k in range(3):
        (jsonl_only / f"s{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[k * 200:(k + 1) * 200]))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:200]))
    (mixed / "b.json").write_text(json.dumps(records[200:400]))
    pq.write_table(pa.Table.from_pylist(records[400:]), mixed / "c.parquet")
    monkeypatch.setattr(sharegpt_read, "BLOCK_BYTES", 2_000)

    want, _, _ = _build(tmp_path, "one", str(whole), recipe_text=READ_ONLY)
    for name, path, file_type in (("folder_jsonl", jsonl_only, "jsonl"), ("folder_auto", shards, "auto"),
                                  ("glob", shards / "part-*.jsonl*", "auto"), ("mixed", mixed, "auto")):
        kept, drops, stats = _build(tmp_path, name, str(path), file_type, READ_ONLY)
        assert stats["read_workers"] >= 2, name
        assert sorted(kept) == sorted(want) and not drops, name
    con = xwin_data.connect(tmp_path / "cat_mixed")
    assert con.execute("SELECT messages FROM raw WHERE id = 'c450'").fetchone()[0] == [
        {"role": "user", "content": "question 450"}, {"role": "assistant", "content": "answer 450"}]


def test_one_bad_role_in_a_folder_costs_only_its_record(tmp_path) -> None:
    """A record with a non-string role must not change how the folder's other records are read."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _conversations(5)))
    bad = {"id": "bad", "conversations": [{"from": 7, "value": "q"}, {"from": "gpt", "value": "a"}]}
    (folder / "odd.json").write_text(json.dumps([bad]))
    (folder / "broken.parquet").write_text("not parquet")
    kept, drops, _ = _build(tmp_path, "cat", str(folder), recipe_text=READ_ONLY)
    assert sorted(kept) == [f"c{i}" for i in range(5)]
    assert sorted(drops) == [("bad", "unknown_role"), ("broken.parquet", "unreadable_file")]
    con = xwin_data.connect(tmp_path / "cat_cat")
    roles = con.execute("SELECT DISTINCT m.role FROM (SELECT unnest(messages) AS m FROM raw)").fetchall()
    assert sorted(r[0] for r in roles) == ["assistant", "user"]


def test_truncated_and_fake_gzip_are_drops_not_aborts(tmp_path, cli) -> None:
    text = "".join(json.dumps(r) + "\n" for r in _conversations(2_000))
    packed = gzip.compress(text.encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "r.yaml").write_text(READ_ONLY)
    proc = cli("build", str(tmp_path / "r.yaml"), "-c", str(tmp_path / "cat"), "--set",
               f"input={tmp_path / 'cut.jsonl.gz'}", "-q")
    assert "truncated_file 1" in proc.stdout + proc.stderr
    con = xwin_data.connect(tmp_path / "cat")
    kept = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    detail = con.execute("SELECT detail FROM drops WHERE reason = 'truncated_file'").fetchone()[0]
    con.close()
    assert 500 < kept < 2_000 and "cut short" in detail
    (tmp_path / "fake.jsonl.gz").write_text(text)
    kept, drops, _ = _build(tmp_path, "fake", str(tmp_path / "fake.jsonl.gz"), recipe_text=READ_ONLY)
    assert kept == [] and [r for _, r in drops] == ["not_gzip"]
