"""The toolkit's own folder on a machine (`XWIN_DATA_HOME`, by default `~/.cache/xwin-data`): what it makes once
and keeps between builds, such as the tiny local models and arrays derived from libraries' data."""
from __future__ import annotations

import os
from pathlib import Path


def xwin_home() -> Path:
    return Path(os.environ.get("XWIN_DATA_HOME", Path.home() / ".cache" / "xwin-data"))
