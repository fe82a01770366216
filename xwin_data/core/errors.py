"""One base class for the errors a user can cause and fix: the command line prints them as one line.

Anything that is an `XwinError` is an expected failure (a missing table, a bad config, no judge key): the CLI
prints its message and exits with its `exit_code` (2 unless the class says otherwise). Any other exception is a
bug and keeps its traceback. `xwin-data --debug ...` shows the traceback of expected errors too.
"""
from __future__ import annotations


class XwinError(Exception):
    """An error the user can fix; its message says what to do."""

    exit_code = 2


class MissingTableError(XwinError, KeyError):
    """A table the command needs is not in the catalog; the message names the recipe or command that makes it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingModelError(XwinError, FileNotFoundError):
    """A model folder the command needs does not exist; the message names the command that makes it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
