"""Near-duplicate deduplication of conversations: MinHash signatures and LSH band keys computed in the workers,
candidate pairs from shared band keys, each verified by its exact shingle Jaccard before a drop; the first
occurrence in input order is kept, as by exact dedup (`xwin_data.ops.dedup.sharegpt`)."""
from __future__ import annotations

import bisect
import os
import time
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from xwin_data.core.context import sql_str
from xwin_data.ops.base import Op, Params, register
from xwin_data.text.batches import write_input_except
from xwin_data.text.minhash import sorted_unique


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
    """One batch's (ids, file of its signatures and band keys, file of its shingle sets, offsets in that file); runs
    in the stage's worker processes. The arrays go to scratch files of the worker's own rather than back in the
    result, which the executor keeps for every batch until the stage ends: signatures and band keys (.npz) for
    the calling process to collect, and the shingle sets (each document's sorted 32-bit hashes, one after another)
    for the exact check to read back one document at a time."""
    import uuid

    from xwin_data.text.minhash import band_keys, conversation_text, shingle_sets, shingles, signatures, word_hashes

    words, offsets = word_hashes(conversation_text(batch.column("messages"), params.on), params.max_words)
    hashes, sh_off = shingles(words, offsets, params.shingle_words)
    sig = signatures(hashes, sh_off, a, b)
    name = uuid.uuid4().hex
    sig_file = f"{scratch}/sig-{name}.npy"
    with open(sig_file, "wb") as fh:
        np.save(fh, sig)
        np.save(fh, band_keys(sig, params.bands, params.seed))
    sets_file, set_off = None, None
    if params.verify:
        flat, set_off = shingle_sets(hashes, sh_off)
        sets_file = f"{scratch}/sets-{name}.u32"
        flat.tofile(sets_file)
        set_off = np.asarray(set_off, dtype=np.int64)
    return None, (batch.column("id"), sig_file, sets_file, set_off)


SIG_BLOCK = 16  # signature columns per file: the estimate reads one block of every document's signature at a time
PAIR_CHUNK = 65_536


class _Signatures:
    """What the signing pass keeps, on disk in this process's scratch folder, in input order (row i is document i):
    the ids, the band keys and the signatures split by columns into blocks of `SIG_BLOCK`, so that an estimate needs
    one block of all documents in memory rather than every signature of every candidate."""

    def __init__(self, folder, num_perm: int, bands: int) -> None:
        self.folder, self.bands, self.rows = folder, bands, 0
        self.blocks = [(c, min(c + SIG_BLOCK, num_perm)) for c in range(0, num_perm, SIG_BLOCK)]
        self._files = [open(self.block_path(i), "wb") for i in range(len(self.blocks))]
        self._writers: dict = {}

    def block_path(self, i: int):
        return self.folder / f"sig-{i:03d}.u32"

    def add(self, ids: pa.Array, sig: np.ndarray, keys: np.ndarray) -> None:
        import pyarrow.parquet as pq

        for fh, (lo, hi) in zip(self._files, self.blocks):
            np.ascontiguousarray(sig[:, lo:hi]).tofile(fh)
        tables = {"ids": pa.table({"id": ids}), "bands": pa.table({f"b{j}": keys[:, j] for j in range(self.bands)})}
        for name, table in tables.items():
            if name not in self._writers:
                self._writers[name] = pq.ParquetWriter(self.folder / f"{name}.parquet", table.schema)
            self._writers[name].write_table(table)
        self.rows += len(ids)

    def close(self) -> None:
        for fh in self._files:
            fh.close()
        for w in self._writers.values():
            w.close()

    def band(self, j: int) -> np.ndarray:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.folder / "bands.parquet").read(columns=[f"b{j}"]).column(0).to_numpy()

    def ids(self) -> pa.Array:
        import pyarrow.parquet as pq

        return pq.read_table(self.folder / "ids.parquet").column(0).combine_chunks()

    def equal_counts(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """How many signature entries each pair has equal (its MinHash estimate times num_perm), a block of columns
        at a time."""
        equal = np.zeros(len(first), np.uint16)
        for i, (lo, hi) in enumerate(self.blocks):
            block = np.fromfile(self.block_path(i), dtype=np.uint32).reshape(-1, hi - lo)
            for c in range(0, len(first), PAIR_CHUNK):
                a, b = first[c:c + PAIR_CHUNK], second[c:c + PAIR_CHUNK]
                equal[c:c + PAIR_CHUNK] += (block[a] == block[b]).sum(axis=1, dtype=np.uint16)
            del block
        return equal


class _ShingleSets:
    """Each document's shingle set, read from the file its worker wrote when a pair needs it (one `pread`), so the
    check holds two sets at a time, not those of every candidate."""

    MAX_OPEN = 256

    def __init__(self, files: list[tuple[str, np.ndarray]]) -> None:
        self.paths = [path for path, _ in files]
        self.offsets = [off for _, off in files]
        self.starts = np.cumsum([0] + [len(off) - 1 for off in self.offsets]).tolist()  # first document of each file
        self._open: dict[int, int] = {}

    def get(self, doc: int) -> np.ndarray:
        f = bisect.bisect_right(self.starts, doc) - 1
        i = doc - self.starts[f]
        lo, hi = self.offsets[f][i:i + 2].tolist()
        fd = self._open.get(f)
        if fd is None:
            if len(self._open) >= self.MAX_OPEN:  # the oldest goes (dicts keep insertion order)
                os.close(self._open.pop(next(iter(self._open))))
            fd = self._open[f] = os.open(self.paths[f], os.O_RDONLY)
        return np.frombuffer(os.pread(fd, 4 * (hi - lo), 4 * lo), dtype=np.uint32)

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()


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
        from functools import partial

        from xwin_data.ops.dedup.lsh import bucket_pairs, cluster_roots, decode
        from xwin_data.text.minhash import permutations

        if not params.enabled:
            ctx.pass_through()
            ctx.stats["near_duplicates"] = "disabled"
            return
        scratch = ctx.tmp_dir / f"{ctx.stage_id}-minhash"  # what this process writes
        scratch.mkdir(parents=True, exist_ok=True)
        sets_dir = ctx.work_dir / "minhash-sets"  # what the workers write: kept with their committed batches
        sets_dir.mkdir(parents=True, exist_ok=True)
        store = _Signatures(scratch, params.num_perm, params.bands)
        set_files: list[tuple[str, np.ndarray]] = []

        def keep(extra: tuple) -> None:  # in the calling process, in input order: row i of the files is ordinal i
            ids, sig_file, sets_file, set_off = extra
            set_files.append((sets_file, set_off))
            with open(sig_file, "rb") as fh:
                sig, keys = np.load(fh), np.load(fh)
            store.add(ids, sig, keys)  # the file stays with the committed batch (a resumed build reads it again)

        clock = time.perf_counter()
        a, b = permutations(params.num_perm, params.seed)
        schema = ctx.con.sql(f"SELECT * FROM {ctx.input()} LIMIT 0").to_arrow_table().schema
        try:
            ctx.executor.map_input(ctx, partial(minhash_batch, params=params, a=a, b=b, scratch=str(sets_dir)),
                                   schema, keep, batch_size=params.batch_size, processes=True,
                                   description="minhash signatures")
        finally:
            store.close()
        for leftover in glob.glob(ctx.output_glob()):  # the signing pass writes no rows, only an empty part
            os.remove(leftover)

        seconds = {"sign": time.perf_counter() - clock}
        clock = time.perf_counter()
        found = np.zeros(0, np.int64)
        if store.rows:
            for j in range(params.bands):  # merged band by band: a copy's pair is found in every band, and
                # holding all bands' pairs before merging them would take `bands` times the memory
                pairs = bucket_pairs(store.band(j))
                found = sorted_unique(np.concatenate([found, pairs])) if len(found) else sorted_unique(pairs)
        n_found = len(found)
        # ordinals < 2**32 (the codes say so): a candidate pair is 4 + 4 bytes and a 2-byte count of equal entries
        first, second = (x.astype(np.uint32) for x in decode(found))
        del found
        equal = store.equal_counts(first, second) if len(first) else np.zeros(0, np.uint16)
        floor = params.threshold - params.estimate_margin if params.verify else params.threshold
        sel = _estimate_at_least(equal, params.num_perm, floor)
        first, second, equal = first[sel], second[sel], equal[sel]
        del sel
        seconds["candidates"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if params.verify:
            checked, exact, root = _verify(_ShingleSets(set_files), store.rows, params, first, second, equal)
            n_verified = len(checked)
            keep_pairs = exact >= params.threshold
            ok, exact = checked[keep_pairs], exact[keep_pairs]
            in_order = np.argsort(ok, kind="stable")  # back in candidate order
            ok, exact = ok[in_order], exact[in_order]
        else:
            n_verified = 0
            ok = np.flatnonzero(_estimate_at_least(equal, params.num_perm, params.threshold))
            exact = np.full(len(ok), np.nan)
            root = cluster_roots(first[ok], second[ok], store.rows) if len(ok) else np.zeros(0, np.int64)
        estimated = equal[ok] / np.float64(params.num_perm)
        near_file = scratch / "near.parquet"
        n_dropped = _write_dropped(near_file, first[ok].astype(np.int64), second[ok].astype(np.int64), estimated,
                                   exact, root, store)
        seconds["verify"] = time.perf_counter() - clock
        clock = time.perf_counter()
        ctx.con.execute(f"CREATE TEMP VIEW __near AS SELECT * FROM read_parquet({sql_str(str(near_file))})")
        write_input_except(ctx, "SELECT id FROM __near")
        ctx.drop_sql("SELECT id AS source_id, 'near_duplicate' AS reason, detail FROM __near")
        seconds["write"] = time.perf_counter() - clock
        ctx.stats.update({"candidate_pairs": int(n_found), "verified_pairs": int(n_verified),
                          "near_duplicates": n_dropped,
                          "seconds": {k: round(v, 2) for k, v in seconds.items()}})


def _estimate_at_least(equal: np.ndarray, num_perm: int, floor: float) -> np.ndarray:
    """Which pairs' MinHash estimate (equal entries / num_perm, as a float) reaches `floor`, a chunk at a time."""
    out = np.empty(len(equal), bool)
    for c in range(0, len(equal), PAIR_CHUNK):
        out[c:c + PAIR_CHUNK] = equal[c:c + PAIR_CHUNK] / np.float64(num_perm) >= floor
    return out


def _verify(sets: _ShingleSets, n_docs: int, params: NearParams, first: np.ndarray, second: np.ndarray,
            equal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, exact shingle Jaccard) of the candidate pairs that decide the clusters, and each document's
    cluster root (the smallest ordinal joined to it by a checked pair at the threshold).

    Pairs are taken by estimate, highest first (candidates come in (first, second) order, which a stable sort
    keeps among equal estimates); a pair whose two members are already joined by verified pairs is not checked
    (it cannot change a cluster), so a dump full of copies costs about one check per copy. Each checked pair reads
    its two shingle sets from the workers' files; beyond one batch this step holds the candidate pairs (10 bytes
    each and a 4-byte place in the order) and one union-find entry per document."""
    from array import array

    from xwin_data.ops.dedup.lsh import Clusters
    from xwin_data.text.minhash import jaccard

    clusters = Clusters(n_docs)
    find = clusters.find
    order = np.argsort(np.uint16(params.num_perm) - equal, kind="stable")
    order = order.astype(np.int32) if len(order) < 2**31 else order
    positions, values = array("q"), array("d")
    try:
        for c in range(0, len(order), PAIR_CHUNK):
            chunk = order[c:c + PAIR_CHUNK]
            for p, a, b in zip(chunk.tolist(), first[chunk].tolist(), second[chunk].tolist()):
                x, y = find(a), find(b)
                if x == y:
                    continue
                value = jaccard(sets.get(a), sets.get(b))
                positions.append(p)
                values.append(value)
                if value >= params.threshold:
                    clusters.join_roots(x, y)
    finally:
        sets.close()
    return np.frombuffer(positions, dtype=np.int64), np.frombuffer(values, dtype=np.float64), clusters.roots()


def _write_dropped(path, first, second, estimated, exact, root: np.ndarray, store: _Signatures) -> int:
    """Write id, kept id and detail of every dropped member of a cluster (`root`: each document's cluster root) to
    `path`: its pair with the kept one when that pair was found, else its closest found pair (the first of equals,
    named with 'via'). Returns the count."""
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("kept", pa.string()), ("detail", pa.string())])
    n_pairs = len(first)
    me, other = np.concatenate([first, second]), np.concatenate([second, first])
    score = np.where(np.isnan(exact), estimated, exact)
    pair = np.concatenate([np.arange(n_pairs), np.arange(n_pairs)])
    dropped = root[me] != me if n_pairs else np.zeros(0, bool)
    me, other, pair = me[dropped], other[dropped], pair[dropped]
    is_kept = other == root[me]
    order = np.lexsort((pair, -score[pair], ~is_kept, me))
    me, other, pair = me[order], other[order], pair[order]
    firsts = np.flatnonzero(np.concatenate([[True], me[1:] != me[:-1]])) if len(me) else np.zeros(0, np.int64)
    me, other, pair = me[firsts], other[firsts], pair[firsts]
    ids = store.ids() if len(me) else None
    with pq.ParquetWriter(path, schema) as writer:
        for c in range(0, len(me), PAIR_CHUNK):
            x, o, p = me[c:c + PAIR_CHUNK], other[c:c + PAIR_CHUNK], pair[c:c + PAIR_CHUNK]
            kept = root[x]
            names = [ids.take(pa.array(v)).to_pylist() for v in (x, kept, o)]
            details = [
                f"near duplicate of {k} (estimated jaccard {est:.3f}"
                + ("" if ex != ex else f", verified jaccard {ex:.3f}") + ("" if oo == kk else f", via {on}") + ")"
                for k, on, oo, kk, est, ex in zip(names[1], names[2], o.tolist(), kept.tolist(),
                                                   estimated[p].tolist(), exact[p].tolist())]
            writer.write_table(pa.table({"id": names[0], "kept": names[1], "detail": details}, schema=schema))
        if not len(me):
            writer.write_table(schema.empty_table())
    return len(me)
