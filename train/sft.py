"""Supervised fine-tuning on a catalog table of conversations (TRL SFTTrainer, assistant-only loss).

    accelerate launch train/sft.py train/configs/sft.yaml [key=value ...]
    xwin-data train sft [train/configs/sft.yaml] [key=value ...]     # the same, in-process

The script itself is `xwin_data/training/scripts/sft.py`, shipped with the package.
"""
from xwin_data.training.scripts.sft import main

if __name__ == "__main__":
    main()
