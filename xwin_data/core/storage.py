"""Inputs that live in object stores or on the Hub (`s3://…`, `gs://…`, `hf://datasets/…`), read through pyarrow
and fsspec filesystems, so a recipe runs unchanged on a cluster whose nodes share no local disk.

A remote input is identified by its URL, size and modification time (that is its fingerprint), and copied once into
the catalog's cache folder under a name made from that identity; the readers then work on the copy exactly as on a
local file, and a cluster's workers read the same copy from the catalog's shared filesystem. S3 credentials and
endpoint come from the usual AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_ENDPOINT_URL` for an S3-compatible server); they are never stored.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from xwin_data.core.fingerprint import stable_hash

_REMOTE = re.compile(r"^(s3|gs|gcs|hf)://", re.I)


def is_remote(path: str) -> bool:
    return bool(_REMOTE.match(str(path)))


def filesystem(url: str):
    """(pyarrow filesystem, path inside it) for a remote URL."""
    import pyarrow.fs as pafs

    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return pafs.S3FileSystem(endpoint_override=endpoint, region=region), rest
    if scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem(), rest
    if scheme == "hf":
        from huggingface_hub import HfFileSystem

        return pafs.PyFileSystem(pafs.FSSpecHandler(HfFileSystem())), rest
    raise ValueError(f"unsupported input URL {url!r} (s3://, gs://, hf:// are read)")


def remote_identity(url: str) -> dict[str, Any]:
    """What changes when the remote object changes: URL, size, modification time. A missing object is an error
    that names it."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(url)
    try:
        info = fs.get_file_info(inner)
    except OSError as err:
        raise FileNotFoundError(f"cannot read {url}: {err}") from None
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"input not found: {url}")
    mtime = info.mtime.isoformat() if info.mtime is not None else None
    return {"url": url, "size": info.size, "mtime": mtime}


def localize(url: str, cache_dir: Path | str) -> Path:
    """The local copy of a remote input in the catalog's cache, made once per identity (written aside, then
    renamed into place, so a killed copy never looks finished)."""
    import pyarrow.fs as pafs

    identity = remote_identity(url)
    name = url.rstrip("/").rsplit("/", 1)[-1] or "input"
    folder = Path(cache_dir) / "inputs" / stable_hash(identity, length=16)
    final = folder / name
    if final.exists() and final.stat().st_size == identity["size"]:
        return final
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.part"
    fs, inner = filesystem(url)
    pafs.copy_files(inner, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    os.replace(tmp, final)
    return final
