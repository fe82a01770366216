"""Which shipped recipe or command makes a table or a model folder, so a "not found" error can name the fix."""
from __future__ import annotations

import re
from pathlib import Path

# Output tables of the shipped recipes (stage tables and declared families), by name pattern.
RECIPE_TABLES: list[tuple[str, str]] = [
    (r"xwin_set_prompts|xwin_eval_prompts|xwin_responses(_shortfall)?|xwin_set|rs_best_of(_\d+)?|"
     r"dpo_pairs(_\w+)?|wind_groups|bon_curve(_per_prompt)?", "recipes/xwin_set.yaml"),
    (r"sharegpt_\w+|sft_sharegpt(_\w+)?", "recipes/sharegpt_sft.yaml"),
    (r"xwin_pair(_\w+)?", "recipes/xwin_pair.yaml"),
    (r"hh_\w+", "train/recipes/hh_rlhf.yaml --set hh_dir=PATH/anthropics_hh-rlhf"),
]
# Tables that commands (not recipes) append to.
COMMAND_TABLES = {"runs": "any `xwin-data train ...` run", "evals": "a `xwin-data train ...` run with "
                  "bon_eval_prompts_table set", "eval_results": "`xwin-data eval ...`"}
TRAIN_STAGES = ("sft", "rm", "rs", "dpo", "wind")


def table_origin(table: str) -> str | None:
    """The command that makes `table`, e.g. "xwin-data build recipes/xwin_set.yaml"; None when unknown."""
    if table in COMMAND_TABLES:
        return COMMAND_TABLES[table]
    for pattern, recipe in RECIPE_TABLES:
        if re.fullmatch(pattern, table):
            return f"xwin-data build {recipe}"
    return None


def missing_table_message(table: str, catalog: str | Path) -> str:
    origin = table_origin(table)
    fix = f"; make it with `{origin}`" if origin and origin.startswith("xwin-data") else (
        f"; it is written by {origin}" if origin else "; build the recipe that makes it, or check the name "
        "(`xwin-data show` lists the tables)")
    return f"table {table!r} is not in catalog {catalog}{fix}"


def looks_local(name: str) -> bool:
    """A model name that can only be a folder here (not a hub id like `org/model`)."""
    return name.startswith(("/", "./", "../", "~")) or name.split("/")[0] == "runs" or Path(name).parent.is_dir() \
        and Path(name).parent != Path(".")


def missing_model_message(name: str) -> str:
    stage = Path(name).name
    if stage in TRAIN_STAGES:
        return (f"model folder {name} does not exist; train it first with `xwin-data train {stage}` "
                f"(its output_dir), or set the config's model path")
    return f"model folder {name} does not exist; give a model folder, a hub id, or tiny-policy / tiny-reward"
