"""Rejection-sampling finetuning: SFT on the best-of-n responses of the Xwin-Set (`rs_best_of_<n>` tables).

    xwin-data train rs train/configs/rs.yaml [table=rs_best_of_16 ...]
    accelerate launch train/rs.py train/configs/rs.yaml

Same trainer and config as `train/sft.py` (TRL's SFTTrainer with assistant-only loss); the run is recorded as
kind `rs` so `runs` / `evals` keep the stages apart.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> dict:
    from xwin_data.training.scripts.sft import main as sft_main

    return sft_main(list(sys.argv[1:] if argv is None else argv), kind="rs")


if __name__ == "__main__":
    main()
