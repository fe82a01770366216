"""Stable hashes: of JSON-able configs, of files and folders outside the catalog, and of library versions."""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

SMALL_FILE = 64 * 1024 * 1024  # files above this are identified by size and mtime, not content


def stable_hash(obj: Any, length: int = 32) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    if size > SMALL_FILE:
        return f"size={size},mtime={mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_fingerprint(path: str | Path) -> str:
    """Content hash of a file, or of every file under a folder (large files by size and mtime)."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return _file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)
    if p.is_dir():
        parts = []
        for f in sorted(x for x in p.rglob("*") if x.is_file() and ".cache" not in x.relative_to(p).parts):
            st = f.stat()
            parts.append((str(f.relative_to(p)), _file_digest(str(f.resolve()), st.st_size, st.st_mtime_ns)))
        return stable_hash(parts)
    return f"missing:{p}"


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of the libraries that shaped a table: always the core, and the model stack where loaded."""
    from importlib import metadata

    names = ["xwin-data", "duckdb", "pyarrow", "great-expectations", *extra]
    optional = ["torch", "transformers", "trl", "vllm", "openai", "tokenizers", "datasketch", "py3langid", "ftfy"]
    names += [n for n in optional if n.replace("-", "_") in sys.modules]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out

