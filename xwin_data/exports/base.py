"""Exporters: a catalog table to files other tools load. Registered by format name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from xwin_data.core.catalog import Catalog
from xwin_data.core.connection import connect

Exporter = Callable[[Catalog, str, Path], dict]
EXPORTERS: dict[str, tuple[Exporter, str]] = {}


def exporter(name: str, help: str) -> Callable[[Exporter], Exporter]:
    def wrap(fn: Exporter) -> Exporter:
        EXPORTERS[name] = (fn, help)
        return fn
    return wrap


def _table_arrow(catalog: Catalog, table: str):
    con = connect(catalog, canned_views=False)
    try:
        return con.sql(f'SELECT * FROM "{table}"').to_arrow_table()
    finally:
        con.close()


@exporter("hf", "a Hugging Face `datasets` folder: datasets.load_from_disk(OUT)")
def export_hf(catalog: Catalog, table: str, out: Path) -> dict:
    import datasets

    ds = datasets.Dataset(_table_arrow(catalog, table))
    if out.exists():
        shutil.rmtree(out)
    ds.save_to_disk(str(out))
    return {"rows": len(ds), "path": str(out)}


@exporter("jsonl", "one JSON object per line: OUT/<table>.jsonl")
def export_jsonl(catalog: Catalog, table: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{table}.jsonl"
    rows = 0
    with path.open("w", encoding="utf-8") as fh:
        for batch in _table_arrow(catalog, table).to_batches(10_000):
            for row in batch.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                rows += 1
    return {"rows": rows, "path": str(path)}


@exporter("parquet", "a single Parquet file: OUT/<table>.parquet")
def export_parquet(catalog: Catalog, table: str, out: Path) -> dict:
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{table}.parquet"
    data = _table_arrow(catalog, table)
    pq.write_table(data, path, compression="zstd")
    return {"rows": data.num_rows, "path": str(path)}


def export_table(catalog: Catalog, table: str, fmt: str, out: Path) -> dict:
    if catalog.current(table) is None:
        known = ", ".join(t.name for t in catalog.current_tables())
        raise KeyError(f"no table {table!r} in catalog {catalog.root} (tables: {known or 'none'})")
    if fmt not in EXPORTERS:
        raise KeyError(f"unknown export format {fmt!r} (formats: {', '.join(sorted(EXPORTERS))})")
    return EXPORTERS[fmt][0](catalog, table, Path(out))
