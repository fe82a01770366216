"""`xwin-data train sft|rm|rs|dpo|wind CONFIG [key=value ...]`: run a training script of `train/` in-process.

The scripts are the same files `accelerate launch train/<stage>.py CONFIG` runs (see `training/scripts.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from xwin_data.training.scripts import run_script

NAME = "train"
STAGES = {
    "sft": "supervised fine-tuning on a conversation table (TRL SFTTrainer, assistant-only loss)",
    "rm": "reward model on a preference-pair table (TRL RewardTrainer)",
    "rs": "rejection-sampling finetuning on an rs_best_of_<n> table (TRL SFTTrainer)",
    "dpo": "DPO on a dpo_pairs_<strategy> table (TRL DPOTrainer)",
    "wind": "WIND: iterative win-rate regression with fresh samples each iteration (custom Trainer)",
}
app = typer.Typer(help="Train on catalog tables with TRL: " + ", ".join(STAGES) + ". Each run is recorded in "
                       "the `runs` table and, with bon_eval_prompts_table set, evaluated into `evals`.",
                  no_args_is_help=True)


def _command(stage: str):
    def command(
        ctx: typer.Context,
        config: Path = typer.Argument(..., help=f"YAML config, e.g. train/configs/{stage}.yaml"),
        catalog: Optional[Path] = typer.Option(None, "--catalog", "-c", envvar="XWIN_DATA_CATALOG",
                                               help="Catalog folder (overrides the config's `catalog`)."),
        overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides of config fields"),
    ) -> None:
        from xwin_data.core.progress import console

        argv = [str(config), *(overrides or []), *ctx.args]
        if catalog is not None:
            argv.append(f"catalog={catalog}")
        try:
            record = run_script(stage, argv)
        except (ValueError, FileNotFoundError) as err:
            console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2)
        if record:
            m = record.get("metrics", {})
            console.print(f"[bold green]{stage}[/] run {record.get('run_id')} saved to {record.get('output_dir')}; "
                          f"fixed-batch loss {m.get('fixed_batch_loss_before')} -> {m.get('fixed_batch_loss_after')}")
            ev = record.get("eval")
            if ev:
                console.print(f"best-of-1 {ev['best_of_1']:.4f}, best-of-16 {ev['best_of_16']}, "
                              f"best-of-64 {ev['best_of_64']} on {ev['n_prompts']} prompts ({ev['reward_model']})")

    command.__doc__ = STAGES[stage][0].upper() + STAGES[stage][1:] + "."
    return command


for _stage in STAGES:
    app.command(_stage, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        _command(_stage))
