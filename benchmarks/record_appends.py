"""Appending to the `runs` / `evals` record tables: one new Parquet part per row (this toolkit) next to rewriting
every earlier row into each new version (the baseline, what the tables did before), side by side in one run.

    python benchmarks/record_appends.py            # 400 appends each, rows of ~15 KB (a run's config and metrics)
    python benchmarks/record_appends.py --rows 1000 --payload 200

Reports the mean seconds of the first and the last 50 appends of each, and the bytes the last append wrote; the
part-per-row append stays flat while the rewrite grows with the rows before it.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from xwin_data.core.catalog import Catalog  # noqa: E402
from xwin_data.training.records import EVALS_SCHEMA, append_record  # noqa: E402


def rewrite_append(cat: Catalog, name: str, row: dict, schema: pa.Schema) -> None:
    """The baseline: the new version holds every earlier row rewritten, plus the new one."""
    new = pa.Table.from_pylist([{k: row.get(k) for k in schema.names}], schema=schema)
    tv = cat.current(name)
    table = pa.concat_tables([pq.read_table(cat.root / tv.path / "data", schema=schema), new]) if tv else new
    staged = cat.work_dir / "records" / f"{name}-{uuid.uuid4().hex[:8]}"
    (staged / "data").mkdir(parents=True)
    pq.write_table(table, staged / "data" / "part-00000.parquet")
    cat.publish([{"name": name, "fingerprint": uuid.uuid4().hex, "staged": staged, "rows": table.num_rows,
                  "n_drops": 0, "build_id": None, "stats": {"rows": table.num_rows}}], [])


def newest_bytes(cat: Catalog, name: str) -> int:
    data = cat.root / cat.current(name).path / "data"
    newest = max(data.glob("*.parquet"), key=lambda p: p.name)
    return newest.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--payload", type=int, default=1000, help="entries of the JSON field of each row (~15 bytes each)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="xwin-appends-"))
    try:
        cat = Catalog(folder / "cat")
        cat.init()
        times: dict[str, list[float]] = {"parts": [], "rewrite": []}
        rng = random.Random(0)
        for i in range(args.rows):
            row = {"eval_id": f"e{i}", "stage": "bench", "model_path": "/models/" + "x" * 200, "n_prompts": i,
                   "best_of": "{" + ", ".join(f'"{n}": {rng.random():.6f}' for n in range(args.payload)) + "}"}
            for kind, fn in (("parts", append_record), ("rewrite", rewrite_append)):  # alternate: same load
                t = time.perf_counter()
                fn(cat, f"evals_{kind}", row, EVALS_SCHEMA)
                times[kind].append(time.perf_counter() - t)
        for kind, ts in times.items():
            first, last = sum(ts[:50]) / 50, sum(ts[-50:]) / 50
            print(f"{kind:8s} first 50: {first * 1000:7.2f} ms/append   last 50: {last * 1000:7.2f} ms/append   "
                  f"last append wrote {newest_bytes(cat, f'evals_{kind}'):,} bytes")
        print(f"last-50 ratio rewrite / parts: {sum(times['rewrite'][-50:]) / sum(times['parts'][-50:]):.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
