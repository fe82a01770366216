"""Trainer-format exporters and the dataset card. Importing this package registers them with
`xwin_data.exports.base` (the CLI imports it before `xwin-data export`)."""
from __future__ import annotations

from xwin_data.exports import card, llama_factory, openrlhf, trl  # noqa: F401  (registration side effects)

__all__ = ["card", "llama_factory", "openrlhf", "trl"]
