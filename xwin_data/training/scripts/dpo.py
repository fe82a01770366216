"""Direct preference optimisation on a `dpo_pairs_<strategy>` table with TRL's DPOTrainer.

    xwin-data train dpo train/configs/dpo.yaml [table=dpo_pairs_worst ...]
    accelerate launch train/dpo.py train/configs/dpo.yaml

The reference model is a frozen copy of the starting policy (TRL's default when `ref_model` is omitted).
Compare pair-selection strategies by running this config once per table and reading `evals`.
"""
from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> dict:
    from trl import DPOTrainer

    from xwin_data.training.config import config_class, load_config
    from xwin_data.training.data import preference_dataset, read_rows
    from xwin_data.training.models import load_policy, load_tokenizer
    from xwin_data.training.stage import finish, fixed_batch_loss, preflight, split_argv

    started = time.perf_counter()
    config_path, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(config_class("dpo"), config_path, overrides)
    preflight(cfg)

    rows = read_rows(cfg.catalog, cfg.table, cfg.max_rows)
    dataset, skipped = preference_dataset(rows, cfg.table)

    tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.tokenizer_name_or_path)
    model = load_policy(cfg.model_name_or_path)
    ref_model = load_policy(cfg.model_name_or_path)  # explicit, so a hub id / tiny name needs no second lookup

    trainer = DPOTrainer(model=model, ref_model=ref_model, args=cfg, train_dataset=dataset,
                         processing_class=tokenizer)
    loss_before = fixed_batch_loss(trainer)
    result = trainer.train()
    return finish(cfg, trainer, kind="dpo", rows_used=len(dataset), skipped=skipped, started=started,
                  loss_before=loss_before, extra={"train": result.metrics})


if __name__ == "__main__":
    main()
