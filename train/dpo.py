"""DPO on a dpo_pairs_<strategy> table of the Xwin-Set (TRL DPOTrainer).

    accelerate launch train/dpo.py train/configs/dpo.yaml [key=value ...]
    xwin-data train dpo [train/configs/dpo.yaml] [key=value ...]     # the same, in-process

The script itself is `xwin_data/training/scripts/dpo.py`, shipped with the package.
"""
from xwin_data.training.scripts.dpo import main

if __name__ == "__main__":
    main()
