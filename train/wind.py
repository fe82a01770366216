"""WIND on the Xwin-Set's wind_groups table (iterative win-rate regression).

    accelerate launch train/wind.py train/configs/wind.yaml [key=value ...]
    xwin-data train wind [train/configs/wind.yaml] [key=value ...]     # the same, in-process

The script itself is `xwin_data/training/scripts/wind.py`, shipped with the package.
"""
from xwin_data.training.scripts.wind import main

if __name__ == "__main__":
    main()
