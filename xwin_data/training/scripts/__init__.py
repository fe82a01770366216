"""The training stages' scripts (sft, rm, rs, dpo, wind), each a `main(argv)` over TRL.

They live in the package so an installed toolkit can train; `train/<stage>.py` in the project are thin entries
to them for `accelerate launch`, and `xwin-data train <stage>` runs them in-process.
"""
STAGES = ("sft", "rm", "rs", "dpo", "wind")
