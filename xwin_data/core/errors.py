"""One base class for the errors a user can cause and fix: the command line prints them as one line.

Anything that is an `XwinError` is an expected failure (a missing table, a bad config, no judge key): the CLI
prints its message and exits with its `exit_code` (2 unless the class says otherwise). Any other exception is a
bug and keeps its traceback. `xwin-data --debug ...` shows the traceback of expected errors too.

Each class also keeps the built-in base it always had (ValueError, RuntimeError), so existing
`except ValueError` handlers keep working.
"""
from __future__ import annotations


class XwinError(Exception):
    """Base of every error the toolkit raises on purpose; its message is meant to be shown as is, on one line."""

    exit_code = 2


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

    exit_code = 1


class SchemaError(XwinError, ValueError):
    """A table contract is missing or malformed."""


class CatalogBusy(XwinError, RuntimeError):
    """Another build holds the catalog."""


class OverrideError(XwinError, ValueError):
    """A `--set key=value` override that cannot be parsed or applied."""


class ModelLoadError(XwinError, OSError):
    """A model named by a spec is there but does not load (no config, no weights, not a model folder)."""


class MissingModelError(XwinError, FileNotFoundError):
    """A model folder the command needs does not exist; the message names the command that makes it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
