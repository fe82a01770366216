"""WIND (win-rate dominance, Faster WIND arXiv 2410.20727), sample-efficient form, on a custom Trainer.

    xwin-data train wind train/configs/wind.yaml [key=value ...]
    accelerate launch train/wind.py train/configs/wind.yaml

Reads prompts from a catalog table: `wind_groups` (the Xwin-Set's responses with their win rates; iteration 0
can reuse them) or any prompt table. Each iteration samples `group_size` responses per prompt from the current
policy, scores them with `reward_model`, and regresses the log-ratio to the previous iterate onto the target
built from the empirical win rates and the reference log-ratio (`eta`, `beta`); see
`xwin_data/training/wind.py` for the update and `xwin_data/training/wind_tabular.py` for its exact form.
"""
from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> dict:
    from xwin_data.training.config import load_config
    from xwin_data.training.data import read_rows, wind_dataset
    from xwin_data.training.models import load_policy, load_reward, load_tokenizer
    from xwin_data.training.stage import finish, preflight, split_argv
    from xwin_data.training.wind import WindConfig, WindTrainer

    started = time.perf_counter()
    config_path, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(WindConfig, config_path, overrides)
    preflight(cfg)

    rows = read_rows(cfg.catalog, cfg.table)
    dataset = wind_dataset(rows, cfg.table, cfg.max_rows)

    tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.tokenizer_name_or_path)
    model = load_policy(cfg.model_name_or_path)
    ref_model = load_policy(cfg.model_name_or_path)          # π_ref: the starting policy, frozen
    reward_model, reward_tokenizer = load_reward(cfg.reward_model), load_tokenizer(cfg.reward_model)

    trainer = WindTrainer(model=model, ref_model=ref_model, reward_model=reward_model,
                          reward_tokenizer=reward_tokenizer, args=cfg, train_dataset=dataset,
                          processing_class=tokenizer)
    result = trainer.train()
    trainer.end_iteration()
    log = trainer.iteration_log
    extra = {"train": result.metrics, "iterations": log,
             "reward_first_iteration": log[0]["reward"] if log else None,
             "reward_last_iteration": log[-1]["reward"] if log else None}
    return finish(cfg, trainer, kind="wind", rows_used=len(dataset), skipped={}, started=started, extra=extra,
                  loss_before=log[0]["loss_before"] if log else None,
                  fixed_loss_after=log[0]["loss_after"] if log else None)


if __name__ == "__main__":
    main()
