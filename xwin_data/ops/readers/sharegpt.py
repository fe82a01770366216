"""Readers: conversation files (ShareGPT, OpenAI `messages`, Alpaca; JSONL, JSON, Parquet, HF datasets) to the
canonical conversation table. Bad records are drops with the reason and offending value, never a crash."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from xwin_data.core.fingerprint import path_fingerprint
from xwin_data.core.yaml_lines import RecipeError
from xwin_data.ops.base import Op, Params, register

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
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
    block_bytes: int | None = Field(None, ge=256, description="JSONL is parsed in parallel (forked workers, a "
                                    f"cluster) in blocks of about this many bytes (default {BLOCK_BYTES >> 20} MiB)")


@register
class ReadConversations(Op):
    """Read conversations from a file into id, messages, source, model; malformed records go to drops."""

    name = "read_conversations"
    Params = ReadParams
    schema = "conversations"
    min_inputs = max_inputs = 0
    version = "1"
    runs = "batches"
    summary = "ShareGPT / OpenAI messages / Alpaca in JSONL, JSON, Parquet or HF datasets → canonical messages"

    def external_fingerprint(self, params: ReadParams) -> dict:
        from xwin_data.core.storage import is_remote, remote_identity
        from xwin_data.text.sources import is_hub_id

        if is_remote(params.path):
            try:
                return {"remote": remote_identity(params.path)}
            except (OSError, ValueError) as err:
                raise RecipeError(f"path: {err}") from None
        p = Path(params.path)
        if p.exists():
            return {"file": path_fingerprint(p)}
        if params.file_type in ("auto", "hf") and is_hub_id(params.path):
            return {"hub": params.path}
        raise RecipeError(f"path: input file not found: {params.path}")

    def run(self, ctx, params: ReadParams) -> None:
        from xwin_data.core.storage import is_remote, localize
        from xwin_data.text.conversation_rows import RowOptions
        from xwin_data.text.sources import detect_file_type

        source = params.source or Path(params.path).name
        if is_remote(params.path):  # read from the catalog's copy, which every node of a cluster can reach
            params = params.model_copy(update={"path": str(localize(params.path, ctx.cache_dir))})
        options = RowOptions(params.format, params.model_field,
                             (params.id_field,) if params.id_field else ID_FIELDS, source.split(".")[0] or "record")
        kind = detect_file_type(params.path) if params.file_type == "auto" else params.file_type
        ids = _Ids(ctx)
        with ctx.track(f"reading {source}", None, "records") as bar:
            if kind == "jsonl" and not params.limit and _worth_splitting(ctx, params.path, params.block_bytes or BLOCK_BYTES):
                _read_jsonl_in_units(ctx, params, options, source, ids, bar)
            else:
                _read_here(ctx, params, options, source, ids, bar)
        ctx.stats.update(ids.stats)


class _Ids:
    """Bookkeeping of rows in file order: ids made unique (`id~position` for a repeat), drops recorded, counts."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.seen: set[str] = set()
        self.stats = {"records": 0, "renamed_duplicate_ids": 0}

    def take(self, ids: list[str], positions: list[int], drops: list, records: int) -> tuple[list[str], int]:
        from xwin_data.text.conversation_rows import unique_ids

        self.stats["records"] += records
        for rid, reason, detail in drops:
            self.ctx.drop(rid, reason, detail)
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


def _worth_splitting(ctx, path: str, block_bytes: int) -> bool:
    """Blocks of lines as units where they pay: on a distributing executor always, here when forked workers exist
    and the file has a few blocks."""
    from xwin_data.core.workers import available_workers

    if ctx.executor.distributes:
        return True
    return available_workers() > 1 and Path(path).stat().st_size > 4 * block_bytes


def jsonl_block_bounds(path: str, block_bytes: int) -> list[tuple[int, int, int]]:
    """(byte offset, byte length, number of the first line) of each block of whole lines, about `block_bytes`
    each, in the file's (decompressed) bytes; the blocks themselves are read by whoever parses them."""
    from xwin_data.text.sources import jsonl_blocks

    bounds, offset = [], 0
    for first_line, block in jsonl_blocks(path, block_bytes):
        bounds.append((offset, len(block), first_line))
        offset += len(block)
    return bounds


def parse_block(payload: tuple) -> tuple[pa.Table, tuple[list, list, list, int]]:
    """A unit of the reader, wherever it runs: one block of JSONL lines read from the file and converted; ids,
    positions, drops and the number of records go back."""
    from xwin_data.text.conversation_rows import parse_jsonl_block
    from xwin_data.text.sources import _open_binary

    path, offset, length, first_line, options, source = payload
    with _open_binary(Path(path)) as fh:
        fh.seek(offset)
        block = fh.read(length)
    rows = parse_jsonl_block(block, first_line, options)
    ids = rows.table.column("id").to_pylist()
    return _raw_table(rows.table, source), (ids, rows.positions, rows.drops, rows.records)


def _read_jsonl_in_units(ctx, params: ReadParams, options, source: str, ids: _Ids, bar) -> None:
    """Blocks of lines parsed and converted as executor units; ids are made unique here, in file order (a part
    with a repeated id, which is rare, is published with the new ids; its committed part stays as parsed)."""
    import os
    import shutil

    import pyarrow.parquet as pq

    from xwin_data.core.executors import Unit
    from xwin_data.text.conversation_rows import parse_jsonl_block  # noqa: F401 - imported before any fork

    path = str(Path(params.path).resolve())
    units = [Unit(("jsonl", offset, length, first_line), (path, offset, length, first_line, options, source), length)
             for offset, length, first_line in jsonl_block_bounds(path, params.block_bytes or BLOCK_BYTES)]
    renames: list[list[str] | None] = []

    def take(extra: tuple) -> None:
        unique, renamed = ids.take(*extra)
        renames.append(unique if renamed else None)
        bar.advance(len(unique))

    results = ctx.executor.run(ctx, parse_block, units, {ctx.table: RAW_SCHEMA}, on_result=take, publish=False,
                               description=f"parsing {source}", unit="bytes", processes=True, fork_above_rows=0)
    out = ctx.part_paths()
    for part, unique in zip((r.part(ctx.table) for r in results), renames):
        if part is None:
            continue
        dst = next(out)
        if unique is not None:
            pq.write_table(pq.read_table(part).set_column(0, "id", pa.array(unique, pa.string())), dst,
                           compression="zstd")
        else:
            try:
                os.link(part, dst)
            except OSError:
                shutil.copyfile(part, dst)
        ctx.add_rows(pq.ParquetFile(dst).metadata.num_rows)
    if not ctx.rows_written():
        with ctx.writer(RAW_SCHEMA):  # an empty table still has its file and schema
            pass
