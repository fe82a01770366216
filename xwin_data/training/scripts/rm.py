"""Reward-model training on a catalog table of preference pairs, with TRL's RewardTrainer (Bradley-Terry loss).

    xwin-data train rm train/configs/rm.yaml [key=value ...]
    accelerate launch train/rm.py train/configs/rm.yaml

The table holds `prompt` + `chosen` / `rejected` (e.g. `xwin_pair`, `dpo_pairs_<strategy>`) or whole chosen /
rejected conversations sharing a prefix (HH-RLHF). The saved model scores with
`AutoModelForSequenceClassification` on the tokenizer's chat template, as the Xwin-Set scoring stage reads it.
"""
from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> dict:
    from trl import RewardTrainer

    from xwin_data.training.config import config_class, load_config
    from xwin_data.training.data import preference_dataset, read_rows
    from xwin_data.training.models import load_reward, load_tokenizer
    from xwin_data.training.stage import finish, fixed_batch_loss, preflight, split_argv

    started = time.perf_counter()
    config_path, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(config_class("rm"), config_path, overrides)
    preflight(cfg)

    rows = read_rows(cfg.catalog, cfg.table, cfg.max_rows)
    dataset, skipped = preference_dataset(rows, cfg.table)

    tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.tokenizer_name_or_path)
    model = load_reward(cfg.model_name_or_path)
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is pooled at the last non-pad token

    trainer = RewardTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer)
    if len(trainer.train_dataset) == 0:
        raise ValueError(f"{cfg.table}: every pair is longer than max_length={cfg.max_length} tokens")
    loss_before = fixed_batch_loss(trainer)
    result = trainer.train()
    extra = {"train": result.metrics, "pairs_within_max_length": len(trainer.train_dataset)}
    return finish(cfg, trainer, kind="rm", rows_used=len(dataset), skipped=skipped, started=started,
                  loss_before=loss_before, extra=extra)


if __name__ == "__main__":
    main()
