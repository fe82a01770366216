"""`xwin-data train sft|rm|rs|dpo|wind [CONFIG] [key=value ...]`: run a training stage in-process.

The stages are the package's `xwin_data.training.scripts.<stage>` modules, the same code `accelerate launch
train/<stage>.py CONFIG` runs; a `train/<stage>.py` in the current folder (a user's own copy) takes precedence.
Without a CONFIG the shipped default (`train/configs/<stage>.yaml`, inside the package) is used, so an installed
toolkit trains without a checkout.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from xwin_data.training.scripts import default_config, run_script
from xwin_data.training.stage import preflight_argv

NAME = "train"
STAGES = {
    "sft": "supervised fine-tuning on a conversation table (TRL SFTTrainer, assistant-only loss)",
    "rm": "reward model on a preference-pair table (TRL RewardTrainer)",
    "rs": "rejection-sampling finetuning on an rs_best_of_<n> table (TRL SFTTrainer)",
    "dpo": "DPO on a dpo_pairs_<strategy> table (TRL DPOTrainer)",
    "wind": "WIND: iterative win-rate regression with fresh samples each iteration (custom Trainer)",
}
ORDER_HINT = ("after `xwin-data build recipes/sharegpt_sft.yaml`, `recipes/xwin_pair.yaml` and "
              "`recipes/xwin_set.yaml`: train sft, rm, rs, dpo, then wind")
app = typer.Typer(help="Train on catalog tables with TRL: " + ", ".join(STAGES) + f" ({ORDER_HINT}). Each run is "
                       "recorded in the `runs` table and, with bon_eval_prompts_table set, evaluated into `evals`.",
                  no_args_is_help=True)


def _command(stage: str):
    def command(
        ctx: typer.Context,
        config: Optional[str] = typer.Argument(None, help=f"YAML config (default: the shipped "
                                               f"train/configs/{stage}.yaml)"),
        catalog: Optional[Path] = typer.Option(None, "--catalog", "-c", envvar="XWIN_DATA_CATALOG",
                                               help="Catalog folder (overrides the config's `catalog`)."),
        overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides of config fields"),
    ) -> None:
        from xwin_data.cli.app import print_error
        from xwin_data.core.errors import XwinError
        from xwin_data.core.progress import console

        extra = [*(overrides or []), *ctx.args]
        if config is None or ("=" in config and not Path(config).is_file()):
            extra = ([config] if config else []) + extra
            config = str(default_config(stage))
        argv = [config, *extra]
        if catalog is not None:
            argv.append(f"catalog={catalog}")
        try:
            if not (Path.cwd() / "train" / f"{stage}.py").is_file():  # a user's own script checks its own config
                preflight_argv(argv)
            record = run_script(stage, argv)
        except XwinError:
            raise
        except (ValueError, FileNotFoundError) as err:
            print_error(str(err))
            raise typer.Exit(2)
        if record:
            m = record.get("metrics", {})
            console.print(f"[bold green]{stage}[/] run {record.get('run_id')} saved to {record.get('output_dir')}; "
                          f"fixed-batch loss {_num(m.get('fixed_batch_loss_before'))} -> "
                          f"{_num(m.get('fixed_batch_loss_after'))}")
            ev = record.get("eval")
            if ev:
                console.print(f"best-of-1 {_num(ev['best_of_1'])}, best-of-16 {_num(ev['best_of_16'])}, "
                              f"best-of-64 {_num(ev['best_of_64'])} on {ev['n_prompts']} held-out prompts "
                              f"of {ev.get('prompts_table')} ({ev['reward_model']})")

    command.__doc__ = STAGES[stage][0].upper() + STAGES[stage][1:] + "."
    return command


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


for _stage in STAGES:
    app.command(_stage, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        _command(_stage))
