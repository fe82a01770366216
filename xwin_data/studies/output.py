"""Where a study writes: a folder with results.parquet (the numbers behind every figure), summary.json, PNGs."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from xwin_data.core.catalog import Catalog


def study_dir(catalog: Catalog, name: str, out: Path | None) -> Path:
    path = Path(out) if out else catalog.root / "studies" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_results(folder: Path, rows: list[dict], summary: dict) -> None:
    pq.write_table(pa.Table.from_pylist(rows), folder / "results.parquet")
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
