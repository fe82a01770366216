"""Readers: conversation files (ShareGPT, OpenAI `messages`, Alpaca; JSONL, JSON, Parquet, HF datasets) to the
canonical conversation table. Bad records are drops with the reason and offending value, never a crash."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from xwin_data.conversation import MESSAGES_TYPE
from xwin_data.core.fingerprint import path_fingerprint
from xwin_data.core.yaml_lines import RecipeError
from xwin_data.ops.base import Op, Params, register

RAW_SCHEMA = pa.schema([("id", pa.string()), ("messages", MESSAGES_TYPE), ("source", pa.string()),
                        ("model", pa.string())])
ID_FIELDS = ("id", "conversation_id", "question_id", "uid")
BATCH = 20_000
BLOCK_BYTES = 16 << 20  # JSONL parsed in worker processes a block of about this many bytes at a time


class ReadParams(Params):
    path: str = Field(description="input file, folder or glob of shards (JSONL, JSON, Parquet, each optionally .gz), "
                                  "a saved HF dataset folder or a hub id")
    format: Literal["auto", "sharegpt", "openai", "alpaca"] = Field(
        "auto", description="record shape; auto looks at each record's keys (conversations / messages / instruction)")
    file_type: Literal["auto", "jsonl", "json", "parquet", "hf"] = Field(
        "auto", description="container; auto goes by extension and first bytes, file by file in a folder or glob "
                            "(read in parallel); a saved HF dataset folder or a hub id is hf")
    split: str = Field("train", description="split of a Hugging Face dataset")
    id_field: str | None = Field(None, description=f"record id field (default: the first of {', '.join(ID_FIELDS)})")
    model_field: str | None = Field(None, description="field naming the answering model (default: model, model_id)")
    source: str | None = Field(None, description="value of the `source` column (default: the file name)")
    limit: int | None = Field(None, ge=1, description="read at most this many records")
    on_bad_turn: Literal["truncate", "drop_conversation"] = Field(
        "truncate", description="a turn empty or only whitespace / zero-width characters: truncate keeps the turns "
                                "before it when they end on an assistant turn (the cut is a drops row, unit "
                                "cuts); drop_conversation drops the whole conversation")


@register
class ReadConversations(Op):
    """Read conversations from a file into id, messages, source, model; malformed records go to drops."""

    name = "read_conversations"
    adds = set(RAW_SCHEMA.names)
    Params = ReadParams
    schema = "conversations"
    min_inputs = max_inputs = 0
    version = "1"
    summary = "ShareGPT / OpenAI messages / Alpaca in JSONL, JSON, Parquet or HF datasets → canonical messages"

    def external_fingerprint(self, params: ReadParams) -> dict:
        from xwin_data.text.sources import input_files, is_hub_id, is_sharded

        p = Path(params.path)
        if p.exists():
            return {"file": path_fingerprint(p)}
        if is_sharded(params.path):
            files = input_files(params.path, params.file_type)
            if not files:
                raise RecipeError(f"path: no input files match {params.path}")
            return {"files": [(f.name, path_fingerprint(f.path)) for f in files]}
        if params.file_type in ("auto", "hf") and is_hub_id(params.path):
            return {"hub": params.path}
        raise RecipeError(f"path: input file not found: {params.path}")

    def run(self, ctx, params: ReadParams) -> None:
        from xwin_data.text.conversation_rows import RowOptions
        from xwin_data.text.sources import InputFile, detect_file_type, input_files, is_sharded

        source = params.source or Path(params.path).name
        options = RowOptions(params.format, params.model_field,
                             (params.id_field,) if params.id_field else ID_FIELDS, source.split(".")[0] or "record",
                             params.on_bad_turn)
        files: list[InputFile] | None
        if params.file_type != "hf" and is_sharded(params.path):
            files = input_files(params.path, params.file_type)  # fallback ids and file drops name the shard
            ctx.stats["files"] = len(files)
        else:
            kind = detect_file_type(params.path) if params.file_type == "auto" else params.file_type
            files = None if kind == "hf" else [InputFile(Path(params.path), Path(params.path).name, kind)]
        ids = _Ids(ctx)
        with ctx.track(f"reading {source}", None, "records") as bar:
            if files is not None and not params.limit and _worth_forking(files):
                _read_in_workers(ctx, files, options, source, ids, bar, sharded=ctx.stats.get("files") is not None)
            else:
                _read_here(ctx, params, files, options, source, ids, bar)
        ctx.stats.update(ids.stats)


class _Ids:
    """Bookkeeping of rows in file order: ids made unique (`id~position` for a repeat), drops recorded, counts."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.seen: set[str] = set()
        self.stats = {"records": 0, "renamed_duplicate_ids": 0, "truncated_at_bad_turn": 0}

    def take(self, ids: list[str], positions: list[int], drops: list, records: int) -> tuple[list[str], int]:
        from xwin_data.text.conversation_rows import unique_ids

        self.stats["records"] += records
        for rid, reason, detail, *unit in drops:
            self.ctx.drop(rid, reason, detail, unit=unit[0] if unit else None)
            if unit:
                self.stats["truncated_at_bad_turn"] += 1
        ids, renamed = unique_ids(ids, positions, self.seen)
        self.stats["renamed_duplicate_ids"] += renamed
        return ids, renamed


def _raw_table(table: pa.Table, source: str) -> pa.Table:
    table = table.append_column("source", pa.array([source] * table.num_rows, pa.string()))
    return table.select(RAW_SCHEMA.names).cast(RAW_SCHEMA)


def _file_options(options, file, sharded: bool):
    """Per file of a folder, fallback ids are `shard name:position`, so a drop says which shard it came from."""
    from dataclasses import replace

    return replace(options, stem=file.name) if sharded else options


def _read_here(ctx, params: ReadParams, files, options, source: str, ids: _Ids, bar) -> None:
    from xwin_data.text.conversation_rows import RowBuilder
    from xwin_data.text.sources import iter_records

    builder = RowBuilder(options)
    sharded = ctx.stats.get("files") is not None
    inputs = [(None, iter_records(params.path, "hf", params.split))] if files is None else \
        [(f, iter_records(str(f.path), f.kind, name=f.name)) for f in files]
    with ctx.writer(RAW_SCHEMA) as out:
        def flush() -> None:
            rows = builder.take()
            unique, renamed = ids.take(rows.table.column("id").to_pylist(), rows.positions, rows.drops, rows.records)
            table = rows.table.set_column(0, "id", pa.array(unique, pa.string())) if renamed else rows.table
            if table.num_rows:
                out.write(_raw_table(table, source))
                bar.advance(table.num_rows)

        for file, records in inputs:
            if file is not None:
                builder.stem = _file_options(options, file, sharded).stem
            for position, record in records:
                if builder.add(position, record) and params.limit and len(ids.seen) + len(builder) >= params.limit:
                    break
                if len(builder) >= BATCH:
                    flush()
            else:
                continue
            break
        flush()


def _worth_forking(files) -> bool:
    from xwin_data.core.workers import available_workers

    if available_workers() < 2:
        return False
    total = 0
    for f in files:
        try:
            total += f.path.stat().st_size
        except OSError:
            continue
    return total > 4 * BLOCK_BYTES


def parse_to_part(block: bytes, first_line: int, options, source: str, path: str) -> tuple[list, list, list, int]:
    """In a worker: one block of JSONL lines converted and written as a Parquet part; ids, positions, drops and the
    number of records go back."""
    import pyarrow.parquet as pq

    from xwin_data.text.conversation_rows import parse_jsonl_block

    rows = parse_jsonl_block(block, first_line, options)
    if rows.table.num_rows:
        pq.write_table(_raw_table(rows.table, source), path, compression="zstd")
    return rows.table.column("id").to_pylist(), rows.positions, rows.drops, rows.records


def parse_file_to_part(file, options, source: str, path: str) -> tuple[list, list, list, int]:
    """In a worker: one whole JSON or Parquet shard converted and written as a Parquet part, a batch at a time."""
    import pyarrow.parquet as pq

    from xwin_data.text.conversation_rows import RowBuilder
    from xwin_data.text.sources import iter_records

    builder = RowBuilder(options)
    ids, positions, drops, records = [], [], [], 0
    writer = None

    def flush() -> None:
        nonlocal writer, records
        rows = builder.take()
        ids.extend(rows.table.column("id").to_pylist())
        positions.extend(rows.positions)
        drops.extend(rows.drops)
        records += rows.records
        if rows.table.num_rows:
            writer = writer or pq.ParquetWriter(path, RAW_SCHEMA, compression="zstd")
            writer.write_table(_raw_table(rows.table, source))

    for position, record in iter_records(str(file.path), file.kind, name=file.name):
        builder.add(position, record)
        if len(builder) >= BATCH:
            flush()
    flush()
    if writer is not None:
        writer.close()
    return ids, positions, drops, records


def _read_in_workers(ctx, files, options, source: str, ids: _Ids, bar, sharded: bool) -> None:
    """JSONL files as blocks of lines, other shards whole, parsed, converted and written by worker processes; ids
    are made unique here, in input order (a part with a repeated id, which is rare, is rewritten with the new
    ids). A damaged gzip's lost rest, found while cutting blocks here, is a drop in its place in that order."""
    from collections import deque
    from concurrent.futures import Future

    import pyarrow.parquet as pq

    from xwin_data.text.conversation_rows import parse_jsonl_block  # noqa: F401 - imported before the fork
    from xwin_data.text.sources import Unreadable, jsonl_blocks
    from xwin_data.core.workers import available_workers, pool

    workers = available_workers()
    ctx.stats["read_workers"] = workers
    pending: deque = deque()

    def finish_one() -> None:
        part, future = pending.popleft()
        unique, renamed = ids.take(*future.result())
        if renamed:
            pq.write_table(pq.read_table(part).set_column(0, "id", pa.array(unique, pa.string())), part,
                           compression="zstd")
        ctx.add_rows(len(unique))
        bar.advance(len(unique))

    def tasks():
        for file in files:
            file_options = _file_options(options, file, sharded)
            if file.kind != "jsonl":
                yield parse_file_to_part, (file, file_options, source)
                continue
            for first_line, block in jsonl_blocks(str(file.path), BLOCK_BYTES, file.name):
                if isinstance(block, Unreadable):
                    yield None, ([], [], [(block.source_id, block.reason, block.detail)], 1)
                else:
                    yield parse_to_part, (block, first_line, file_options, source)

    with pool(workers) as executor:
        parts = ctx.part_paths()
        for fn, args in tasks():
            if fn is None:
                done: Future = Future()
                done.set_result(args)
                pending.append((None, done))
            else:
                part = str(next(parts))
                pending.append((part, executor.submit(fn, *args, part)))
            while len(pending) >= 2 * workers:
                finish_one()
        while pending:
            finish_one()
    if not ctx.rows_written():
        with ctx.writer(RAW_SCHEMA):  # an empty table still has its file and schema
            pass
