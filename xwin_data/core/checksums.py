"""Sizes and checksums of a table version's Parquet parts, recorded at publish and checked when read.

A size check costs one `stat` per part and catches truncation and lost files; the checksum (xxh3-128, several
GB/s on one core) reads every byte and catches damage that keeps the size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import xxhash

ALGORITHM = "xxh3_128"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class PartRecord:
    file: str  # relative to the table version's folder, e.g. data/part-00000.parquet
    bytes: int
    checksum: str


def checksum(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"{ALGORITHM}:{h.hexdigest()}"


def parts_of(folder: Path) -> list[Path]:
    """The Parquet parts of a table version folder (data and drops), in a stable order."""
    return sorted(p for sub in ("data", "drops") for p in (folder / sub).glob("*.parquet"))


def record_parts(folder: Path) -> list[PartRecord]:
    return [PartRecord(str(p.relative_to(folder)), p.stat().st_size, checksum(p)) for p in parts_of(folder)]


def check_parts(folder: Path, records: list[PartRecord], verify: bool = False) -> list[str]:
    """Problems with a published folder against its records, one line each naming the file; [] when sound.

    Sizes and presence always; checksums when `verify`. A part on disk that was never recorded is a problem
    too: it would be read as part of the table."""
    problems = []
    if not folder.is_dir():
        return [f"{folder}: folder is missing"]
    for rec in records:
        path = folder / rec.file
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{path}: file is missing")
            continue
        if size != rec.bytes:
            problems.append(f"{path}: {size:,} bytes, {rec.bytes:,} recorded")
        elif verify and checksum(path) != rec.checksum:
            problems.append(f"{path}: checksum differs from the one recorded at publish")
    known = {rec.file for rec in records}
    for path in parts_of(folder):
        if str(path.relative_to(folder)) not in known:
            problems.append(f"{path}: part was not published with this table")
    return problems
