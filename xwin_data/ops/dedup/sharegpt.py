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
from xwin_data.text.batches import write_input_except

_ASCII_WS = re.compile(r"[ \t\n\v\f\r]+")
# The text a key is taken from, as SQL over the input: the whole conversation is built from the messages column in
# Arrow instead (`conversation_text`, the same text as `CONVERSATION_SQL`), the first user message read in SQL.
CONVERSATION_SQL = "array_to_string(list_transform(messages, lambda m: m.role || ': ' || m.content), '\n')"
FIRST_USER_SQL = "list_filter(messages, lambda m: m.role = 'user')[1].content"


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


def conversation_text(messages: pa.Array) -> pa.Array:
    """Each conversation as one text: its messages as `role: content` lines joined by newlines, leaving out a
    message whose role or content is NULL; NULL for a NULL list. The same text as `CONVERSATION_SQL` (SQL's
    `||` gives NULL and `array_to_string` leaves NULLs out), built by Arrow kernels that release the GIL."""
    import pyarrow.compute as pc

    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    flat = pc.list_flatten(messages)
    parents = pc.list_parent_indices(messages)
    lines = pc.binary_join_element_wise(pc.struct_field(flat, "role"), pc.struct_field(flat, "content"), ": ")
    keep = pc.and_(pc.is_valid(flat), pc.is_valid(lines))
    counts = np.bincount(parents.filter(keep).to_numpy(), minlength=len(messages))
    offsets = np.zeros(len(messages) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    # NULL as SQL has it: for a NULL list, and for a list of messages that were all left out (not for an empty one)
    gone = (pc.list_value_length(messages).fill_null(0).to_numpy(zero_copy_only=False) > 0) & (counts == 0)
    mask = pc.or_(pc.is_null(messages), pa.array(gone))
    joined = pa.ListArray.from_arrays(pa.array(offsets), lines.filter(keep), mask=mask)
    return pc.binary_join(joined, "\n")


def md5_keys(text: pa.Array) -> pa.Array:
    """The MD5 digest of each text's UTF-8 bytes (a NULL text as the empty one), as 16-byte values."""
    import hashlib

    import pyarrow.compute as pc

    text = pc.fill_null(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text, "")
    wide = pa.types.is_large_string(text.type) or pa.types.is_large_binary(text.type)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64 if wide else np.int32)
    offsets = offsets[text.offset:text.offset + len(text) + 1]
    data = memoryview(text.buffers()[2] or b"")
    md5 = hashlib.md5
    digests = b"".join([md5(data[a:b]).digest() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())])
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(text), [None, pa.py_buffer(digests)])


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
        con.execute("CREATE TEMP TABLE __keys (id VARCHAR, k BLOB, ord BIGINT)")
        column = "messages" if params.on == "conversation" else FIRST_USER_SQL
        reader = con.cursor().sql(f"SELECT id, {column} AS txt FROM {ctx.input()}").to_arrow_reader(5_000)
        pending: deque = deque()
        seen = 0

        def keys(batch: pa.RecordBatch) -> pa.Table:
            text = conversation_text(batch.column(1)) if params.on == "conversation" else batch.column(1)
            return pa.table({"id": batch.column(0), "k": md5_keys(normalise_column(text))})

        def insert_one() -> None:  # in input order, on this thread (the connection's)
            nonlocal seen
            batch = pending.popleft().result()
            batch = batch.append_column("ord", pa.array(np.arange(seen, seen + batch.num_rows, dtype=np.int64)))
            seen += batch.num_rows
            con.register("__batch", batch)
            con.execute("INSERT INTO __keys SELECT id, k, ord FROM __batch")
            con.unregister("__batch")
            bar.advance(batch.num_rows)

        # Arrow, numpy and hashlib release the GIL: two threads make keys while this one inserts them.
        with ctx.track("normalised text keys", ctx.input_rows(), "rows") as bar, ThreadPoolExecutor(2) as pool:
            for batch in reader:
                pending.append(pool.submit(keys, batch))
                while len(pending) > 2:
                    insert_one()
            while pending:
                insert_one()
        con.execute("CREATE TEMP TABLE __dups AS SELECT id, kept FROM "
                    "(SELECT id, ord, arg_min(id, ord) OVER (PARTITION BY k) AS kept, min(ord) OVER (PARTITION BY k) AS first "
                    "FROM __keys) WHERE ord <> first")
        write_input_except(ctx, "SELECT id FROM __dups")
        ctx.drop_sql("SELECT id AS source_id, 'exact_duplicate' AS reason, 'duplicate of ' || kept AS detail FROM __dups")
        ctx.stats["duplicates"] = con.execute("SELECT count(*) FROM __dups").fetchone()[0]
