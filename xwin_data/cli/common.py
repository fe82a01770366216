"""What every command of `xwin-data` shares: the `--catalog` option and how an expected error is printed (one line
on stderr, or its traceback under `--debug`)."""
from __future__ import annotations

import typer

from xwin_data.core.progress import console

DEBUG = {"on": False}  # set by the app's `--debug` option

CatalogOpt = typer.Option("xwin-catalog", "--catalog", "-c", envvar="XWIN_DATA_CATALOG",
                          help="Catalog folder where tables live (env XWIN_DATA_CATALOG).")


def print_error(message: str) -> None:
    """`error: message` on stderr as one line, whatever the terminal's width (the message is not markup)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print `message` as an error and end the command with exit `code`."""
    print_error(message)
    raise typer.Exit(code)


def fail_on(err: BaseException, code: int = 2) -> None:
    """An expected error caught by a command: one line and exit `code`; with --debug, its traceback."""
    if DEBUG["on"]:
        raise err
    fail(str(err), code)
