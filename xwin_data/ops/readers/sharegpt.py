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
    block_bytes: int | None = Field(None, ge=256, description="JSONL is parsed in parallel (forked workers, a "
                                    f"cluster) in blocks of about this many bytes (default {BLOCK_BYTES >> 20} MiB)")


@register
class ReadConversations(Op):
    """Read conversations from a file into id, messages, source, model; malformed records go to drops."""

    name = "read_conversations"
    adds = set(RAW_SCHEMA.names)
    Params = ReadParams
    schema = "conversations"
    min_inputs = max_inputs = 0
    version = "1"
    runs = "batches"
    summary = "ShareGPT / OpenAI messages / Alpaca in JSONL, JSON, Parquet or HF datasets → canonical messages"

    def external_fingerprint(self, params: ReadParams) -> dict:
        from xwin_data.core.storage import is_remote, remote_identity
        from xwin_data.text.sources import input_files, is_hub_id, is_sharded

        if is_remote(params.path):
            try:
                return {"remote": remote_identity(params.path)}
            except (OSError, ValueError) as err:
                raise RecipeError(f"path: {err}") from None
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
        from xwin_data.core.storage import is_remote, localize
        from xwin_data.text.conversation_rows import RowOptions
        from xwin_data.text.source_units import hf_data_files
        from xwin_data.text.sources import InputFile, detect_file_type, input_files, is_sharded

        source = params.source or Path(params.path).name
        if is_remote(params.path):  # read from the catalog's copy, which every node of a cluster can reach
            params = params.model_copy(update={"path": str(localize(params.path, ctx.cache_dir))})
        options = RowOptions(params.format, params.model_field,
                             (params.id_field,) if params.id_field else ID_FIELDS, source.split(".")[0] or "record",
                             params.on_bad_turn)
        files: list[InputFile] | None
        hf_files: list[tuple[Path, int]] | None = None
        if params.file_type != "hf" and is_sharded(params.path):
            files = input_files(params.path, params.file_type)  # fallback ids and file drops name the shard
            ctx.stats["files"] = len(files)
        else:
            kind = detect_file_type(params.path) if params.file_type == "auto" else params.file_type
            files = None if kind == "hf" else [InputFile(Path(params.path), Path(params.path).name, kind)]
            if kind == "hf" and not params.limit:
                hf_files = hf_data_files(params.path, params.split)
        ids = _Ids(ctx)
        sizes = [f.path for f in files] if files is not None else [f for f, _ in hf_files or ()]
        with ctx.track(f"reading {source}", None, "records") as bar:
            if (files is not None or hf_files) and not params.limit and \
                    _worth_splitting(ctx, sizes, params.block_bytes or BLOCK_BYTES):
                units = _units(params, files, hf_files, options, source, ctx.stats.get("files") is not None)
                _read_in_units(ctx, units, source, ids, bar)
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


def _worth_splitting(ctx, paths: list[Path], block_bytes: int) -> bool:
    """Units where they pay: on a distributing executor always, here when forked workers exist and the input
    has a few blocks."""
    from xwin_data.core.workers import available_workers

    if ctx.executor.distributes:
        return True
    if available_workers() < 2:
        return False
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return total > 4 * block_bytes


def jsonl_block_bounds(path: str, block_bytes: int, name: str | None = None) -> list[tuple]:
    """(byte offset, byte length, number of the first line) of each block of whole lines, about `block_bytes`
    each, in the file's (decompressed) bytes; the blocks themselves are read by whoever parses them. A damaged
    gzip ends with (offset, 0, line, Unreadable) for the rest."""
    from xwin_data.text.sources import Unreadable, jsonl_blocks

    bounds, offset = [], 0
    for first_line, block in jsonl_blocks(path, block_bytes, name):
        if isinstance(block, Unreadable):
            bounds.append((offset, 0, first_line, block))
            continue
        bounds.append((offset, len(block), first_line, None))
        offset += len(block)
    return bounds


def _records_table(records, options, source: str) -> tuple[pa.Table, tuple[list, list, list, int]]:
    from xwin_data.text.conversation_rows import RowBuilder

    builder = RowBuilder(options)
    for position, record in records:
        builder.add(position, record)
    rows = builder.take()
    return _raw_table(rows.table, source), (rows.table.column("id").to_pylist(), rows.positions, rows.drops,
                                            rows.records)


def parse_unit(payload: tuple) -> tuple[pa.Table, tuple[list, list, list, int]]:
    """A unit of the reader, wherever it runs: a block of JSONL lines read from its file, a row group of a Parquet
    file, an Arrow data file of a saved HF dataset, or a whole JSON shard, converted; ids, positions, drops and the
    number of records go back."""
    from xwin_data.text.conversation_rows import parse_jsonl_block
    from xwin_data.text.gzip_stream import open_binary
    from xwin_data.text.source_units import iter_arrow_file, iter_parquet_row_group, iter_whole_file

    kind = payload[0]
    if kind == "unreadable":
        _, problem = payload
        return RAW_SCHEMA.empty_table(), ([], [], [(problem.source_id, problem.reason, problem.detail)], 1)
    if kind == "file":
        _, path, file_kind, name, options, source = payload
        return _records_table(iter_whole_file(path, file_kind, name), options, source)
    if kind == "row_group":
        _, path, row_group, first, name, options, source = payload
        return _records_table(iter_parquet_row_group(Path(path), row_group, first, name), options, source)
    if kind == "arrow":
        _, path, first, options, source = payload
        return _records_table(iter_arrow_file(Path(path), first), options, source)
    _, path, offset, length, first_line, options, source = payload
    with open_binary(Path(path)) as fh:  # a gzip stream seeks forward by decompressing
        fh.seek(offset)
        block = fh.read(length)
    rows = parse_jsonl_block(block, first_line, options)
    ids = rows.table.column("id").to_pylist()
    return _raw_table(rows.table, source), (ids, rows.positions, rows.drops, rows.records)


def _units(params: ReadParams, files, hf_files, options, source: str, sharded: bool) -> list:
    """The reader's units, in input order: JSONL files as blocks of lines (a damaged gzip's lost rest as a unit of
    its own), Parquet files by row group, a saved HF dataset by its Arrow data files, JSON shards whole."""
    from xwin_data.core.executors import Unit
    from xwin_data.text.source_units import parquet_row_groups

    units = []
    first = 0
    for path, rows in hf_files or ():
        path = path.resolve()
        units.append(Unit(("arrow", path.name, first), ("arrow", str(path), first, options, source),
                          max(path.stat().st_size, 1)))
        first += rows
    block_bytes = params.block_bytes or BLOCK_BYTES
    for file in files or ():
        file_options = _file_options(options, file, sharded)
        path = str(file.path.resolve())
        groups = parquet_row_groups(file.path) if file.kind == "parquet" else None
        if groups:
            size = max(file.path.stat().st_size, 1)
            total = max(sum(groups), 1)
            first = 0
            for i, rows in enumerate(groups):
                units.append(Unit(("row_group", file.name, i), ("row_group", path, i, first, file.name,
                                                                file_options, source), max(size * rows // total, 1)))
                first += rows
        elif file.kind != "jsonl":
            size = file.path.stat().st_size if file.path.exists() else 0
            units.append(Unit(("file", file.name), ("file", path, file.kind, file.name, file_options, source),
                              max(size, 1)))
        else:
            for offset, length, first_line, problem in jsonl_block_bounds(path, block_bytes, file.name):
                if problem is not None:
                    units.append(Unit(("unreadable", file.name, offset), ("unreadable", problem), 1))
                else:
                    units.append(Unit(("jsonl", file.name, offset, length, first_line),
                                      ("block", path, offset, length, first_line, file_options, source), length))
    return units


def _read_in_units(ctx, units: list, source: str, ids: _Ids, bar) -> None:
    """The units parsed and converted on the executor (forked workers here, tasks on a cluster); ids are made
    unique here, in input order (a part with a repeated id, which is rare, is published with the new ids; its
    committed part stays as parsed)."""
    import os
    import shutil

    import pyarrow.parquet as pq

    from xwin_data.text.conversation_rows import parse_jsonl_block  # noqa: F401 - imported before any fork

    renames: list[list[str] | None] = []

    def take(extra: tuple) -> None:
        unique, renamed = ids.take(*extra)
        renames.append(unique if renamed else None)
        bar.advance(len(unique))

    results = ctx.executor.run(ctx, parse_unit, units, {ctx.table: RAW_SCHEMA}, on_result=take, publish=False,
                               description=f"parsing {source}", unit="bytes", processes=True, fork_above_rows=0)
    ctx.stats["read_workers"] = ctx.stats.get("executor", {}).get("workers", 1)
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
