"""A generated corpus of malformed conversation files, with what each item must become: for the reader's fuzz test
(tests/test_reader_fuzz.py) and the longer sweep (scripts/fuzz_readers.py).

Every record has the identities it may surface under: its own id (or `id~position` when the id repeats) where the
record can be parsed, or `shard:position` where it cannot. A file the reader cannot read at all, or the lost rest of
a truncated one, surfaces as one drop whose id is the shard's name. `check` compares a build's kept ids and drop ids
with that: every record accounted for exactly once, nothing unexplained.
"""
from __future__ import annotations

import gzip
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq


def _sg(i: str, *turns: tuple[Any, Any], **extra) -> dict:
    return {"id": i, "conversations": [{"from": r, "value": v} for r, v in turns], **extra}


GOOD_Q, GOOD_A = "How do I sort a list in Python?", "Use sorted(xs) or xs.sort()."

# Each kind makes one record (a JSON-able value, or raw bytes for a JSONL line) from its id.
RECORD_KINDS: dict[str, Callable[[str, random.Random], Any]] = {
    "good_sharegpt": lambda i, r: _sg(i, ("human", f"{GOOD_Q} {r.random()}"), ("gpt", GOOD_A)),
    "good_openai": lambda i, r: {"id": i, "messages": [{"role": "user", "content": f"q {r.random()}"},
                                                       {"role": "assistant", "content": "a"}]},
    "good_alpaca": lambda i, r: {"id": i, "instruction": f"Say {r.random()}", "input": "", "output": "ok"},
    "good_system_multi_turn": lambda i, r: _sg(i, ("system", "Be brief."), ("human", "hi"), ("gpt", "hello"),
                                               ("human", "more?"), ("gpt", "no")),
    # nested deeper than Python's json and repr recurse (written as text: json.dumps cannot either)
    "deep_content": lambda i, r: b'{"id": "%s", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", '
                                 b'"value": %s}]}' % (i.encode(), _nest(1_200)),
    "deep_extra_field": lambda i, r: b'{"id": "%s", "conversations": [{"from": "human", "value": "q"}, {"from": '
                                     b'"gpt", "value": "a"}], "meta": %s}' % (i.encode(), _nest(3_000)),
    "deep_role": lambda i, r: b'{"id": "%s", "messages": [{"role": %s, "content": "q"}]}' % (i.encode(),
                                                                                             _nest(1_500)),
    "lone_surrogate_content": lambda i, r: _sg(i, ("human", "q \ud800 x"), ("gpt", "a")),
    "lone_surrogate_id": lambda i, r: _sg(i + "\udc80", ("human", "q"), ("gpt", "a")),
    "lone_surrogate_role": lambda i, r: {"id": i, "messages": [{"role": "\ud83d", "content": "q"}]},
    "nul_in_content": lambda i, r: _sg(i, ("human", "q\x00q"), ("gpt", "a\x00")),
    "huge_content": lambda i, r: _sg(i, ("human", "q"), ("gpt", "x" * 300_000)),
    "long_id": lambda i, r: _sg(i + "L" * 250, ("human", "q"), ("gpt", "a")),
    "int_role": lambda i, r: _sg(i, (1, "q"), ("gpt", "a")),
    "null_role": lambda i, r: _sg(i, (None, "q"), ("gpt", "a")),
    "list_role": lambda i, r: {"id": i, "messages": [{"role": ["user"], "content": "q"},
                                                     {"role": "assistant", "content": "a"}]},
    "dict_role": lambda i, r: _sg(i, ({"x": 1}, "q"), ("gpt", "a")),
    "int_content": lambda i, r: _sg(i, ("human", 5), ("gpt", "a")),
    "null_content": lambda i, r: _sg(i, ("human", None), ("gpt", "a")),
    "image_part": lambda i, r: {"id": i, "messages": [{"role": "user", "content": [{"type": "image_url"}]},
                                                      {"role": "assistant", "content": "a"}]},
    "text_parts": lambda i, r: {"id": i, "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                                                      {"role": "assistant", "content": "a"}]},
    "conversations_string": lambda i, r: {"id": i, "conversations": "human: hi"},
    "conversations_dict": lambda i, r: {"id": i, "conversations": {"from": "human", "value": "hi"}},
    "empty_conversation": lambda i, r: {"id": i, "conversations": []},
    "turn_is_string": lambda i, r: {"id": i, "conversations": ["hi", "hello"]},
    "no_answer": lambda i, r: _sg(i, ("human", "only a question")),
    "two_users": lambda i, r: _sg(i, ("human", "a"), ("human", "b"), ("gpt", "c")),
    "empty_text": lambda i, r: _sg(i, ("human", "   "), ("gpt", "a")),
    "system_in_middle": lambda i, r: _sg(i, ("human", "a"), ("system", "s"), ("gpt", "c")),
    "unknown_shape": lambda i, r: {"id": i, "text": "plain text record"},
    "number_id": lambda i, r: {**_sg("", ("human", "q"), ("gpt", "a")), "id": int(i.split("r")[-1]) + 10**9},
    "unicode_text": lambda i, r: _sg(i, ("human", "¿Qué? 这是 🙂 \u200b"), ("gpt", "\u202eRTL")),
    "top_level_list": lambda i, r: [i, "not an object"],
    "top_level_number": lambda i, r: 42,
    "top_level_null": lambda i, r: None,
    "top_level_string": lambda i, r: "just a string",
    "history_not_list": lambda i, r: {"id": i, "instruction": "x", "output": "y", "history": "nope"},
    # raw JSONL lines (bytes): the parser itself must cope
    "truncated_line": lambda i, r: json.dumps(_sg(i, ("human", "q"), ("gpt", "a"))).encode()[:25],
    "trailing_garbage": lambda i, r: json.dumps(_sg(i, ("human", "q"), ("gpt", "a"))).encode() + b" }}",
    "invalid_utf8": lambda i, r: json.dumps(_sg(i, ("human", "q"), ("gpt", "a"))).encode().replace(b'"q"', b'"\xff\xfe"'),
    "nul_byte_line": lambda i, r: b"\x00" + json.dumps(_sg(i, ("human", "q"), ("gpt", "a"))).encode(),
    "nan_literal": lambda i, r: json.dumps(_sg(i, ("human", "q"), ("gpt", "a"))).encode()[:-1] + b', "x": NaN}',
    "escaped_surrogate_line": lambda i, r: json.dumps(_sg(i, ("human", "q \ud800"), ("gpt", "a"))).encode(),
    "deep_line": lambda i, r: b'{"id": "%s", "conversations": %s}' % (i.encode(), _nest(5_000)),
}
VALID_JSON_TEXT = {"deep_content", "deep_extra_field", "deep_role", "deep_line"}  # bytes that are still JSON
RAW_KINDS = VALID_JSON_TEXT | {"truncated_line", "trailing_garbage", "invalid_utf8", "nul_byte_line", "nan_literal",
                               "escaped_surrogate_line"}


def _nest(depth: int) -> bytes:
    return b"[" * depth + b'"deep"' + b"]" * depth


@dataclass
class Expect:
    """What one shard must yield: per record its acceptable identities; `cut` when the shard may end early (its
    records after an unknown point are the one drop named after the shard); `whole` when the shard is one drop."""

    name: str
    records: list[tuple[str, ...]] = field(default_factory=list)
    cut: bool = False
    whole: bool = False


@dataclass
class Corpus:
    folder: Path
    shards: list[Expect]
    records: int  # records written, the unreadable ones included
    kinds: set[str]


def _line(record: Any) -> bytes:
    if isinstance(record, bytes):
        return record
    return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _identity(kind: str, rid: str, record: Any, name: str, position: int, seen: set[str]) -> tuple[str, ...]:
    """The ids a record may surface under; a good record's id is remembered, so a repeat is `id~position`."""
    own: str | None = rid
    if isinstance(record, dict) and isinstance(record.get("id"), (str, int)) and record.get("id") != "":
        own = str(record["id"])
    elif not isinstance(record, (dict, bytes)):
        own = None
    ids = [f"{name}:{position}"]
    if own is not None:
        own = own[:300] + "…" if len(own) > 300 else own
        own = own.encode("utf-8", "backslashreplace").decode("utf-8")
        good = kind.startswith("good") or kind == "duplicate_id"
        ids.append(f"{own}~{position}" if good and own in seen else own)
        if good:
            seen.add(own)
    return tuple(ids)


def make_corpus(folder: Path, n_records: int = 10_000, seed: int = 0) -> Corpus:
    """Shards of every container kind in `folder`, about `n_records` records in all, about a third of them good."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = list(RECORD_KINDS)
    good = [k for k in kinds if k.startswith("good")]
    shards: list[Expect] = []
    counter = iter(range(10**9))
    seen: set[str] = set()
    used: set[str] = set()
    total = 0

    def records(n: int, as_text_only: bool = False, huge: bool = True) -> list[tuple[str, str, Any]]:
        out = []
        for _ in range(n):
            kind = rng.choice(good) if rng.random() < 0.35 else rng.choice(kinds)
            if (kind == "huge_content" and (not huge or rng.random() > 0.05)) or \
                    (as_text_only and kind in RAW_KINDS - VALID_JSON_TEXT):
                kind = "good_sharegpt"
            rid = f"s{len(shards)}r{next(counter)}"
            out.append((kind, rid, RECORD_KINDS[kind](rid, rng)))
        first = next((r for r in out if r[0].startswith("good")), None)
        if first is not None:
            out.append(("duplicate_id", first[1], dict(first[2])))  # a repeated id is kept as id~position
        used.update(k for k, _, _ in out)
        return out

    def text(rec: Any) -> bytes:
        return rec if isinstance(rec, bytes) else json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass")

    def jsonl_bytes(recs, crlf: bool = False, bom: bool = False) -> tuple[bytes, list[int]]:
        lines, positions = [], []
        for k, (_, _, rec) in enumerate(recs):
            lines.append(text(rec))
            positions.append(len(lines))
            if k % 50 == 7:
                lines.append(b"")  # blank lines are not records
        sep = b"\r\n" if crlf else b"\n"
        data = sep.join(lines) + sep
        return (b"\xef\xbb\xbf" + data if bom else data), positions

    def expect(name: str, recs, positions, **kw) -> Expect:
        exp = Expect(name, **kw)
        for (kind, rid, rec), pos in zip(recs, positions):
            exp.records.append(_identity(kind, rid, rec, name, pos, seen))
        return exp

    per = max(n_records // 14, 40)
    # JSONL: plain, gzipped, multi-member gzip, CRLF with a BOM, .ndjson, in a subfolder
    for name, how in (("a.jsonl", "plain"), ("b.jsonl.gz", "gzip"), ("c.jsonl.gz", "members"),
                      ("d.ndjson", "crlf_bom"), ("sub/e.jsonl", "plain"), ("f2.jsonl", "plain"),
                      ("f3.jsonl", "plain"), ("f4.jsonl", "plain"), ("f5.jsonl", "plain")):
        recs = records(per)
        data, positions = jsonl_bytes(recs, crlf=how == "crlf_bom", bom=how == "crlf_bom")
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if how == "gzip":
            data = gzip.compress(data)
        elif how == "members":
            half = data.index(b"\n", len(data) // 2) + 1
            data = gzip.compress(data[:half]) + gzip.compress(data[half:])
        path.write_bytes(data)
        shards.append(expect(name, recs, positions))
        total += len(recs)
    used.update({"crlf_bom", "multi_member_gzip", "blank_lines"})
    # a truncated gzip: what decompresses is kept, the rest is one drop
    recs = records(per)
    data, positions = jsonl_bytes(recs)
    packed = gzip.compress(data)
    (folder / "g.jsonl.gz").write_bytes(packed[: int(len(packed) * 0.6)])
    shards.append(expect("g.jsonl.gz", recs, positions, cut=True))
    total += len(recs)
    # a file named .gz that is not gzip: one drop for the file
    (folder / "h.jsonl.gz").write_bytes(jsonl_bytes(records(20))[0])
    shards.append(Expect("h.jsonl.gz", whole=True))
    total += 1
    used.update({"truncated_gzip", "fake_gzip"})
    # JSON arrays (Python's json decodes lone surrogates and recurses on nesting), one of them gzipped
    for name in ("i.json", "j.json.gz", "j2.json"):
        recs = records(per, as_text_only=True)
        data = b"[\n" + b",\n".join(text(r) if isinstance(r, bytes) else json.dumps(r).encode()
                                     for _, _, r in recs) + b"\n]\n"
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        shards.append(expect(name, recs, range(len(recs))))
        total += len(recs)
    # a truncated JSON array: the elements before the cut are kept, the broken one and the rest are one drop
    recs = records(per, as_text_only=True, huge=False)
    parts = [text(r) if isinstance(r, bytes) else json.dumps(r).encode() for _, _, r in recs]
    ends, at = [], 1
    for part in parts:
        at += len(part) + 1
        ends.append(at)
    data = b"[" + b",".join(parts) + b"]"
    cut = len(data) // 2
    whole = sum(1 for e in ends if e <= cut)
    (folder / "k.json").write_bytes(data[:cut])
    shards.append(expect("k.json", recs[:whole], range(whole)))
    shards[-1].records.append((f"k.json:{whole}",))
    total += whole + 1
    # one pretty-printed object; a JSON file that is neither an array nor an object
    one = ("good_sharegpt", "one-object", _sg("one-object", ("human", "q"), ("gpt", "a")))
    (folder / "l.json").write_text(json.dumps(one[2], indent=2))
    shards.append(expect("l.json", [one], [0]))
    (folder / "m.json").write_text('"a JSON string, not records"')  # read as one JSONL line that is no object
    shards.append(Expect("m.json", [("m.json:1", "m.json")]))
    total += 2
    used.update({"truncated_json", "single_object", "json_scalar_file"})
    # Parquet: a shard with nulls and odd roles, a truncated one, one that is not Parquet
    rows = []
    for _ in range(per):
        rid = f"s{len(shards)}r{next(counter)}"
        rows.append(("parquet_row", rid, {"id": rid, "conversations": [
            {"from": "human", "value": rng.choice(["q", None, "¿q?"])},
            {"from": rng.choice(["human", "gpt", "7", "USER", ""]), "value": "a"}]}))
    table = pa.Table.from_pylist([r for _, _, r in rows])
    pq.write_table(table, folder / "n.parquet")
    shards.append(expect("n.parquet", rows, range(len(rows))))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    (folder / "o.parquet").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    shards.append(Expect("o.parquet", whole=True))
    (folder / "p.parquet").write_text("not parquet at all")
    shards.append(Expect("p.parquet", whole=True))
    total += len(rows) + 2
    # not a data file; an empty JSONL; an empty array; hidden and marker files are not inputs
    (folder / "notes.txt").write_text("a readme that is not data")
    shards.append(Expect("notes.txt", whole=True))
    (folder / "q.jsonl").write_bytes(b"")
    (folder / "r.json").write_text("[]")
    (folder / ".hidden.jsonl").write_text("garbage that is not an input\n")
    (folder / "_SUCCESS").write_text("")
    total += 1
    used.update({"parquet", "truncated_parquet", "fake_parquet", "not_a_data_file", "empty_file", "empty_array"})
    return Corpus(folder, shards, total, used)


def _shard_of(identity: str, names: list[str]) -> str | None:
    for name in sorted(names, key=len, reverse=True):
        if identity == name or identity.startswith(name + ":"):
            return name
    return None


def check(corpus: Corpus, kept: list[str], dropped: list[str]) -> dict[str, int]:
    """Account for every record: returns counts, raises AssertionError naming the first record that is lost,
    seen twice or unexplained."""
    from collections import Counter

    observed = Counter(kept) + Counter(dropped)
    problems = []
    accounted = 0
    for shard in corpus.shards:
        if shard.whole:
            if observed.pop(shard.name, 0) != 1:
                problems.append(f"{shard.name}: expected one drop for the whole file")
            accounted += 1
            continue
        lost_rest = False
        for k, identities in enumerate(shard.records):
            hits = sum(observed.get(i, 0) for i in identities)
            if hits == 1:
                for i in identities:
                    if observed.get(i):
                        observed[i] -= 1
                accounted += 1
            elif hits == 0 and shard.cut:
                lost_rest = True
                break
            else:
                problems.append(f"{shard.name} record {k} {identities}: seen {hits} times")
        if shard.cut:
            partial = [i for i in observed if observed[i] and i.startswith(shard.name + ":")]
            for i in partial:  # the line the cut went through
                observed[i] -= 1
            if observed.pop(shard.name, 0) != 1 and lost_rest:
                problems.append(f"{shard.name}: the lost rest of a truncated file has no drop")
            accounted += len(partial) + 1
    leftover = {i: n for i, n in observed.items() if n}
    if leftover:
        problems.append(f"unexplained rows: {list(leftover)[:5]}")
    assert not problems, "\n".join(problems[:10])
    return {"accounted": accounted, "kept": len(kept), "dropped": len(dropped)}
