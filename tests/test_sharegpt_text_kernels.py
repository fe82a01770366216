"""The vectorised text kernels give the same answers as the reference implementations they replace."""
from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import py3langid

from xwin_data.text.language import detect_batch
from xwin_data.text.tokens import PIECE_PATTERN, approx_count_column

CHARS = [chr(i) for i in range(128)] + ["é", "中", "文", "カ", "ü", "\u00a0", "\u200b", "\u2028", "—", "😀"]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return CHARS + ["".join(rng.choice(CHARS) for _ in range(rng.randint(0, 40))) for _ in range(n)] + \
        ["", " a", "a ", "ab_c9 !!x", "ab中文 x", "中文ab", "Ünïcödé words, and ASCII ones."]


def test_approx_count_column_matches_the_re2_pattern(monkeypatch) -> None:
    import xwin_data.text.tokens as tokens

    texts = pa.array(_random_texts(5000))
    expected = pc.count_substring_regex(texts, PIECE_PATTERN).cast(pa.int32())
    part = texts.slice(11, 3000)  # a sliced array (non-zero offset) counts the same
    for chunk in (tokens.COUNT_CHUNK_BYTES, 97):  # counted whole, and in slices of whole values: the same counts
        monkeypatch.setattr(tokens, "COUNT_CHUNK_BYTES", chunk)
        assert approx_count_column(texts).to_pylist() == expected.to_pylist()
        assert approx_count_column(part).to_pylist() == expected.slice(11, 3000).to_pylist()
    ascii_only = pa.array(["Hello, world! It's 2024_ok.", "x", "  \t\n", "a-b c--d"])
    assert approx_count_column(ascii_only).to_pylist() == [9, 1, 0, 7]


def test_approx_count_column_matches_the_re2_pattern_on_any_script() -> None:
    """Characters from the whole Unicode range, and CJK characters inside, before and after word runs."""
    rng = random.Random(7)
    pool = [chr(c) for c in rng.sample(range(0x80, 0x110000), 4000) if not 0xD800 <= c < 0xE000]
    pool += list("中文カタカナひらがな⺀〆々ー・") + ["\u0301", "\u3000", "a", "b", " ", "\n", "_", "7", "!"]
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 30))) for _ in range(20000)]
    texts += ["a中b", "中a", "中文abc", "abc中文", "ab⺀c", "⺀中", "a\u0301中", "ー中a", "aー中", "中", "中 中"]
    arr = pa.array(texts)
    expected = pc.count_substring_regex(arr, PIECE_PATTERN).cast(pa.int32())
    assert approx_count_column(arr).to_pylist() == expected.to_pylist()


def test_detect_batch_matches_py3langid(monkeypatch) -> None:
    import xwin_data.text.language as language

    texts = ["The quick brown fox jumps over the lazy dog, again and again.",
             "Le renard brun rapide saute par-dessus le chien paresseux.",
             "Der schnelle braune Fuchs springt über den faulen Hund.",
             "敏捷的棕色狐狸跳过了懒狗。", "El rápido zorro marrón salta sobre el perro perezoso.",
             "ВЫСТРЕЛ ПРОЗВУЧАЛ В ТИШИНЕ", "12345 !!! ???", "", "short", "Ceci est une phrase assez longue " * 20]
    got = detect_batch(texts)
    for text, label in zip(texts, got):
        has_letters = any(ch.isalpha() for ch in text[:200])
        assert label == (py3langid.classify(text)[0] if has_letters else "und"), text
    monkeypatch.setattr(language, "DETECT_CHUNK", 3)  # texts scored in chunks of similar lengths: the same labels
    assert detect_batch(texts) == got


def test_language_sample_column_matches_its_sql_definition() -> None:
    """The first n non-system messages joined by newlines, cut to n characters (code points), as DuckDB says it."""
    import duckdb

    from xwin_data.text.language import sample_column

    m = lambda role, content: {"role": role, "content": content}  # noqa: E731
    rows = [[m("system", "sys prompt"), m("user", "héllo wörld"), m("assistant", "e\u0301xyz")], [],
            [m("system", "only")], [m("user", c) for c in "abcde"], [m("user", "👍🏽中文字"), m("assistant", "x")],
            [m("user", ""), m(None, "zz"), m("assistant", "q")], [m("user", "x" * 30), m("assistant", "long " * 9)]]
    table = pa.table({"msgs": pa.array(rows, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))})
    sql = ("SELECT left(array_to_string(list_transform(list_filter(msgs, lambda x: x.role <> 'system')[1:{n}], "
           "lambda x: x.content), chr(10)), {chars}) FROM t")
    con = duckdb.connect()
    con.register("t", table)
    for n, chars in [(4, 5), (2, 12), (4, 400)]:
        expected = [r[0] for r in con.execute(sql.format(n=n, chars=chars)).fetchall()]
        assert sample_column(table.column("msgs"), n, chars).to_pylist() == expected, (n, chars)


def test_disabled_near_dedup_publishes_its_input_unchanged_and_validated(tmp_path) -> None:
    import json

    import xwin_data

    rows = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"question {i}"},
                                               {"from": "gpt", "value": "the same answer"}]} for i in range(5)]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "r.yaml").write_text(
        "name: passthrough\nstages:\n"
        "  - id: raw\n    op: read_conversations\n    params:\n      path: ${recipe_dir}/in.jsonl\n"
        "  - {id: near, op: dedup_near, inputs: [raw], params: {enabled: false}}\n")
    xwin_data.build(tmp_path / "r.yaml", tmp_path / "cat", show_progress=False)
    con = xwin_data.connect(tmp_path / "cat")
    assert con.execute("SELECT count(*) FROM near").fetchone()[0] == 5
    assert con.execute("SELECT count(*) FROM (SELECT * FROM near EXCEPT SELECT * FROM raw)").fetchone()[0] == 0
    assert con.execute("SELECT success FROM validations WHERE table_name = 'near'").fetchall() == [(True,)]


def test_conversation_text_and_its_keys_match_their_sql_definition() -> None:
    import hashlib

    import duckdb

    from xwin_data.ops.dedup.sharegpt import CONVERSATION_SQL, conversation_text, md5_keys, normalise_column

    rng = random.Random(3)
    roles = ["user", "assistant", "system", None]
    rows = [[], None, [None], [{"role": None, "content": "z"}], [{"role": "user", "content": None}]]
    for _ in range(3000):
        rows.append(None if rng.random() < 0.02 else [
            None if rng.random() < 0.02 else {"role": rng.choice(roles), "content": None if rng.random() < 0.03 else
                                              "".join(rng.choice(CHARS) for _ in range(rng.randint(0, 30)))}
            for _ in range(rng.randint(0, 5))])
    messages = pa.array(rows, type=pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
    convs = pa.table({"messages": messages})  # noqa: F841 - read by DuckDB below
    con = duckdb.connect()
    expected = [r[0] for r in con.execute(f"SELECT {CONVERSATION_SQL} FROM convs").fetchall()]
    assert conversation_text(messages).to_pylist() == expected
    assert conversation_text(messages.slice(7, 2000)).to_pylist() == expected[7:2007]  # a sliced array too
    norm = normalise_column(conversation_text(messages))
    digests = [bytes(k) for k in md5_keys(norm).to_pylist()]
    assert digests == [hashlib.md5((t or "").encode()).digest() for t in norm.to_pylist()]


def test_derived_arrays_are_stored_once_and_mapped_after(tmp_path, monkeypatch) -> None:
    import numpy as np

    from xwin_data.text.derived import cached_arrays

    calls = []

    def derive():
        calls.append(1)
        return {"a": np.arange(10, dtype=np.int32), "b": np.array(["en", "zh"])}

    monkeypatch.setenv("XWIN_DATA_HOME", str(tmp_path / "home"))
    first = cached_arrays("thing", {"lib": "1.0"}, derive)
    again = cached_arrays("thing", {"lib": "1.0"}, derive)
    assert len(calls) == 1 and isinstance(again["a"].base, np.memmap)  # mapped from the stored file
    assert again["a"].tolist() == first["a"].tolist() and again["b"].tolist() == ["en", "zh"]
    cached_arrays("thing", {"lib": "2.0"}, derive)  # what it depends on changed: derived again
    assert len(calls) == 2

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XWIN_DATA_HOME", str(tmp_path / "file"))  # cannot be a folder: derived, not stored
    assert cached_arrays("thing", {"lib": "1.0"}, derive)["a"].tolist() == list(range(10)) and len(calls) == 3
