"""Stream records out of conversation files: JSONL, JSON (an array, streamed, or one object), Parquet, any of them
gzipped, a folder or glob of such shards, and Hugging Face `datasets` (a saved folder or a hub id). Each item is
`(position, record)`, or `(position, Unreadable(reason, detail))` for a line, element or rest of a file that is not
a record, so the reader can keep going; memory stays bounded by one batch (or one array element) at a time.

A damaged container does not stop a build (`xwin_data.text.gzip_stream`): a truncated gzip yields what it holds and then one `Unreadable` for the
rest, a file named `.gz` that is not gzip or a Parquet file that cannot be opened is one `Unreadable` for the file.
The pieces many workers read one input in (a row group, an Arrow data file) are in `xwin_data.text.source_units`.
"""
from __future__ import annotations

import glob as globlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from xwin_data.text.gzip_stream import CHUNK, damage, open_binary

FILE_TYPES = ("auto", "jsonl", "json", "parquet", "hf")
DATA_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
HF_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SURROGATE = re.compile("[\udc80-\udcff]")
_GLOB_CHARS = re.compile(r"[*?\[]")
BOM = b"\xef\xbb\xbf"
MAX_ELEMENT = 256 << 20


@dataclass
class Unreadable:
    """What could not be read, and why. `source_id` names it where a position cannot (the rest of a file)."""

    reason: str
    detail: str
    source_id: str | None = None


@dataclass(frozen=True)
class InputFile:
    """One file of an input: its path, the name its drops carry (relative to the input folder) and its kind."""

    path: Path
    name: str
    kind: str  # jsonl | json | parquet | skip (not a data file: one drop row)


def stream_problem(fh, name: str, position: int) -> Unreadable | None:
    """The damage a stream from `open_binary` met, as one drop for the rest of the file."""
    problem = damage(fh)
    if problem is None:
        return None
    return Unreadable(problem[0], f"{name}: {problem[1]}; records from line/element {position} on are lost",
                      source_id=name)


# ------------------------------------------------------------------------------------------------ what to read
def is_hub_id(path: str) -> bool:
    return not Path(path).exists() and not _GLOB_CHARS.search(path) and bool(_HUB_ID.match(path))


def is_saved_dataset(path: Path) -> bool:
    """A folder `datasets` saved (save_to_disk) or one with a loading script: read with `datasets`."""
    return path.is_dir() and (any((path / m).exists() for m in HF_MARKERS) or any(path.glob("*.py")))


def is_sharded(path: str) -> bool:
    """A folder of data files or a glob: read file by file with this project's parsers."""
    p = Path(path)
    if p.is_dir():
        return not is_saved_dataset(p)
    return not p.exists() and bool(_GLOB_CHARS.search(path))


def kind_of_name(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return DATA_SUFFIXES.get(suffixes[-1]) if suffixes else None


def input_files(path: str, file_type: str = "auto") -> list[InputFile]:
    """The files of a folder (recursively) or glob in name order. Hidden files and those starting with `_`
    (`_SUCCESS`, `.crc`) are not data by convention. With `file_type` auto a file goes by its extension and a file
    without a data extension is `skip` (a drop row each); any other `file_type` decides how every file is parsed."""
    p = Path(path)
    if p.is_dir():
        found = [f for f in p.rglob("*") if f.is_file()]
        base = p
    else:
        found = [Path(f) for f in globlib.glob(path, recursive=True) if Path(f).is_file()]
        base = Path(_glob_base(path))
    out = []
    for f in sorted(found, key=lambda x: str(x)):
        rel = f.relative_to(base) if f.is_relative_to(base) else f
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue
        kind = kind_of_name(f)
        if file_type in ("jsonl", "json", "parquet"):
            kind = file_type
        elif kind == "json":
            try:
                kind = detect_file_type(str(f))
            except OSError:
                pass  # reading it fails again and becomes the file's drop row
        out.append(InputFile(f, str(rel), kind or "skip"))
    return out


def _glob_base(pattern: str) -> str:
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        if _GLOB_CHARS.search(part):
            return str(Path(*parts[:i])) if i else "."
    return str(Path(pattern).parent)


def detect_file_type(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        return "hf" if is_saved_dataset(p) else "sharded"
    if not p.exists():
        if _GLOB_CHARS.search(path):
            return "sharded"
        return "hf" if is_hub_id(path) else "missing"
    kind = kind_of_name(p)
    if kind in ("parquet", "jsonl"):
        return kind
    with open_binary(p) as fh:
        head = fh.read(4096)
    head = head[len(BOM):].lstrip() if head.startswith(BOM) else head.lstrip()
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        first = head.split(b"\n", 1)[0]
        try:
            json.loads(first)
            return "jsonl"
        except (ValueError, RecursionError):
            return "json"  # one pretty-printed object
    return "jsonl"


def iter_records(path: str, file_type: str = "auto", split: str = "train", name: str | None = None
                 ) -> Iterator[tuple[int, Any]]:
    """Records of one file (or a saved / hub dataset)."""
    kind = detect_file_type(path) if file_type == "auto" else file_type
    name = name or Path(path).name
    if kind in ("jsonl", "json", "parquet", "skip"):
        yield from _guarded(_iter_file(path, kind, name), name)
    elif kind == "hf":
        yield from _iter_hf(path, split)
    else:
        raise FileNotFoundError(f"input file not found: {path}")


def _guarded(items: Iterator[tuple[int, Any]], name: str) -> Iterator[tuple[int, Any]]:
    """A file that cannot be opened or read on (permissions, a vanished shard) is one drop, not a failed build."""
    position = 0
    try:
        for position, item in items:
            yield position, item
    except OSError as err:
        yield position, Unreadable("unreadable_file", f"{name}: {type(err).__name__}: {err}", source_id=name)


def _iter_file(path: str, kind: str, name: str) -> Iterator[tuple[int, Any]]:
    if kind == "jsonl":
        yield from _iter_jsonl(Path(path), name)
    elif kind == "json":
        yield from _iter_json(Path(path), name)
    elif kind == "parquet":
        yield from _iter_parquet(Path(path), name)
    else:
        yield 0, Unreadable("not_a_data_file", f"{name}: not .jsonl, .ndjson, .json or .parquet (optionally .gz)",
                            source_id=name)


# ------------------------------------------------------------------------------------------------ parsers
def _loads():
    try:
        import orjson

        return orjson.loads
    except ImportError:  # pragma: no cover - orjson is optional
        return json.loads


def _iter_jsonl(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    lineno = 0
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            yield from _parse_lines(((lineno, raw),))
        problem = stream_problem(fh, name, lineno + 1)
    if problem is not None:
        yield lineno + 1, problem


def _parse_lines(numbered: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, Any]]:
    loads = _loads()
    for lineno, raw in numbered:
        if lineno == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        if not raw.strip():
            continue
        try:
            yield lineno, loads(raw)
        except (ValueError, RecursionError) as err:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as uerr:
                yield lineno, Unreadable("invalid_utf8", f"{uerr}: {raw[:200]!r}")
                continue
            text = str(err).lower()
            reason = ("too_deeply_nested" if "recursion" in text or isinstance(err, RecursionError) else
                      "lone_surrogate" if "surrogate" in text else "broken_json")
            yield lineno, Unreadable(reason, f"{err}: {raw[:200].decode('utf-8', 'replace')}")


def jsonl_blocks(path: str, block_bytes: int, name: str | None = None) -> Iterator[tuple[int, bytes | Unreadable]]:
    """A JSONL file as blocks of whole lines, about `block_bytes` each, with the number of each block's first line:
    the unit of work when many processes parse one file. A damaged gzip ends with one `Unreadable` for the rest."""
    lineno = 1
    with open_binary(Path(path)) as fh:
        while True:
            block = fh.read(block_bytes)
            if not block:
                break
            if not block.endswith(b"\n"):
                block += fh.readline()
            yield lineno, block
            lineno += block.count(b"\n")
        problem = stream_problem(fh, name or Path(path).name, lineno)
    if problem is not None:
        yield lineno, problem


def iter_jsonl_block(block: bytes, first_lineno: int) -> Iterator[tuple[int, Any]]:
    """The records of one block from `jsonl_blocks`, numbered as `iter_records` numbers a JSONL file's lines."""
    lines = block.split(b"\n")
    last = lines.pop()  # empty when the block ends with a newline
    numbered = [(first_lineno + i, line + b"\n") for i, line in enumerate(lines)]
    if last:
        numbered.append((first_lineno + len(lines), last))
    return _parse_lines(numbered)


def _value_end(buf: str, pos: int) -> int | None:
    """Where the JSON value at `pos` ends, found without recursion (for values nested too deep to decode);
    None when the buffer ends first."""
    depth, i, n = 0, pos, len(buf)
    while i < n:
        c = buf[i]
        if c == '"':
            i += 1
            while i < n and buf[i] != '"':
                i += 2 if buf[i] == "\\" else 1
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        elif depth == 0 and c in ",":
            return i
        i += 1
    return None


def _iter_json(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    """A JSON array streamed element by element (raw_decode over a sliding buffer), or a single object."""
    decoder = json.JSONDecoder()
    with open_binary(path) as bfh:
        fh = io.TextIOWrapper(bfh, encoding="utf-8-sig", errors="surrogateescape")
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

        def decode(index: int) -> tuple[Any, int] | Unreadable | None:
            """The element at `pos` and where it ends; Unreadable when it cannot be decoded; None at a break."""
            want = CHUNK
            while True:
                try:
                    return decoder.raw_decode(buf, pos)
                except RecursionError:
                    while (end := _value_end(buf, pos)) is None and not eof and fill(want):
                        pass
                    if end is None:
                        return None
                    return Unreadable("too_deeply_nested", f"element {index} is nested deeper than Python can "
                                      f"decode: {buf[pos:pos + 60]!r}…"), end
                except ValueError as err:
                    if eof or len(buf) - pos > MAX_ELEMENT or not fill(want):
                        return Unreadable("broken_json", f"element {index}: {err}; the rest of the array is "
                                          "unreadable")
                    want *= 2

        fill(CHUNK)
        skip_ws()
        if pos < len(buf) and buf[pos] == "{":  # one object: the whole file is one record
            while fill(CHUNK):
                pass
            got = decode(0)
            if isinstance(got, Unreadable) or got is None:
                yield 0, got or Unreadable("broken_json", "the object is not closed (truncated file?)")
            elif isinstance(got[0], Unreadable):
                yield 0, got[0]
            else:
                yield (0, Unreadable("invalid_utf8", "file has bytes that are not UTF-8")) if dirty else (0, got[0])
        elif pos < len(buf) and buf[pos] != "[":
            yield 0, Unreadable("broken_json", f"{name}: a JSON file must hold an array or an object, starts with "
                                f"{buf[pos:pos + 40]!r}", source_id=name)
        elif pos < len(buf):
            pos += 1
            index = 0
            while True:
                skip_ws()
                if pos < len(buf) and buf[pos] == ",":
                    pos += 1
                    skip_ws()
                if pos >= len(buf):
                    yield index, stream_problem(bfh, name, index) or Unreadable(
                        "broken_json", f"{name}: the array is not closed after element {index - 1} (truncated "
                        "file?)")
                    return
                if buf[pos] == "]":
                    break
                got = decode(index)
                if got is None or isinstance(got, Unreadable):
                    yield index, stream_problem(bfh, name, index) or Unreadable(
                        "broken_json", f"{name}: element {index} and the rest of the array are unreadable: "
                        f"{got.detail if got else 'truncated'}")
                    return
                obj, end = got
                if isinstance(obj, Unreadable):
                    yield index, obj
                elif dirty and _SURROGATE.search(buf, pos, end):
                    yield index, Unreadable("invalid_utf8", f"element {index} has bytes that are not UTF-8")
                else:
                    yield index, obj
                pos = end
                index += 1
                if pos > CHUNK and pos > len(buf) // 2:
                    buf, pos = buf[pos:], 0
        problem = stream_problem(bfh, name, 0)
    if problem is not None:
        yield 0, problem


def _iter_parquet(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa

    source: Any = path
    if path.suffix == ".gz":
        try:
            with open_binary(path) as fh:
                data = fh.read()
                problem = stream_problem(fh, name, 0)
        except (OSError, pa.ArrowException, ValueError) as err:
            yield 0, parquet_failure(name, "not a readable Parquet file", 0, err)
            return
        if problem is not None:
            yield 0, problem
            return
        source = pa.BufferReader(data)
    yield from parquet_records(source, name, "not a readable Parquet file")


def parquet_records(source: Any, name: str, what: str, first: int = 0, row_groups: list[int] | None = None
                    ) -> Iterator[tuple[int, Any]]:
    """The rows of a Parquet file (or of some of its row groups), numbered from `first`; what cannot be read ends
    the stream as one drop for the rest, which `what` names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = first
    try:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=10_000, row_groups=row_groups):
            for rec in batch.to_pylist():
                yield index, rec
                index += 1
    except (OSError, pa.ArrowException, ValueError) as err:
        yield index, parquet_failure(name, what, index, err)


def parquet_failure(name: str, what: str, index: int, err: BaseException) -> Unreadable:
    reason = "unreadable_file" if index == 0 else "truncated_file"
    return Unreadable(reason, f"{name}: {what} from row {index} on: {type(err).__name__}: {err}", source_id=name)


def saved_to_disk(path: Path) -> bool:
    """A folder written by `save_to_disk` (no loading script): `datasets.load_from_disk` reads it."""
    return path.is_dir() and any((path / m).exists() for m in HF_MARKERS) and not any(path.glob("*.py"))


def load_hf(path: str, split: str):
    """The split of a saved dataset folder (`save_to_disk`), a folder with a loading script, or a hub id."""
    import datasets

    p = Path(path)
    try:
        if saved_to_disk(p):
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
    return ds


def _iter_hf(path: str, split: str) -> Iterator[tuple[int, Any]]:
    ds = load_hf(path, split)
    index = 0
    for batch in ds.with_format("arrow").iter(batch_size=10_000):
        for rec in batch.to_pylist():
            yield index, rec
            index += 1
