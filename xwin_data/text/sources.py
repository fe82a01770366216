"""Stream records out of conversation files: JSONL, JSON (an array, streamed, or one object), Parquet, and
Hugging Face `datasets` (a saved folder, a local data folder or a hub id). Each item is `(position, record)`,
or `(position, Unreadable(reason, detail))` for a line or element that is not a record, so the reader can keep
going; memory stays bounded by one batch (or one array element) at a time.
"""
from __future__ import annotations

import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

FILE_TYPES = ("auto", "jsonl", "json", "parquet", "hf")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SURROGATE = re.compile("[\udc80-\udcff]")
CHUNK = 1 << 20
MAX_ELEMENT = 256 << 20


@dataclass
class Unreadable:
    reason: str
    detail: str


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def is_hub_id(path: str) -> bool:
    return not Path(path).exists() and bool(_HUB_ID.match(path))


def detect_file_type(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        return "hf"
    if not p.exists():
        return "hf" if is_hub_id(path) else "missing"
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last == ".parquet":
        return "parquet"
    if last in (".jsonl", ".ndjson"):
        return "jsonl"
    with _open_binary(p) as fh:
        head = fh.read(4096).lstrip()
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        first = head.split(b"\n", 1)[0]
        try:
            json.loads(first)
            return "jsonl"
        except ValueError:
            return "json"  # one pretty-printed object
    return "jsonl"


def iter_records(path: str, file_type: str = "auto", split: str = "train") -> Iterator[tuple[int, Any]]:
    kind = detect_file_type(path) if file_type == "auto" else file_type
    if kind == "jsonl":
        yield from _iter_jsonl(Path(path))
    elif kind == "json":
        yield from _iter_json(Path(path))
    elif kind == "parquet":
        yield from _iter_parquet(Path(path))
    elif kind == "hf":
        yield from _iter_hf(path, split)
    else:
        raise FileNotFoundError(f"input file not found: {path}")


def _loads():
    try:
        import orjson

        return orjson.loads
    except ImportError:  # pragma: no cover - orjson is optional
        return json.loads


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_binary(path) as fh:
        yield from _parse_lines(enumerate(fh, 1))


def _parse_lines(numbered: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, Any]]:
    loads = _loads()
    for lineno, raw in numbered:
        if not raw.strip():
            continue
        try:
            yield lineno, loads(raw)
        except ValueError as err:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as uerr:
                yield lineno, Unreadable("invalid_utf8", f"{uerr}: {raw[:200]!r}")
                continue
            yield lineno, Unreadable("broken_json", f"{err}: {raw[:200].decode('utf-8', 'replace')}")


def jsonl_blocks(path: str, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """A JSONL file as blocks of whole lines, about `block_bytes` each, with the number of each block's first line:
    the unit of work when many processes parse one file."""
    lineno = 1
    with _open_binary(Path(path)) as fh:
        while True:
            block = fh.read(block_bytes)
            if not block:
                return
            if not block.endswith(b"\n"):
                block += fh.readline()
            yield lineno, block
            lineno += block.count(b"\n")


def iter_jsonl_block(block: bytes, first_lineno: int) -> Iterator[tuple[int, Any]]:
    """The records of one block from `jsonl_blocks`, numbered as `iter_records` numbers a JSONL file's lines."""
    lines = block.split(b"\n")
    last = lines.pop()  # empty when the block ends with a newline
    numbered = [(first_lineno + i, line + b"\n") for i, line in enumerate(lines)]
    if last:
        numbered.append((first_lineno + len(lines), last))
    return _parse_lines(numbered)


def _iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSON array streamed element by element (raw_decode over a sliding buffer), or a single object."""
    decoder = json.JSONDecoder()
    with _open_binary(path) as bfh:
        fh = io.TextIOWrapper(bfh, encoding="utf-8", errors="surrogateescape")
        buf, pos, eof, dirty = "", 0, False, False

        def fill(n: int) -> bool:
            nonlocal buf, pos, eof, dirty
            chunk = fh.read(n)
            if not chunk:
                eof = True
                return False
            dirty = dirty or bool(_SURROGATE.search(chunk))
            buf = buf[pos:] + chunk
            pos = 0
            return True

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill(CHUNK):
                    return

        fill(CHUNK)
        skip_ws()
        if pos >= len(buf):
            return
        if buf[pos] == "{":  # one object: the whole file is one record
            while fill(CHUNK):
                pass
            try:
                obj, _ = decoder.raw_decode(buf, pos)
            except ValueError as err:
                yield 0, Unreadable("broken_json", f"{err}")
                return
            yield (0, Unreadable("invalid_utf8", "file has bytes that are not UTF-8")) if dirty else (0, obj)
            return
        if buf[pos] != "[":
            yield 0, Unreadable("broken_json", f"a JSON file must hold an array or an object, starts with {buf[pos:pos + 40]!r}")
            return
        pos += 1
        index = 0
        while True:
            skip_ws()
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
                skip_ws()
            if pos >= len(buf):
                yield index, Unreadable("broken_json", "the array is not closed (truncated file?)")
                return
            if buf[pos] == "]":
                return
            want = CHUNK
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except ValueError as err:
                    if eof or len(buf) - pos > MAX_ELEMENT or not fill(want):
                        yield index, Unreadable("broken_json", f"element {index}: {err}; the rest of the array is unreadable")
                        return
                    want *= 2
            if dirty and _SURROGATE.search(buf, pos, end):
                yield index, Unreadable("invalid_utf8", f"element {index} has bytes that are not UTF-8")
            else:
                yield index, obj
            pos = end
            index += 1
            if pos > CHUNK and pos > len(buf) // 2:
                buf, pos = buf[pos:], 0


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        for rec in batch.to_pylist():
            yield index, rec
            index += 1


def _iter_hf(path: str, split: str) -> Iterator[tuple[int, Any]]:
    import datasets

    p = Path(path)
    try:
        if p.is_dir() and any((p / name).exists() for name in ("state.json", "dataset_dict.json", "dataset_info.json")) \
                and not any(p.glob("*.py")):
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.load_dataset(path, split=split)
    except Exception as err:  # noqa: BLE001 - offline hub ids and bad folders: one clear message
        raise RuntimeError(f"cannot load Hugging Face dataset {path!r} (split {split!r}): {type(err).__name__}: {err}"
                           + (" — the hub is unreachable offline; point `path` at a local copy" if is_hub_id(path) else "")
                           ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise RuntimeError(f"dataset {path!r} has no split {split!r} (splits: {', '.join(ds)})")
        ds = ds[split]
    index = 0
    for batch in ds.with_format("arrow").iter(batch_size=10_000):
        for rec in batch.to_pylist():
            yield index, rec
            index += 1
