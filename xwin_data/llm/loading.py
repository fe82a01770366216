"""Loading a model a user named: what goes wrong there is the user's to fix (a folder without a config, a typo in
a Hub id, no network for a Hub model), so it is reported as one line naming the model, not as a traceback."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from xwin_data.core.errors import ModelLoadError


@contextmanager
def loading(name: str) -> Iterator[None]:
    """Turn `from_pretrained`'s errors for `name` (OSError: files missing or unreachable; ValueError: not a model
    it knows) into a `ModelLoadError`."""
    try:
        yield
    except (OSError, ValueError) as err:
        said = " ".join(str(err).split()) or type(err).__name__
        raise ModelLoadError(f"model {name}: cannot load it: {said[:400]}") from err
