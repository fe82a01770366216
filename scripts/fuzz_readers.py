"""Longer fuzz sweep of the conversation reader: several generated corpora of malformed shards (tests/fuzz_corpus.py),
each read in this process and in worker processes; prints records tried, crashes and unaccounted records.

    python scripts/fuzz_readers.py --seeds 5 --records 50000
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RECIPE = """\
name: fuzz
vars: {input: x}
stages:
  - {id: raw, op: read_conversations, schema: conversations, params: {path: "${input}"}}
  - {id: clean, op: clean_conversations, inputs: [raw]}
"""


def one_run(corpus, folder: Path, label: str, forked: bool) -> tuple[int, int, int]:
    """(records accounted, crashes, unaccounted) for one build of the corpus."""
    import xwin_data
    from xwin_data.core import workers
    from xwin_data.core.catalog import Catalog
    from xwin_data.ops.readers import sharegpt
    from fuzz_corpus import check

    saved_workers, saved_block = workers.available_workers, sharegpt.BLOCK_BYTES
    if forked:
        sharegpt.BLOCK_BYTES = 64 << 10
    else:
        workers.available_workers = lambda: 0
    try:
        recipe = folder / "r.yaml"
        recipe.write_text(RECIPE)
        try:
            xwin_data.build(recipe, folder / f"cat-{label}", [f"input={corpus.folder}"], show_progress=False)
        except Exception:  # noqa: BLE001 - a crash is what this sweep counts
            traceback.print_exc()
            return 0, 1, corpus.records
        con = xwin_data.connect(folder / f"cat-{label}")
        kept = [r[0] for r in con.execute("SELECT id FROM raw").fetchall()]
        dropped = [r[0] for r in con.execute("SELECT source_id FROM drops WHERE table_name = 'raw'").fetchall()]
        con.close()
        stats = Catalog(folder / f"cat-{label}").current("raw").stats
        try:
            counts = check(corpus, kept, dropped)
        except AssertionError as err:
            print(f"{label}: {err}")
            return len(kept) + len(dropped), 0, max(1, str(err).count("\n") + 1)
        unaccounted = abs(stats["records"] - counts["accounted"])
        return counts["accounted"], 0, unaccounted
    finally:
        workers.available_workers, sharegpt.BLOCK_BYTES = saved_workers, saved_block


def main() -> None:
    from fuzz_corpus import make_corpus

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--records", type=int, default=30_000, help="records per corpus")
    args = ap.parse_args()
    tried = crashes = unaccounted = written = 0
    kinds: set[str] = set()
    start = time.monotonic()
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            corpus = make_corpus(folder / "in", args.records, seed=seed)
            kinds |= corpus.kinds
            for forked in (False, True):
                label = f"seed{seed}-{'workers' if forked else 'here'}"
                a, c, u = one_run(corpus, folder, label, forked)
                tried += a
                written += corpus.records
                crashes += c
                unaccounted += u
                print(f"{label}: {corpus.records:,} records written, {a:,} accounted, {c} crashes, {u} unaccounted",
                      flush=True)
    print(f"\nfuzz: {written:,} records read over {len(kinds)} kinds of input, {crashes} crashes, "
          f"{unaccounted} unaccounted, {time.monotonic() - start:.0f} s")
    sys.exit(1 if crashes or unaccounted else 0)


if __name__ == "__main__":
    main()
