"""Reward model on a preference-pair table (TRL RewardTrainer).

    accelerate launch train/rm.py train/configs/rm.yaml [key=value ...]
    xwin-data train rm [train/configs/rm.yaml] [key=value ...]     # the same, in-process

The script itself is `xwin_data/training/scripts/rm.py`, shipped with the package.
"""
from xwin_data.training.scripts.rm import main

if __name__ == "__main__":
    main()
