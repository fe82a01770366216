"""xwin-data: declarative, incremental, validated alignment data on DuckDB/Parquet."""
from __future__ import annotations

__version__ = "0.1.0"


def connect(catalog="xwin-catalog", **kwargs):
    """A DuckDB connection with every current table of the catalog as a view (see `xwin_data.connect`)."""
    from xwin_data.core.connection import connect as _connect

    return _connect(catalog, **kwargs)


def build(recipe_path, catalog="xwin-catalog", sets=None, **kwargs):
    """Build a recipe into a catalog, as `xwin-data build` does; returns the build report."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.core.engine import build as _build
    from xwin_data.core.recipe import load_recipe

    recipe = load_recipe(recipe_path, sets or [])
    return _build(recipe, Catalog(catalog), overrides=list(sets or []), **kwargs)


__all__ = ["__version__", "connect", "build"]
