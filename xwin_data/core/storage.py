"""Inputs that live in object stores or on the Hub (`s3://…`, `gs://…`, `hf://datasets/…`), read through pyarrow
and fsspec filesystems, so a recipe runs unchanged on a cluster whose nodes share no local disk.

A remote input is one object, or a folder (prefix) or glob of objects, expanded to its files in name order (hidden
files and those starting with `_` are not data, as in a local folder). It is identified by its URL and each file's
size and modification time (that is its fingerprint), and copied once into the catalog's cache folder under a name
made from that identity: one file, or a folder holding the files at their names relative to the folder (the glob's
base); the readers then work on the copy exactly as on a local file or folder of shards, and a cluster's workers
read the same copy from the catalog's shared filesystem. S3 credentials and endpoint come from the usual AWS
environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for an S3-compatible
server); they are never stored.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from xwin_data.core.fingerprint import stable_hash

_REMOTE = re.compile(r"^(s3|gs|gcs|hf)://", re.I)
_GLOB_CHARS = re.compile(r"[*?\[]")


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
    """What changes when the remote input changes: the URL, and the size and modification time of the object or of
    each file of the folder or glob. A missing object, or a folder or glob with no files, is an error that names it."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(url)
    if not _GLOB_CHARS.search(inner):
        try:
            info = fs.get_file_info(inner.rstrip("/") or inner)
        except OSError as err:
            raise FileNotFoundError(f"cannot read {url}: {err}") from None
        if info.type == pafs.FileType.File:
            return {"url": url, "size": info.size, "mtime": _mtime(info)}
        if info.type != pafs.FileType.Directory:
            raise FileNotFoundError(f"input not found: {url}")
    files = _listing(fs, inner, url)
    if not files:
        raise FileNotFoundError(f"no input files match {url}")
    return {"url": url, "files": files}


def _mtime(info) -> str | None:
    return info.mtime.isoformat() if info.mtime is not None else None


def _base(inner: str) -> str:
    """The folder a glob's files are named relative to: the parts before the first one with a wildcard."""
    parts = inner.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if _GLOB_CHARS.search(part):
            return "/".join(parts[:i])
    return "/".join(parts)


def _listing(fs, inner: str, url: str) -> list[list]:
    """[name relative to the folder (or the glob's base), size, mtime] of each data file, in name order."""
    import pyarrow.fs as pafs
    from fsspec.utils import glob_translate

    base = _base(inner)
    match = re.compile(glob_translate(inner.rstrip("/"))).match if _GLOB_CHARS.search(inner) else None
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as err:
        raise FileNotFoundError(f"cannot read {url}: {err}") from None
    files = []
    for info in infos:
        if info.type != pafs.FileType.File or (match is not None and not match(info.path)):
            continue
        name = info.path[len(base):].lstrip("/")
        if any(part.startswith((".", "_")) for part in name.split("/")):
            continue  # `_SUCCESS`, `.crc`: not data, as in a local folder
        files.append([name, info.size, _mtime(info)])
    return sorted(files)


def localize(url: str, cache_dir: Path | str) -> Path:
    """The local copy of a remote input in the catalog's cache, made once per identity (written aside, then
    renamed into place, so a killed copy never looks finished): a file, or a folder of the folder's or glob's
    files."""
    import pyarrow.fs as pafs

    identity = remote_identity(url)
    fs, inner = filesystem(url)
    local = pafs.LocalFileSystem()
    if "files" not in identity:
        name = url.rstrip("/").rsplit("/", 1)[-1] or "input"
        folder = Path(cache_dir) / "inputs" / stable_hash(identity, length=16)
        final = folder / name
        if final.exists() and final.stat().st_size == identity["size"]:
            return final
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.part"
        pafs.copy_files(inner, str(tmp), source_filesystem=fs, destination_filesystem=local)
        os.replace(tmp, final)
        return final
    base = _base(inner)
    name = base.rsplit("/", 1)[-1] or "input"
    final = Path(cache_dir) / "inputs" / stable_hash(identity, length=16) / name
    if final.is_dir():
        return final
    tmp = final.parent / f".{name}.{os.getpid()}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, _size, _mtime_ in identity["files"]:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(f"{base}/{rel}" if base else rel, str(tmp / rel), source_filesystem=fs,
                        destination_filesystem=local)
    try:
        os.replace(tmp, final)
    except OSError:  # another build copied the same files first
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    return final
