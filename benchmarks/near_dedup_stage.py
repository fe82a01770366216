"""The `dedup_near` stage alone at scale: a conversation table in Parquet (e.g. a kept `sft_build.py` catalog's
`sharegpt_dedup` data folder) read and near-deduplicated, with the peak memory of each stage (main process RSS,
largest other process RSS, all processes' PSS) and the stage's own counts.

    python benchmarks/sft_build.py --n 1000000 --only ours-near --keep /tmp/sft1m     # once: the 1M build
    python benchmarks/near_dedup_stage.py /tmp/sft1m/ours-near/catalog/tables/sharegpt_dedup/v0001-*/data /tmp/near1m
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_build import StageMemory  # noqa: E402


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    import xwin_data

    src, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    (out / "r.yaml").write_text(f"""\
name: near_dedup_stage
stages:
  - id: docs
    op: read_conversations
    params: {{path: {json.dumps(src)}, file_type: parquet}}
  - id: near
    op: dedup_near
    inputs: [docs]
    schema: conversations
""")
    monitor = StageMemory()
    start = time.monotonic()
    xwin_data.build(out / "r.yaml", out / "catalog", show_progress=False, memory_limit="2GB")
    peaks = monitor.stop()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print("peak memory by stage (GB): main process RSS, largest other process RSS, all processes' PSS")
    for stage, (main_rss, other, total) in peaks.items():
        print(f"  {stage:<12} {main_rss:>6.2f} {other:>6.2f} {total:>6.2f}")
    stats = xwin_data.connect(out / "catalog").execute(
        "SELECT stats FROM table_versions WHERE name = 'near' AND is_current").fetchone()[0]
    stats = json.loads(stats) if isinstance(stats, str) else stats
    stats = stats.get("stats", stats)
    print({k: stats.get(k) for k in ("rows_in", "candidate_pairs", "verified_pairs", "near_duplicates", "seconds")})
    print(f"wall {time.monotonic() - start:.0f} s, CPU {me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime:.0f} s, "
          f"largest process {max(me.ru_maxrss, kids.ru_maxrss) / 2**20:.2f} GB; "
          f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
