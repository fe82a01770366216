"""The training layer over TRL: configs, table -> dataset converters, the `runs` / `evals` tables, the best-of-n
evaluation, WIND (trainer and exact tabular form). The scripts themselves live in `train/` (one per stage).

Modules import torch / transformers / trl lazily or only when imported, so the CLI stays fast.
"""
