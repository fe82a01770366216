"""Near-dedup quality on planted pairs: recall, precision and time of the `dedup_near` stage per band setting.

    python benchmarks/dedup_quality.py                       # 20K conversations, 1,000 near + 1,000 similar pairs
    python benchmarks/dedup_quality.py --unique 5000 --near 300 --similar 300

The input (xwin_data.text.planted) holds unrelated conversations, near copies (0.5-2% of words edited, plus case
and whitespace changes; they must be dropped) and similar-but-distinct ones (exact 5-word-shingle Jaccard 0.3-0.75;
they must stay). Recall = near copies dropped / near copies; precision = near copies dropped / all drops. Each
setting rebuilds only the near-dedup stage of one catalog (the read stage is shared); the time is that stage's
wall time. Settings: 128 permutations in 16 bands of 8 rows (candidate threshold ~0.71) or 32 x 4 (~0.42) or
64 x 2 (~0.13), decided on the MinHash estimate or verified by exact shingle Jaccard.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPE = """\
name: dedup_quality
vars: {input: x, bands: 32, verify: true}
stages:
  - id: raw
    op: read_conversations
    params: {path: "${input}"}
  - id: near
    op: dedup_near
    inputs: [raw]
    params: {bands: "${bands}", verify: "${verify}"}
"""
SETTINGS = [(16, False), (16, True), (32, False), (32, True), (64, True)]


def main() -> None:
    import xwin_data
    from xwin_data.text.planted import planted

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unique", type=int, default=20_000)
    ap.add_argument("--near", type=int, default=1_000)
    ap.add_argument("--similar", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    data = planted(args.unique, args.near, args.similar, seed=args.seed)
    copies = {copy for _, copy in data.near}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "planted.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in data.records))
        (tmp / "r.yaml").write_text(RECIPE)
        print(f"{len(data.records)} conversations: {len(data.near)} near copies, {len(data.similar)} similar pairs")
        print(f"{'bands x rows':>12} {'decided on':>10} {'recall':>7} {'precision':>9} {'drops':>6} {'seconds':>8}")
        for bands, verify in SETTINGS:
            report = xwin_data.build(tmp / "r.yaml", tmp / "cat", [f"input={path}", f"bands={bands}",
                                                                   f"verify={str(verify).lower()}"],
                                     show_progress=False)
            stage = next(s for s in report.stages if s.stage_id == "near")
            con = xwin_data.connect(tmp / "cat")
            dropped = {r[0] for r in con.execute("SELECT source_id FROM drops WHERE reason = 'near_duplicate' "
                                                 "AND stage = 'near'").fetchall()}
            con.close()
            hit = len(dropped & copies)
            row = {"bands": bands, "rows": 128 // bands, "verify": verify, "recall": hit / len(copies),
                   "precision": hit / len(dropped) if dropped else 1.0, "drops": len(dropped),
                   "seconds": round(stage.seconds, 2), "candidate_pairs": stage.stats.get("candidate_pairs")}
            results.append(row)
            print(f"{bands:>7} x {128 // bands:<3}{'exact' if verify else 'estimate':>10} {row['recall']:>7.4f} "
                  f"{row['precision']:>9.4f} {len(dropped):>6} {row['seconds']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
