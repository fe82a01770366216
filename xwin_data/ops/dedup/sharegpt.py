"""Deduplication of conversations: exact (normalised text keys, grouped in SQL) and near-duplicate (MinHash LSH).

Both keep, in every group of duplicates, the record with the smallest id, so the result does not depend on input
order; each removed record is a drops row whose detail names the kept id.
"""
from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

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


def _write_except(ctx, dropped: str) -> None:
    """Write the input rows whose id is not in table `dropped`, in input order: the input's row groups read, filtered
    and written by threads (Arrow releases the GIL), rather than an anti-join, whose parallel probe loses the order."""
    from functools import partial

    from xwin_data.text.batches import map_input_parallel

    ids = ctx.con.sql(f"SELECT id FROM {dropped}").to_arrow_table().column(0).combine_chunks()
    schema = ctx.con.sql(f"SELECT * FROM {ctx.input()} LIMIT 0").to_arrow_table().schema
    map_input_parallel(ctx, partial(_without_ids, ids=ids), schema, batch_size=20_000, threads=2,
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
    """Drop conversations whose normalised text equals that of one with a smaller id."""

    name = "dedup_exact"
    Params = ExactParams
    schema = "conversations"
    min_inputs = max_inputs = 1
    summary = "exact duplicates on normalised text; keeps the smallest id"

    def run(self, ctx, params: ExactParams) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        con = ctx.con
        con.execute("CREATE TEMP TABLE __keys (id VARCHAR, k UHUGEINT)")
        reader = con.cursor().sql(f"SELECT id, {TEXT_SQL[params.on]} AS txt FROM {ctx.input()}").to_arrow_reader(20_000)
        pending: deque = deque()

        def insert_one() -> None:  # in input order, on this thread (the connection's)
            norm = pending.popleft().result()
            con.register("__batch", norm)
            con.execute("INSERT INTO __keys SELECT id, md5_number(coalesce(norm, '')) FROM __batch")
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
                    "(SELECT id, min(id) OVER (PARTITION BY k) AS kept FROM __keys) WHERE id <> kept")
        _write_except(ctx, "__dups")
        ctx.drop_sql("SELECT id AS source_id, 'exact_duplicate' AS reason, 'duplicate of ' || kept AS detail FROM __dups")
        ctx.stats["duplicates"] = con.execute("SELECT count(*) FROM __dups").fetchone()[0]


class NearParams(Params):
    threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard similarity of word shingles to drop at")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    bands: int = Field(16, ge=1, description="LSH bands (num_perm / bands rows each)")
    shingle_words: int = Field(5, ge=1, description="words per shingle")
    max_words: int = Field(4000, ge=10, description="signatures cover the first this many words of a conversation")
    on: Literal["conversation", "first_user"] = "conversation"
    seed: int = 1
    batch_size: int = Field(5_000, ge=1)
    enabled: bool = Field(True, description="false passes the table through (e.g. for speed comparisons)")

    @model_validator(mode="after")
    def _bands_divide(self) -> "NearParams":
        if self.num_perm % self.bands:
            raise ValueError(f"bands ({self.bands}) must divide num_perm ({self.num_perm})")
        return self


@register
class DedupNear(Op):
    """Drop near-duplicate conversations (MinHash LSH over word shingles), keeping the smallest id of a cluster."""

    name = "dedup_near"
    Params = NearParams
    schema = "conversations"
    min_inputs = max_inputs = 1
    runs = "batches"
    summary = "near-duplicates by MinHash LSH (numpy signatures, SQL band joins); keeps the smallest id"

    def run(self, ctx, params: NearParams) -> None:
        con = ctx.con
        if not params.enabled:
            ctx.pass_through()
            ctx.stats["near_duplicates"] = "disabled"
            return
        from functools import partial

        from xwin_data.core.executors.base import row_group_units

        # Signatures and band keys per row group, as executor units; grouping and the choice of what to keep stay
        # here, exact and deterministic, in SQL over the units' parts.
        units = row_group_units(ctx.inputs[0].glob)
        schemas = {"sigs": pa.schema([("id", pa.string()), ("sig", pa.list_(pa.uint32(), params.num_perm))]),
                   "bands": pa.schema([("id", pa.string()), ("band", pa.int16()), ("bucket", pa.uint64())])}
        results = ctx.executor.run(ctx, partial(signature_unit, params.model_dump()), units, schemas, publish=False,
                                   description="minhash signatures", unit="rows", processes=True,
                                   fork_above_rows=2 * params.batch_size)
        sig_parts = [r.part("sigs") for r in results if r.part("sigs")]
        band_parts = [r.part("bands") for r in results if r.part("bands")]
        band_path = "[" + ", ".join(f"'{p}'" for p in band_parts) + "]"
        sig_path = "[" + ", ".join(f"'{p}'" for p in sig_parts) + "]"
        band_writer = band_parts or None
        dropped = []
        if band_writer is not None:
            # Star edges from each bucket's smallest id keep the candidate list linear in the table size.
            edges = con.execute(f"""
                WITH b AS (SELECT id, band, bucket, min(id) OVER (PARTITION BY band, bucket) AS head
                           FROM read_parquet({band_path})),
                     pairs AS (SELECT DISTINCT head, id FROM b WHERE id <> head),
                     s AS (SELECT id, sig::UINTEGER[] AS sig FROM read_parquet({sig_path}))
                SELECT pairs.head, pairs.id,
                       len(list_filter(range(1, {params.num_perm} + 1), lambda i: s1.sig[i] = s2.sig[i])) / {params.num_perm} AS j
                FROM pairs JOIN s s1 ON s1.id = pairs.head JOIN s s2 ON s2.id = pairs.id
            """).fetchall()
            dropped = _clusters([(h, i, j) for h, i, j in edges if j >= params.threshold])
        table = pa.table({"id": [d[0] for d in dropped], "kept": [d[1] for d in dropped],
                          "jaccard": [d[2] for d in dropped]},
                         schema=pa.schema([("id", pa.string()), ("kept", pa.string()), ("jaccard", pa.float64())]))
        con.register("__near", table)
        _write_except(ctx, "__near")
        ctx.drop_sql("SELECT id AS source_id, 'near_duplicate' AS reason, "
                     "'near duplicate of ' || kept || ' (estimated jaccard ' || round(jaccard, 3) || ')' AS detail FROM __near")
        ctx.stats["near_duplicates"] = len(dropped)


def signature_unit(params: dict, payload: tuple[str, int]) -> tuple[dict, None]:
    """A unit of near-dedup, wherever it runs: MinHash signatures and LSH band keys of one row group's rows."""
    import duckdb
    import pyarrow.parquet as pq

    from xwin_data.text.minhash import band_keys, permutations, shingles, signatures

    p = NearParams.model_validate(params)
    source, row_group = payload
    group = pq.ParquetFile(source).read_row_group(row_group, columns=["id", "messages"], use_threads=False)
    words_sql = (f"list_transform(string_split_regex(trim(regexp_replace(lower({TEXT_SQL[p.on]}), "
                 f"'[^\\p{{L}}\\p{{N}}_]+', ' ', 'g')), ' ')[1:{p.max_words}], lambda w: hash(w))")
    a, b = permutations(p.num_perm, p.seed)
    sig_tables, band_tables = [], []
    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        for chunk in group.to_batches(max_chunksize=p.batch_size):
            con.register("grp", pa.Table.from_batches([chunk]))
            batch = con.sql(f"SELECT id, {words_sql} AS words FROM grp").to_arrow_table()
            con.unregister("grp")
            words_col = batch.column(1).combine_chunks()
            offsets = np.asarray(words_col.offsets.to_numpy(), dtype=np.int64)
            offsets = offsets - offsets[0]
            flat = words_col.flatten().to_numpy(zero_copy_only=False).astype(np.uint64)
            hashes, sh_off = shingles(flat, offsets, p.shingle_words)
            sig = signatures(hashes, sh_off, a, b)
            keys = band_keys(sig, p.bands, p.seed)
            ids = batch.column(0).combine_chunks()
            sig_tables.append(pa.table({"id": ids, "sig": pa.FixedSizeListArray.from_arrays(sig.ravel(), p.num_perm)}))
            band_tables.append(pa.table({"id": pa.array(np.repeat(ids.to_numpy(zero_copy_only=False), p.bands)),
                                         "band": pa.array(np.tile(np.arange(p.bands, dtype=np.int16), len(ids))),
                                         "bucket": pa.array(keys.ravel())}))
    finally:
        con.close()
    if not sig_tables:
        return {}, None
    sig_table, band_table = pa.concat_tables(sig_tables), pa.concat_tables(band_tables)
    return {"sigs": sig_table, "bands": band_table}, None


def _clusters(edges: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    """Union-find over verified edges: every member but the smallest id of a cluster is dropped."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    best: dict[str, float] = {}
    for h, i, j in edges:
        ra, rb = find(h), find(i)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        best[i] = max(best.get(i, 0.0), j)
        best[h] = max(best.get(h, 0.0), j)
    out = []
    for x in parent:
        root = find(x)
        if x != root:
            out.append((x, root, best.get(x, 0.0)))
    return sorted(out)
