"""Deduplication of conversations: exact (normalised text keys, grouped in SQL) and near-duplicate (MinHash LSH,
verified by exact shingle Jaccard).

Both keep, in every group of duplicates, the first occurrence in input order (source file, then line: the row's
position in the input table), whatever the ids and however many workers ran; each removed record is a drops row
whose detail names the kept id.
"""
from __future__ import annotations

import re
import time
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from xwin_data.ops.base import Op, Params, register
from xwin_data.text.minhash import sorted_unique

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
        _write_except(ctx, "__dups")
        ctx.drop_sql("SELECT id AS source_id, 'exact_duplicate' AS reason, 'duplicate of ' || kept AS detail FROM __dups")
        ctx.stats["duplicates"] = con.execute("SELECT count(*) FROM __dups").fetchone()[0]


class NearParams(Params):
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of word shingles to drop at (exact, "
                                                          "unless verify is false)")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    bands: int = Field(32, ge=1, description="LSH bands (num_perm / bands rows each); 32 x 4 makes pairs from "
                                             "Jaccard ~0.45 up candidates, so pairs at the threshold are not missed")
    shingle_words: int = Field(5, ge=1, description="words per shingle")
    max_words: int = Field(4000, ge=10, description="signatures cover the first this many words of a conversation")
    on: Literal["conversation", "first_user"] = "conversation"
    verify: bool = Field(True, description="check each candidate pair's exact shingle Jaccard before dropping "
                                           "(false: decide on the MinHash estimate)")
    estimate_margin: float = Field(0.2, ge=0, le=1, description="candidates whose MinHash estimate is below "
                                                                "threshold - margin are not verified")
    seed: int = 1
    batch_size: int = Field(5_000, ge=1)
    enabled: bool = Field(True, description="false passes the table through (e.g. for speed comparisons)")

    @model_validator(mode="after")
    def _bands_divide(self) -> "NearParams":
        if self.num_perm % self.bands:
            raise ValueError(f"bands ({self.bands}) must divide num_perm ({self.num_perm})")
        return self


def minhash_batch(batch: pa.RecordBatch, params: NearParams, a: np.ndarray, b: np.ndarray,
                  scratch: str) -> tuple[None, tuple]:
    """One batch's (ids, signatures, band keys, file of its shingle sets); runs in the stage's worker processes,
    which also write the shingle sets (sorted 32-bit hashes, for the exact check) to a scratch file of their own."""
    import uuid

    import pyarrow.parquet as pq

    from xwin_data.text.minhash import band_keys, conversation_text, shingle_sets, shingles, signatures, word_hashes

    words, offsets = word_hashes(conversation_text(batch.column("messages"), params.on), params.max_words)
    hashes, sh_off = shingles(words, offsets, params.shingle_words)
    sig = signatures(hashes, sh_off, a, b)
    sets_file = None
    if params.verify:
        flat, set_off = shingle_sets(hashes, sh_off)
        sets_file = f"{scratch}/sets-{uuid.uuid4().hex}.parquet"
        column = pa.LargeListArray.from_arrays(pa.array(set_off.astype(np.int64)), pa.array(flat))
        pq.write_table(pa.table({"shingles": column}), sets_file, compression="none")
    return None, (batch.column("id"), sig, band_keys(sig, params.bands, params.seed), sets_file)


@register
class DedupNear(Op):
    """Drop near-duplicate conversations (MinHash LSH candidates, verified by exact shingle Jaccard), keeping the
    first occurrence of a cluster in input order."""

    name = "dedup_near"
    needs, keeps, adds = {"id", "messages"}, True, set()
    Params = NearParams
    schema = "conversations"
    min_inputs = max_inputs = 1
    runs = "batches"
    summary = "near-duplicates: MinHash LSH in the workers, exact Jaccard check; keeps the first occurrence"

    def run(self, ctx, params: NearParams) -> None:
        import glob
        import os
        from functools import partial

        import pyarrow.parquet as pq

        from xwin_data.ops.dedup.lsh import bucket_pairs, decode
        from xwin_data.text.minhash import permutations

        if not params.enabled:
            ctx.pass_through()
            ctx.stats["near_duplicates"] = "disabled"
            return
        scratch = ctx.tmp_dir / f"{ctx.stage_id}-minhash"
        scratch.mkdir(parents=True, exist_ok=True)
        sig_path, band_path = scratch / "sigs.parquet", scratch / "bands.parquet"
        writers: dict[str, pq.ParquetWriter] = {}

        set_files: list[tuple[str, int]] = []

        def keep(extra: tuple) -> None:  # in the calling process, in input order: row i of the files is ordinal i
            ids, sig, keys, sets_file = extra
            set_files.append((sets_file, len(ids)))
            tables = {sig_path: pa.table({"id": ids, "sig": pa.FixedSizeListArray.from_arrays(sig.ravel(),
                                                                                               params.num_perm)}),
                      band_path: pa.table({f"b{j}": keys[:, j] for j in range(params.bands)})}
            for path, table in tables.items():
                if path not in writers:
                    writers[path] = pq.ParquetWriter(path, table.schema)
                writers[path].write_table(table)

        clock = time.perf_counter()
        a, b = permutations(params.num_perm, params.seed)
        schema = ctx.con.sql(f"SELECT * FROM {ctx.input()} LIMIT 0").to_arrow_table().schema
        ctx.executor.map_input(ctx, partial(minhash_batch, params=params, a=a, b=b, scratch=str(scratch)), schema, keep,
                           batch_size=params.batch_size, processes=True, description="minhash signatures")
        for w in writers.values():
            w.close()
        for leftover in glob.glob(ctx.output_glob()):  # the signing pass writes no rows, only an empty part
            os.remove(leftover)

        seconds = {"sign": time.perf_counter() - clock}
        clock = time.perf_counter()
        found = np.zeros(0, np.int64)
        if band_path in writers:
            bands = pq.ParquetFile(band_path)
            for j in range(params.bands):  # merged band by band: a copy's pair is found in every band, and
                # holding all bands' pairs before merging them would take `bands` times the memory
                pairs = bucket_pairs(bands.read(columns=[f"b{j}"]).column(0).to_numpy())
                found = sorted_unique(np.concatenate([found, pairs])) if len(found) else sorted_unique(pairs)
        first, second = decode(found)
        estimated = _estimates(sig_path, first, second) if len(found) else np.zeros(0)
        floor = params.threshold - params.estimate_margin if params.verify else params.threshold
        sel = estimated >= floor
        first, second, estimated = first[sel], second[sel], estimated[sel]
        seconds["candidates"] = time.perf_counter() - clock
        clock = time.perf_counter()
        exact = np.full(len(first), np.nan)
        if params.verify and len(first):
            exact = _verify(set_files, params, first, second, estimated)
        decided = exact if params.verify else estimated
        ok = decided >= params.threshold
        dropped = _dropped_rows(first[ok], second[ok], estimated[ok], exact[ok],
                                pq.read_table(sig_path, columns=["id"]).column(0) if band_path in writers else None)
        seconds["verify"] = time.perf_counter() - clock
        clock = time.perf_counter()
        ctx.con.register("__near", dropped)
        _write_except(ctx, "__near")
        ctx.drop_sql("SELECT id AS source_id, 'near_duplicate' AS reason, detail FROM __near")
        seconds["write"] = time.perf_counter() - clock
        ctx.stats.update({"candidate_pairs": int(len(found)), "verified_pairs": int(np.sum(~np.isnan(exact))),
                          "near_duplicates": dropped.num_rows,
                          "seconds": {k: round(v, 2) for k, v in seconds.items()}})


def _verify(set_files: list[tuple[str, int]], params: NearParams, first: np.ndarray, second: np.ndarray,
            estimated: np.ndarray) -> np.ndarray:
    """Exact shingle Jaccard of the candidate pairs that decide the clusters (NaN for the others).

    Pairs are taken by estimate, highest first; a pair whose two members are already joined by verified pairs
    is not checked (it cannot change a cluster), so a dump full of copies costs about one check per copy. The
    shingle sets the workers wrote are read back for the documents involved only and held at 4 bytes a shingle:
    that, the signatures of candidates and the candidate list are what this step holds beyond one batch."""
    import pyarrow.parquet as pq

    from xwin_data.text.minhash import jaccard

    need = sorted_unique(np.concatenate([first, second]))
    flats, offs, base, start = [], [np.zeros(1, np.int64)], 0, 0
    for path, n in set_files:
        lo, hi = np.searchsorted(need, [start, start + n])
        if hi > lo:
            sets = pq.read_table(path).column(0).combine_chunks().take(pa.array(need[lo:hi] - start))
            values = sets.flatten().to_numpy()
            offsets = np.asarray(sets.offsets.to_numpy(), dtype=np.int64)
            flats.append(values)
            offs.append(offsets[1:] - offsets[0] + base)
            base += len(values)
        start += n
    flat, off = np.concatenate(flats), np.concatenate(offs)
    ia, ib = np.searchsorted(need, first), np.searchsorted(need, second)
    parent = np.arange(len(need))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    exact = np.full(len(first), np.nan)
    for p in np.lexsort((second, first, -estimated)).tolist():
        x, y = find(int(ia[p])), find(int(ib[p]))
        if x == y:
            continue
        a, b = int(ia[p]), int(ib[p])
        exact[p] = jaccard(flat[off[a]:off[a + 1]], flat[off[b]:off[b + 1]])
        if exact[p] >= params.threshold:
            parent[max(x, y)] = min(x, y)
    return exact


def _estimates(sig_path, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """MinHash estimate (share of equal signature entries) of each pair, reading only the signatures it needs."""
    import pyarrow.parquet as pq

    need = sorted_unique(np.concatenate([first, second]))
    pf = pq.ParquetFile(sig_path)
    rows, start = [], 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = np.searchsorted(need, [start, start + n])
        if hi > lo:
            col = pf.read_row_group(g, columns=["sig"]).column(0).combine_chunks()
            width = col.type.list_size
            flat = col.values.to_numpy().reshape(-1, width)
            rows.append(flat[need[lo:hi] - start])
        start += n
    sigs = np.concatenate(rows)
    ia, ib = np.searchsorted(need, first), np.searchsorted(need, second)
    out = np.empty(len(first))
    for c in range(0, len(first), 65_536):
        out[c:c + 65_536] = (sigs[ia[c:c + 65_536]] == sigs[ib[c:c + 65_536]]).mean(axis=1)
    return out


def _dropped_rows(first, second, estimated, exact, ids) -> pa.Table:
    """id, kept id and detail of every dropped member of a cluster: its pair with the kept one when that pair was
    found, else its closest found pair (named with 'via')."""
    from xwin_data.ops.dedup.lsh import clusters

    kept_of = clusters(first, second)
    best: dict[int, tuple[float, int, float, float]] = {}
    for x, y, est, ex in zip(first.tolist(), second.tolist(), estimated.tolist(), exact.tolist()):
        score = est if np.isnan(ex) else ex
        for me, other in ((x, y), (y, x)):
            if me in kept_of and (other == kept_of[me] or me not in best or
                                  (best[me][1] != kept_of[me] and score > best[me][0])):
                best[me] = (score, other, est, ex)
    dropped = sorted(kept_of)
    named = set(dropped) | set(kept_of.values()) | {best[x][1] for x in dropped}
    order = sorted(named)
    name = dict(zip(order, ids.take(pa.array(order, pa.int64())).to_pylist())) if order else {}
    rows = {"id": [], "kept": [], "detail": []}
    for x in dropped:
        _, other, est, ex = best[x]
        kept = kept_of[x]
        via = "" if other == kept else f", via {name[other]}"
        verified = "" if np.isnan(ex) else f", verified jaccard {ex:.3f}"
        rows["id"].append(name[x])
        rows["kept"].append(name[kept])
        rows["detail"].append(f"near duplicate of {name[kept]} (estimated jaccard {est:.3f}{verified}{via})")
    return pa.table(rows, schema=pa.schema([("id", pa.string()), ("kept", pa.string()), ("detail", pa.string())]))
