"""Arrays derived once per machine from what a library ships (py3langid's model unpacked into compact arrays, a
table of every code point's class computed by RE2), kept under `XWIN_DATA_HOME/derived/` as `.npy` files.

Deriving them costs ~0.8 CPU-s a build; loading them is a memory map, whose pages the build's processes share
through the page cache. The folder's name holds a hash of what the arrays depend on (the library's version and
this format's), so a new version derives them again. Where the folder cannot be written they are derived in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from typing import Callable

import numpy as np

from xwin_data.core.home import xwin_home

FORMAT = 1


def cached_arrays(name: str, depends_on: dict, derive: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays `derive` makes, from the folder of a previous call with the same `name` and `depends_on`
    (memory-mapped, read-only), or derived now and stored for the next call."""
    key = hashlib.sha256(json.dumps({"format": FORMAT, **depends_on}, sort_keys=True).encode()).hexdigest()[:16]
    folder = xwin_home() / "derived" / f"{name}-{key}"
    manifest = folder / "arrays.json"
    try:
        names = json.loads(manifest.read_text())
        # plain arrays over the mapped pages (a memmap's indexing runs Python code on every call)
        return {n: np.load(folder / f"{n}.npy", mmap_mode="r").view(np.ndarray) for n in names}
    except (OSError, ValueError):
        pass
    arrays = derive()
    tmp = folder.with_name(f".{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        for n, a in arrays.items():
            np.save(tmp / f"{n}.npy", a, allow_pickle=False)
        (tmp / "arrays.json").write_text(json.dumps(list(arrays)))
        os.rename(tmp, folder)  # complete or absent: another process may have stored the same arrays meanwhile
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return arrays
