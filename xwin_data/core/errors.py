"""The toolkit's error family: one base class, so a caller (the CLI above all) can report any of them as one line.

Each class also keeps the built-in base it always had (ValueError, RuntimeError), so existing
`except ValueError` handlers keep working.
"""
from __future__ import annotations


class XwinError(Exception):
    """Base of every error the toolkit raises on purpose; its message is meant to be shown as is, on one line."""


class RecipeError(XwinError, ValueError):
    """A recipe problem found before any work: names the file, the line and the key."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, key: str | None = None):
        self.file, self.line, self.key = file, line, key
        where = ""
        if file:
            where = f"{file}:{line}" if line else file
        prefix = f"{where}: " if where else ""
        keypart = f"{key}: " if key else ""
        super().__init__(f"{prefix}{keypart}{message}")


class BuildError(XwinError, RuntimeError):
    """A stage failed or its output failed validation; nothing of that stage was published."""


class SchemaError(XwinError, ValueError):
    """A table contract is missing or malformed."""


class CatalogBusy(XwinError, RuntimeError):
    """Another build holds the catalog."""


class OverrideError(XwinError, ValueError):
    """A `--set key=value` override that cannot be parsed or applied."""
