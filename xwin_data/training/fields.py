"""The fields every training stage shares (catalog, table, model, the after-training evaluation) and the
`key=value` override reader, without TRL: the command line checks a run's catalog, tables and model folders from
them before TRL is imported (seconds), and `xwin_data.training.config` mixes them into TRL's config classes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from xwin_data.core.errors import XwinError
from xwin_data.core.overrides import load_yaml_file, parse_override


class ConfigError(XwinError, ValueError):
    """A training config that cannot be read: names the file and the key."""


@dataclass
class StageArgs:
    """Fields shared by every training stage (mixed into the TRL config classes)."""

    catalog: str = field(default="xwin-catalog", metadata={"help": "Catalog folder holding the training table."})
    table: str = field(default="", metadata={"help": "Catalog table to train on (current version)."})
    model_name_or_path: str = field(default="tiny-policy", metadata={
        "help": "Model to start from: tiny-policy / tiny-reward (built locally), a folder, or a hub id."})
    tokenizer_name_or_path: Optional[str] = field(default=None, metadata={
        "help": "Tokenizer, when it is not stored with the model."})
    max_rows: Optional[int] = field(default=None, metadata={
        "help": "Use at most this many rows of the table (first by id order; for smoke runs)."})
    stage_name: Optional[str] = field(default=None, metadata={
        "help": "Name recorded in `runs` and `evals` (default: the script's stage, e.g. sft)."})
    record_run: bool = field(default=True, metadata={"help": "Append a row to the catalog's `runs` table."})
    # Evaluation after training: mean reward of best-of-n samples on held-out prompts, written to `evals`.
    bon_eval_prompts_table: Optional[str] = field(default=None, metadata={
        "help": "Catalog table of held-out prompts (a `prompt` or `messages` column); empty = no evaluation."})
    bon_eval_max_prompts: int = field(default=32, metadata={"help": "Held-out prompts to evaluate on."})
    bon_eval_n: list[int] = field(default_factory=lambda: [1, 16, 64], metadata={
        "help": "n of the best-of-n means; max(n) samples are drawn per prompt and E[max] is exact."})
    bon_eval_reward_model: str = field(default="tiny-reward", metadata={"help": "Reward model that scores samples."})
    bon_eval_max_new_tokens: int = field(default=64, metadata={"help": "Sample length limit for the evaluation."})
    bon_eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for the evaluation."})
    bon_eval_batch_size: int = field(default=64, metadata={"help": "Sequences per generation / scoring batch."})


def parse_overrides(overrides: list[str] | None) -> dict:
    """`key=value` strings (`max_steps=5`, `report_to=[]`, `--save-strategy=no`) by the toolkit's one override
    reader; a training config is flat, so `a.b` names the field `a.b` (and fails as unknown)."""
    out = {}
    for item in overrides or []:
        parts, value = parse_override(item.lstrip("-"))
        out[".".join(parts).replace("-", "_")] = value
    return out


def read_config(path) -> dict:
    """A training config file's mapping of field: value ({} without a file)."""
    if path is None:
        return {}
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config is a YAML mapping of field: value")
    return data
