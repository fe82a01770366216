"""Supervised fine-tuning on a catalog table of conversations, with TRL's SFTTrainer and assistant-only loss.

    xwin-data train sft train/configs/sft.yaml [key=value ...]
    accelerate launch train/sft.py train/configs/sft.yaml          # same config, on GPUs

The table is any conversation table (`messages`), e.g. `sft_sharegpt_8k`, or prompt + response rows. The
config is TRL's `SFTConfig` plus the catalog / model / evaluation fields of `xwin_data.training.config`.
Rejection-sampling finetuning (`train/rs.py`) is this same script on an `rs_best_of_<n>` table.
"""
from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None, *, kind: str = "sft") -> dict:
    from trl import SFTTrainer

    from xwin_data.training.config import config_class, load_config
    from xwin_data.training.data import read_rows, sft_dataset
    from xwin_data.training.models import load_policy, load_tokenizer
    from xwin_data.training.stage import finish, fixed_batch_loss, preflight, split_argv

    started = time.perf_counter()
    config_path, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(config_class(kind), config_path, overrides)
    preflight(cfg)

    # Data: the table's current version -> TRL conversational {"messages": [...]}
    rows = read_rows(cfg.catalog, cfg.table, cfg.max_rows)
    dataset, skipped = sft_dataset(rows, cfg.table)

    # Model: tiny-policy / a folder / a hub id; the tokenizer's chat template must mark assistant turns with
    # {% generation %} for assistant_only_loss (TRL fails clearly otherwise).
    tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.tokenizer_name_or_path)
    model = load_policy(cfg.model_name_or_path)

    trainer = SFTTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer)
    loss_before = fixed_batch_loss(trainer)
    result = trainer.train()
    return finish(cfg, trainer, kind=kind, rows_used=len(dataset), skipped=skipped, started=started,
                  loss_before=loss_before, extra={"train": result.metrics})


if __name__ == "__main__":
    main()
