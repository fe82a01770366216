"""Rejection-sampling finetuning on an rs_best_of_<n> table of the Xwin-Set (TRL SFTTrainer).

    accelerate launch train/rs.py train/configs/rs.yaml [key=value ...]
    xwin-data train rs [train/configs/rs.yaml] [key=value ...]     # the same, in-process

The script itself is `xwin_data/training/scripts/rs.py`, shipped with the package.
"""
from xwin_data.training.scripts.rs import main

if __name__ == "__main__":
    main()
