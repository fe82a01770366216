"""Readers and ops through the library API on files the tests write: every record shape and container, every
malformed-record kind, near-duplicates planted among distinct conversations, splitting, cleaning parity."""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

import xwin_data
from xwin_data.core.yaml_lines import RecipeError

WORDS = ("river stone quiet lamp orbit violet harbor maple signal copper meadow lantern pixel canyon ember "
         "glacier velvet thunder saffron willow puzzle falcon marble nectar prism quartz raven sable tundra "
         "umber vortex wander yonder zephyr anchor basil cobalt delta fjord garnet hazel iris jasper kelp").split()

READ_ONLY = """\
name: read_only
vars: {{input: x}}
stages:
  - id: raw
    op: read_conversations
    schema: conversations
    params: {{path: "${{input}}", {extra}}}
"""

PIPELINE = """\
name: mini
vars: {input: x}
stages:
  - id: raw
    op: read_conversations
    params: {path: "${input}"}
  - id: stats
    op: conversation_stats
    inputs: [raw]
    params: {language: false}
  - id: exact
    op: dedup_exact
    inputs: [stats]
  - id: near
    op: dedup_near
    inputs: [exact]
    params: {threshold: 0.7}
  - id: split
    op: split_long_conversations
    inputs: [near]
    params: {max_tokens: 300}
  - id: raw_subsets
    op: nested_subsets
    inputs: [raw]
    params: {sizes: [10, 20, 1000], seed: 5}
"""


def sentence(rng: random.Random, n: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def conv(cid: str, texts: list[str], **extra) -> dict:
    turns = [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]
    return {"id": cid, **extra, "conversations": turns}


def build(tmp_path: Path, recipe_text: str, sets: list[str]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    report = xwin_data.build(recipe, tmp_path / "cat", sets, show_progress=False)
    return report, xwin_data.connect(tmp_path / "cat")


def read(tmp_path: Path, path: Path, extra: str = "format: auto"):
    return build(tmp_path, READ_ONLY.format(extra=extra), [f"input={path}"])


def test_every_malformed_kind_is_a_drop(tmp_path: Path) -> None:
    good = conv("ok", ["Hi there, how are you?", "Fine, thanks for asking."])
    lines = [json.dumps(good).encode(),
             b'{"id": "cut", "conversations": [',
             b'{"id": "latin1", "conversations": [{"from": "human", "value": "caf\xe9"}]}',
             json.dumps({"id": "nofield", "text": "x"}).encode(),
             json.dumps(conv("tool", ["q", "a"]) | {"conversations": [{"from": "human", "value": "q"},
                                                                       {"from": "observation", "value": "a"}]}).encode(),
             json.dumps({"id": "twice", "conversations": [{"from": "human", "value": "a"}, {"from": "user", "value": "b"},
                                                         {"from": "gpt", "value": "c"}]}).encode(),
             json.dumps(conv("blank", ["question", ""])).encode(),
             json.dumps({"id": "num", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}]}).encode(),
             json.dumps(conv("gptfirst", ["x", "y"]) | {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}).encode(),
             json.dumps({"id": "sysmid", "conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"},
                                                          {"from": "gpt", "value": "a"}]}).encode(),
             json.dumps(conv("lonely", ["anyone?"])).encode(),
             json.dumps({"id": "none", "conversations": []}).encode(),
             b"42",
             json.dumps({"id": "noval", "conversations": [{"from": "human"}]}).encode(),
             json.dumps(conv("trailing", ["q1", "a1", "unanswered"])).encode()]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report, con = read(tmp_path, path)
    drops = {r[0]: (r[1], r[2]) for r in con.execute("SELECT source_id, reason, detail FROM drops").fetchall()}
    assert {k: v[0] for k, v in drops.items()} == {
        "mixed:2": "broken_json", "mixed:3": "invalid_utf8", "nofield": "missing_field", "tool": "unknown_role",
        "twice": "non_alternating_roles", "blank": "empty_content", "num": "non_string_content",
        "gptfirst": "first_turn_not_user", "sysmid": "misplaced_system", "lonely": "no_assistant_turn",
        "none": "empty_conversation", "mixed:13": "not_an_object", "noval": "missing_field"}
    assert "observation" in drops["tool"][1] and "null" in drops["num"][1]
    kept = dict(con.execute("SELECT id, len(messages) FROM raw").fetchall())
    assert kept == {"ok": 2, "trailing": 2}  # an unanswered last question is trimmed, not dropped


def test_formats_and_containers(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                      {"role": "assistant", "content": "Hello!"}], "model": "m1"},
        {"instruction": "Add", "input": "2 and 3", "output": "5", "history": [["Ready?", "Yes."]], "system": "Math."},
        conv("s1", ["Hey", "Hello"], model_id="m2"),
    ]
    expect = {("openai", 3, "m1"), ("alpaca", 5, None), ("s1", 2, "m2")}

    def check(con, ids=None) -> None:
        got = con.execute("SELECT id, len(messages), model, messages FROM raw ORDER BY id").fetchall()
        shapes = {(("s1" if r[0] == "s1" else "alpaca" if r[1] == 5 else "openai"), r[1], r[2]) for r in got}
        assert shapes == expect
        alpaca = next(r[3] for r in got if r[1] == 5)
        assert alpaca[0] == {"role": "system", "content": "Math."} and alpaca[3]["content"] == "Add\n\n2 and 3"

    (tmp_path / "a.json").write_text(json.dumps(rows, indent=2))
    check(read(tmp_path / "j", tmp_path / "a.json")[1])
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows))
    check(read(tmp_path / "g", tmp_path / "a.jsonl.gz")[1])
    import datasets

    ds = datasets.Dataset.from_list([{"id": f"h{i}", "conversations": r["conversations"]} for i, r in enumerate(rows[2:] * 3)])
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for sub, path in (("p", tmp_path / "a.parquet"), ("h", tmp_path / "saved")):
        con = read(tmp_path / sub, path)[1]
        assert con.execute("SELECT count(*), count(DISTINCT id) FROM raw").fetchone() == (3, 3)
    # An explicit format that does not match is a drop per record, not a crash.
    con = read(tmp_path / "x", tmp_path / "a.json", "format: alpaca")[1]
    assert con.execute("SELECT count(*) FROM raw").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM drops WHERE reason = 'missing_field'").fetchone()[0] == 2


def test_json_array_with_a_broken_element_keeps_what_came_before(tmp_path: Path) -> None:
    good = [conv(f"c{i}", [f"question {i}", f"answer {i}"]) for i in range(3)]
    text = json.dumps(good)[:-1] + ', {"id": "broken", "conversations": [}]'
    (tmp_path / "b.json").write_text(text)
    con = read(tmp_path, tmp_path / "b.json")[1]
    assert con.execute("SELECT count(*) FROM raw").fetchone()[0] == 3
    assert con.execute("SELECT source_id, reason FROM drops").fetchall() == [("b:3", "broken_json")]


def test_missing_file_and_offline_hub_id_fail_clearly(tmp_path: Path, cli) -> None:
    (tmp_path / "r.yaml").write_text(READ_ONLY.format(extra="format: auto"))
    with pytest.raises(RecipeError, match="input file not found") as err:
        xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", [f"input={tmp_path / 'nope.jsonl'}"], show_progress=False)
    assert (err.value.file, err.value.line, err.value.key) == (str(tmp_path / "r.yaml"), 7, "raw.params")
    assert "nope.jsonl" in str(err.value)
    assert not (tmp_path / "cat" / "tables").exists() or not any((tmp_path / "cat" / "tables").iterdir())
    out = cli("build", "r.yaml", "--set", "input=nobody/no-such-dataset", "--quiet", cwd=tmp_path, check=False,
              env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert out.returncode != 0 and "nobody/no-such-dataset" in out.stderr and "offline" in out.stderr


def test_near_duplicates_split_and_ids(tmp_path: Path) -> None:
    rng = random.Random(3)
    base = [conv(f"c{i:02d}", [sentence(rng), sentence(rng, 60)]) for i in range(30)]
    near = []
    for k, i in enumerate([4, 9, 17]):  # one word changed in the answer: near-copies of c04, c09, c17
        words = base[i]["conversations"][1]["value"].split()
        words[30] = "CHANGED"
        near.append(conv(f"a_near{k}", [base[i]["conversations"][0]["value"], " ".join(words)]))
    half = base[20]["conversations"][1]["value"].split()
    far = conv("z_far", [sentence(rng), " ".join(half[:30] + [rng.choice(WORDS) for _ in half[30:]])])
    exact = conv("b_exact", [base[5]["conversations"][0]["value"].upper(), base[5]["conversations"][1]["value"] + "  "])
    long = conv("long", [sentence(rng, 100) for _ in range(8)])  # 4 pairs of ~200 tokens, budget 300 → 4 pieces
    huge = conv("huge", ["short question", sentence(rng, 400), "and then?", "fine"])  # first pair alone is over
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in base + near + [far, exact, long, huge]))
    report, con = build(tmp_path, PIPELINE, [f"input={path}"])
    near_drops = dict(con.execute("SELECT source_id, detail FROM drops WHERE reason = 'near_duplicate'").fetchall())
    # The kept record of each pair is the first in the file, although the planted copies' ids sort first.
    assert set(near_drops) == {"a_near0", "a_near1", "a_near2"}
    assert all(near_drops[f"a_near{k}"].startswith(f"near duplicate of c{i:02d} (estimated jaccard ")
               and "verified jaccard" in near_drops[f"a_near{k}"] for k, i in enumerate([4, 9, 17]))
    assert con.execute("SELECT source_id, detail FROM drops WHERE reason = 'exact_duplicate'").fetchall() == [
        ("b_exact", "duplicate of c05")]
    assert con.execute("SELECT count(*) FROM near WHERE id = 'z_far'").fetchone()[0] == 1
    pieces = con.execute("SELECT id, len(messages), n_turns, n_tokens FROM split WHERE id LIKE 'long#%' ORDER BY id").fetchall()
    assert [p[0] for p in pieces] == ["long#0", "long#1", "long#2", "long#3"]
    assert all(p[1] == 2 and p[2] == 1 and p[3] <= 300 for p in pieces)
    assert con.execute("SELECT id, messages[1].content FROM split WHERE id LIKE 'huge%'").fetchall() == [("huge#0", "and then?")]
    assert con.execute("SELECT reason FROM drops WHERE source_id = 'huge'").fetchall() == [("pair_over_token_budget",)]
    # Subsets count assistant turns from messages when the input has no n_turns column.
    manifest = con.execute("SELECT size, table_name, assistant_turns, complete FROM raw_subsets ORDER BY size").fetchall()
    assert [(m[1], m[3]) for m in manifest] == [("raw_10", True), ("raw_20", True), ("raw_1k", False)]
    assert manifest[2][2] == con.execute("SELECT sum(len(messages) // 2) FROM raw").fetchone()[0]
    assert con.execute("SELECT count(*) FROM raw_10 WHERE id NOT IN (SELECT id FROM raw_20)").fetchone()[0] == 0


def test_cleaning_column_equals_row_at_a_time() -> None:
    from xwin_data.text.cleaning import clean_column, clean_value

    values = ["Hello  \r\nworld\n\n\n\nbye  ", "doesnÃ¢â‚¬â„¢t cafÃ©", "<p>Hi <b>there</b></p><ul><li>one</li></ul>",
              "a &amp; b", "中文，测试。", "plain", "```html\n<p>x</p>\n```", "<p>user html</p>", "x\u00a0y\u200bz\x07"]
    roles = ["user", "assistant", "assistant", "user", "user", "assistant", "assistant", "user", "assistant"]
    out, counts = clean_column(pa.array(values), pa.array(roles))
    assert out.to_pylist() == [clean_value(v, r) for v, r in zip(values, roles)]
    assert out.to_pylist()[:4] == ["Hello\nworld\n\nbye", "doesn't café", "Hi **there**\n\n- one", "a & b"]
    assert out.to_pylist()[6:8] == ["```html\n<p>x</p>\n```", "<p>user html</p>"]  # code and user text kept as written
    assert counts == {"html": 1, "unicode": 3}


def test_parquet_json_and_hf_units_equal_reading_on_the_driver(tmp_path: Path) -> None:
    """Parquet by row group, JSON shards by file, a saved HF dataset by its Arrow files, and a gzipped JSONL of
    several members by blocks (seeking in the gzip stream): as forked-worker units (`block_bytes` small enough
    to split them) they give the rows and drops of reading on the driver."""
    from xwin_data.core import workers

    if workers.available_workers() < 2:
        pytest.skip("needs fork and two cores (the reader splits its input into units)")
    import datasets
    import pyarrow.parquet as pq

    rng = random.Random(3)
    rows = [conv(f"c{i % 170}" if i % 9 else None, [sentence(rng, 60), "" if i % 23 == 0 else sentence(rng)])
            for i in range(200)]
    rows[5]["conversations"][0]["from"] = "robot"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet", row_group_size=60)
    (tmp_path / "json").mkdir()
    for k in range(2):
        (tmp_path / "json" / f"p{k}.json").write_text(json.dumps(rows[k * 100:(k + 1) * 100]))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with open(tmp_path / "m.jsonl.gz", "wb") as fh:  # members of ~2 MB of text each, a few KB compressed
        for _ in range(3):
            fh.write(gzip.compress(lines * 10))
    expect = {"c.parquet": 4, "json": 2, "saved": 2, "m.jsonl.gz": None}  # units: row groups, files, Arrow files
    for name, units in expect.items():
        got = []
        for bb in (1 << 30, 1 << 20 if name.endswith(".gz") else 256):
            report, con = read(tmp_path / f"{name}-{bb}", tmp_path / name, f"block_bytes: {bb}")
            got.append((con.execute("SELECT * FROM raw ORDER BY id").fetchall(),
                        con.execute("SELECT source_id, reason, detail FROM drops ORDER BY ALL").fetchall()))
            executor = report.stages[0].stats.get("executor") if bb < 1 << 30 else None
            if units is not None and executor is not None:
                assert executor["batches"] == units, name
        assert got[0] == got[1], name
        assert got[0][0] and got[0][1], name
    assert len(got[0][0]) > 25 * 200  # every member of the gzip was read, once
