"""Command groups of the CLI, one module each (`train`, `study`, `eval`, ...).

A module defines `app = typer.Typer(...)` and `NAME`, or a `register(root_app)` function for plain commands.
"""
