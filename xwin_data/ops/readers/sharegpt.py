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
    path: str = Field(description="input file or folder (JSONL, JSON, Parquet, a saved HF dataset) or a hub id")
    format: Literal["auto", "sharegpt", "openai", "alpaca"] = Field(
        "auto", description="record shape; auto looks at each record's keys (conversations / messages / instruction)")
    file_type: Literal["auto", "jsonl", "json", "parquet", "hf"] = Field(
        "auto", description="container; auto goes by extension and first bytes (a folder or hub id is hf)")
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
        from xwin_data.text.sources import is_hub_id

        p = Path(params.path)
        if p.exists():
            return {"file": path_fingerprint(p)}
        if params.file_type in ("auto", "hf") and is_hub_id(params.path):
            return {"hub": params.path}
        raise RecipeError(f"path: input file not found: {params.path}")

    def run(self, ctx, params: ReadParams) -> None:
        from xwin_data.text.conversation_rows import RowOptions
        from xwin_data.text.sources import detect_file_type

        source = params.source or Path(params.path).name
        options = RowOptions(params.format, params.model_field,
                             (params.id_field,) if params.id_field else ID_FIELDS, source.split(".")[0] or "record",
                             params.on_bad_turn)
        kind = detect_file_type(params.path) if params.file_type == "auto" else params.file_type
        ids = _Ids(ctx)
        with ctx.track(f"reading {source}", None, "records") as bar:
            if kind == "jsonl" and not params.limit and _worth_forking(params.path):
                _read_jsonl_in_workers(ctx, params.path, options, source, ids, bar)
            else:
                _read_here(ctx, params, options, source, ids, bar)
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


def _read_here(ctx, params: ReadParams, options, source: str, ids: _Ids, bar) -> None:
    from xwin_data.text.conversation_rows import RowBuilder
    from xwin_data.text.sources import iter_records

    builder = RowBuilder(options)
    with ctx.writer(RAW_SCHEMA) as out:
        def flush() -> None:
            rows = builder.take()
            unique, renamed = ids.take(rows.table.column("id").to_pylist(), rows.positions, rows.drops, rows.records)
            table = rows.table.set_column(0, "id", pa.array(unique, pa.string())) if renamed else rows.table
            if table.num_rows:
                out.write(_raw_table(table, source))
                bar.advance(table.num_rows)

        for position, record in iter_records(params.path, params.file_type, params.split):
            if builder.add(position, record) and params.limit and len(ids.seen) + len(builder) >= params.limit:
                break
            if len(builder) >= BATCH:
                flush()
        flush()


def _worth_forking(path: str) -> bool:
    from xwin_data.core.workers import available_workers

    return available_workers() > 1 and Path(path).stat().st_size > 4 * BLOCK_BYTES


def parse_to_part(block: bytes, first_line: int, options, source: str, path: str) -> tuple[list, list, list, int]:
    """In a worker: one block of JSONL lines converted and written as a Parquet part; ids, positions, drops and the
    number of records go back."""
    import pyarrow.parquet as pq

    from xwin_data.text.conversation_rows import parse_jsonl_block

    rows = parse_jsonl_block(block, first_line, options)
    if rows.table.num_rows:
        pq.write_table(_raw_table(rows.table, source), path, compression="zstd")
    return rows.table.column("id").to_pylist(), rows.positions, rows.drops, rows.records


def _read_jsonl_in_workers(ctx, path: str, options, source: str, ids: _Ids, bar) -> None:
    """Blocks of lines parsed, converted and written by worker processes; ids are made unique here, in file order
    (a part with a repeated id, which is rare, is rewritten with the new ids)."""
    from collections import deque

    import pyarrow.parquet as pq

    from xwin_data.text.conversation_rows import parse_jsonl_block  # noqa: F401 - imported before the fork
    from xwin_data.text.sources import jsonl_blocks
    from xwin_data.core.workers import available_workers, pool

    workers = available_workers()
    pending: deque = deque()

    def finish_one() -> None:
        part, future = pending.popleft()
        unique, renamed = ids.take(*future.result())
        if renamed:
            pq.write_table(pq.read_table(part).set_column(0, "id", pa.array(unique, pa.string())), part,
                           compression="zstd")
        ctx.add_rows(len(unique))
        bar.advance(len(unique))

    with pool(workers) as executor:
        parts = ctx.part_paths()
        for first_line, block in jsonl_blocks(path, BLOCK_BYTES):
            part = str(next(parts))
            pending.append((part, executor.submit(parse_to_part, block, first_line, options, source, part)))
            while len(pending) >= 2 * workers:
                finish_one()
        while pending:
            finish_one()
    if not ctx.rows_written():
        with ctx.writer(RAW_SCHEMA):  # an empty table still has its file and schema
            pass
