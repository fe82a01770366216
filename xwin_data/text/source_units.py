"""Inputs read in pieces, so that many workers (forked processes, a cluster's tasks) share one file or dataset: a
Parquet file by row group, a saved Hugging Face dataset by its Arrow data files, a JSON shard whole. Each piece's
records are numbered as `xwin_data.text.sources.iter_records` numbers the whole input, so ids, positions and drops
do not depend on how the input was split. (JSONL is split into blocks of lines by `sources.jsonl_blocks`.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from xwin_data.text.sources import iter_records, load_hf, parquet_records, saved_to_disk


def parquet_row_groups(path: Path) -> list[int] | None:
    """Rows of each row group of a plain (not gzipped) Parquet file, the units it is read in; None where its footer
    cannot be read (the file is then read whole, and is one drop)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".gz":
        return None
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException, ValueError):
        return None
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def iter_parquet_row_group(path: Path, row_group: int, first: int, name: str) -> Iterator[tuple[int, Any]]:
    """The records of one row group, numbered from `first` as `iter_records` numbers the file's rows; a row group
    that cannot be read is one drop for its rows."""
    return parquet_records(path, name, f"row group {row_group} is not readable", first, [row_group])


def hf_data_files(path: str, split: str) -> list[tuple[Path, int]] | None:
    """The Arrow files a saved dataset's split is made of, with their rows, in order: the units it is read in.
    None where the dataset is not exactly those files (a loading script or hub id, an indices mapping left by
    `select` / `shuffle`, a dataset held in memory): it is then read where the build runs."""
    import pyarrow as pa

    if not saved_to_disk(Path(path)):
        return None
    ds = load_hf(path, split)
    if getattr(ds, "_indices", None) is not None or not ds.cache_files:
        return None
    files = []
    for cache_file in ds.cache_files:
        with pa.memory_map(cache_file["filename"]) as source:
            rows = sum(batch.num_rows for batch in pa.ipc.open_stream(source))
        files.append((Path(cache_file["filename"]), rows))
    if sum(rows for _, rows in files) != ds.num_rows:
        return None
    return files


def iter_arrow_file(path: Path, first: int) -> Iterator[tuple[int, Any]]:
    """The records of one Arrow data file of a saved dataset, numbered from `first` as `iter_records` numbers the
    dataset's rows."""
    import pyarrow as pa

    index = first
    with pa.memory_map(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            for lo in range(0, batch.num_rows, 10_000):
                for rec in batch.slice(lo, 10_000).to_pylist():
                    yield index, rec
                    index += 1


def iter_whole_file(path: str, kind: str, name: str) -> Iterator[tuple[int, Any]]:
    """The records of a shard read as one piece (JSON, which streams but does not split; a Parquet file whose
    footer cannot be read, which is then one drop; a file that is not data, one drop)."""
    return iter_records(path, kind, name=name)
