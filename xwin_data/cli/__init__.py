"""The `xwin-data` command line: the typer app (`app.py`), its command groups (train, study, eval), show and shell.

Nothing below this package imports it: the library works without the CLI.
"""
from xwin_data.cli.app import app, main

__all__ = ["app", "main"]
