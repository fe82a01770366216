"""Exact deduplication of conversations (normalised text keys, grouped in SQL), and what it shares with the
near-duplicate op (`xwin_data.ops.dedup.near`): the text a key is taken from and the rewrite that keeps every row
but the dropped ones.

Both keep, in every group of duplicates, the first occurrence in input order (source file, then line: the row's
position in the input table), whatever the ids and however many workers ran; each removed record is a drops row
whose detail names the kept id.
"""
from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from xwin_data.ops.base import Op, Params, register

_ASCII_WS = re.compile(r"[ \t\n\v\f\r]+")
TEXT_SQL = {
    "conversation": "array_to_string(list_transform(messages, lambda m: m.role || ': ' || m.content), '\n')",
    "first_user": "list_filter(messages, lambda m: m.role = 'user')[1].content",
}


_WS_BYTE = np.zeros(256, dtype=bool)
_WS_BYTE[list(b" \t\n\v\f\r")] = True


def normalise_column(text: pa.Array) -> pa.Array:
    """What counts as 'the same text': lower case, runs of ASCII whitespace as one space, no ends.

    Whitespace runs are collapsed on the UTF-8 bytes in numpy (no per-word strings); ASCII whitespace bytes never
    occur inside a multi-byte character, so this is the same as splitting on whitespace and joining with spaces.
    """
    import pyarrow.compute as pc

    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    trimmed = pc.ascii_trim_whitespace(pc.utf8_lower(text))
    if trimmed.type != pa.string() or trimmed.offset or len(trimmed) == 0:
        return pc.binary_join(pc.ascii_split_whitespace(trimmed), " ")
    offsets = np.frombuffer(trimmed.buffers()[1], dtype=np.int32)[:len(trimmed) + 1]
    data = np.frombuffer(trimmed.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    ws = _WS_BYTE[data]
    repeat = ws.copy()
    repeat[1:] &= ws[:-1]  # a whitespace byte right after another goes (values start and end without any)
    gone = np.flatnonzero(repeat)
    out = np.where(ws, np.uint8(ord(" ")), data)
    if len(gone):
        out = np.delete(out, gone)
        offsets = offsets - np.searchsorted(gone, offsets).astype(np.int32)
    return pa.StringArray.from_buffers(len(trimmed), pa.py_buffer(offsets), pa.py_buffer(out), trimmed.buffers()[0],
                                       trimmed.null_count)


def write_except(ctx, dropped: str) -> None:
    """Write the input rows whose id is not in table `dropped`, in input order: the input's row groups read, filtered
    and written by threads (Arrow releases the GIL), rather than an anti-join, whose parallel probe loses the order."""
    from functools import partial

    from xwin_data.text.batches import map_input_parallel

    ids = ctx.con.sql(f"SELECT id FROM {dropped}").to_arrow_table().column(0).combine_chunks()
    schema = ctx.con.sql(f"SELECT * FROM {ctx.input()} LIMIT 0").to_arrow_table().schema
    map_input_parallel(ctx, partial(_without_ids, ids=ids), schema, batch_size=5_000, threads=2,
                       description=f"{ctx.stage_id}: writing the kept rows")


def _without_ids(batch: pa.RecordBatch, ids: pa.Array) -> tuple[pa.Table, None]:
    import pyarrow.compute as pc

    return pa.Table.from_batches([batch]).filter(pc.invert(pc.is_in(batch.column("id"), value_set=ids))), None


def normalise_text(text: str) -> str:
    """`normalise_column` for one string."""
    return " ".join(w for w in _ASCII_WS.split(text.lower()) if w)


class ExactParams(Params):
    on: Literal["conversation", "first_user"] = Field(
        "conversation", description="compare whole conversations, or only the first user message (prompt dedup)")


@register
class DedupExact(Op):
    """Drop conversations whose normalised text equals that of one earlier in the input."""

    name = "dedup_exact"
    needs, keeps, adds = {"id", "messages"}, True, set()
    Params = ExactParams
    schema = "conversations"
    min_inputs = max_inputs = 1
    summary = "exact duplicates on normalised text; keeps the first occurrence"

    def run(self, ctx, params: ExactParams) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        con = ctx.con
        # One DuckDB thread: the text query then holds one row group's strings at a time (two threads held ~0.15 GB
        # more at 100K conversations); the normalising, where the time goes, runs on the two threads below.
        con.execute("SET threads = 1")
        con.execute("CREATE TEMP TABLE __keys (id VARCHAR, k UHUGEINT, ord BIGINT)")
        reader = con.cursor().sql(f"SELECT id, {TEXT_SQL[params.on]} AS txt FROM {ctx.input()}").to_arrow_reader(5_000)
        pending: deque = deque()
        seen = 0

        def insert_one() -> None:  # in input order, on this thread (the connection's)
            nonlocal seen
            norm = pending.popleft().result()
            norm = norm.append_column("ord", pa.array(np.arange(seen, seen + norm.num_rows, dtype=np.int64)))
            seen += norm.num_rows
            con.register("__batch", norm)
            con.execute("INSERT INTO __keys SELECT id, md5_number(coalesce(norm, '')), ord FROM __batch")
            con.unregister("__batch")
            bar.advance(norm.num_rows)

        # Arrow and numpy release the GIL: two threads normalise while this one inserts keys.
        with ctx.track("normalised text keys", ctx.input_rows(), "rows") as bar, ThreadPoolExecutor(2) as pool:
            for batch in reader:
                pending.append(pool.submit(lambda b: pa.table({"id": b.column(0), "norm": normalise_column(b.column(1))}),
                                           batch))
                while len(pending) > 2:
                    insert_one()
            while pending:
                insert_one()
        con.execute("CREATE TEMP TABLE __dups AS SELECT id, kept FROM "
                    "(SELECT id, ord, arg_min(id, ord) OVER (PARTITION BY k) AS kept, min(ord) OVER (PARTITION BY k) AS first "
                    "FROM __keys) WHERE ord <> first")
        write_except(ctx, "__dups")
        ctx.drop_sql("SELECT id AS source_id, 'exact_duplicate' AS reason, 'duplicate of ' || kept AS detail FROM __dups")
        ctx.stats["duplicates"] = con.execute("SELECT count(*) FROM __dups").fetchone()[0]
