"""What every training script does around its trainer: read the command line, measure the loss on a fixed batch
before and after training, save the model with its tokenizer, record the run, run the best-of-n evaluation.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any


def split_argv(argv: list[str]) -> tuple[str | None, list[str]]:
    """`CONFIG.yaml [key=value | --key value | --key=value ...]` -> (config path, ["key=value", ...])."""
    config, overrides, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                overrides.append(arg[2:])
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(f"{arg[2:]}={argv[i + 1]}")
                i += 1
            else:
                overrides.append(f"{arg[2:]}=true")
        elif "=" in arg:
            overrides.append(arg)
        elif config is None:
            config = arg
        else:
            raise ValueError(f"unexpected argument {arg!r} (give one config file, then key=value overrides)")
        i += 1
    return config, overrides


def preflight_argv(argv: list[str]) -> None:
    """`preflight` on the config as written (the shared fields' defaults, the YAML, the overrides), before TRL is
    imported: a missing catalog, table or model folder is reported at once. An override of a field only TRL knows
    (or a misspelt one) waits for the run's own parsing, which reports a bad key first; the run's own preflight,
    on the parsed config, follows in any case."""
    import dataclasses
    from types import SimpleNamespace

    from xwin_data.training.fields import StageArgs, parse_overrides, read_config

    try:
        config_path, overrides = split_argv(list(argv))
        data = {f.name: f.default for f in dataclasses.fields(StageArgs) if f.default is not dataclasses.MISSING}
        data.update(read_config(config_path))
        given = parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - a config that does not read is reported by the run's own parsing
        return
    if set(given) - set(data):
        return
    data.update(given)
    if data.get("table"):
        preflight(SimpleNamespace(**data))


def preflight(cfg, tables: tuple[str, ...] = ()) -> None:
    """Before any model is loaded: every table and local model folder the run will read exists, else one error
    that names the recipe or command that makes it (so a run does not train and then fail in its evaluation)."""
    from xwin_data.core.catalog import Catalog
    from xwin_data.core.connection import connect
    from xwin_data.core.errors import MissingModelError
    from xwin_data.core.origins import looks_local, missing_model_message
    from xwin_data.training.data import TableFormatError

    evaluates = bool(getattr(cfg, "bon_eval_prompts_table", None))
    models = [cfg.model_name_or_path, getattr(cfg, "reward_model", None),
              cfg.bon_eval_reward_model if evaluates else None]
    for name in models:
        if name and looks_local(name) and not Path(name).expanduser().exists():
            raise MissingModelError(missing_model_message(name))
    wanted = [cfg.table, *tables, cfg.bon_eval_prompts_table if evaluates else None]
    if not Catalog(cfg.catalog).exists():
        raise TableFormatError(f"no catalog at {cfg.catalog}; build the main job first: "
                               "`xwin-data build recipes/xwin_set.yaml` (see the README for the order)")
    con = connect(cfg.catalog, canned_views=False)
    try:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()
    for table in wanted:
        if table and table not in names:
            from xwin_data.core.origins import missing_table_message

            raise TableFormatError(missing_table_message(table, cfg.catalog))


def fixed_batch_loss(trainer, n: int = 8) -> float | None:
    """The trainer's own loss on its first n training examples, in order, without gradients."""
    import torch

    dataset = trainer.train_dataset
    if dataset is None or len(dataset) == 0:
        return None
    subset = dataset.select(range(min(n, len(dataset))))
    saved = trainer.args.per_device_eval_batch_size
    trainer.args.per_device_eval_batch_size = len(subset)
    try:
        batch = next(iter(trainer.get_eval_dataloader(subset)))
    finally:
        trainer.args.per_device_eval_batch_size = saved
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            loss = trainer.compute_loss(model, trainer._prepare_inputs(batch))
    finally:
        model.train(was_training)
        for store in getattr(trainer, "_metrics", {}).values():  # TRL trainers buffer per-batch metrics
            if hasattr(store, "clear"):
                store.clear()
    value = float(loss.detach().float().mean())
    return value if math.isfinite(value) else None


def loss_curve(trainer) -> dict:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"first_logged_loss": losses[0] if losses else None, "last_logged_loss": losses[-1] if losses else None,
            "logged_losses": len(losses), "global_step": trainer.state.global_step}


def finish(cfg, trainer, *, kind: str, rows_used: int, skipped: dict, started: float, extra: dict | None = None,
           loss_before: float | None = None, fixed_loss_after: float | None = None, evaluate: bool = True) -> dict:
    """Save, then on the main process: fixed-batch loss after (unless the caller measured it, as WIND does on
    its first iteration's samples), run record, best-of-n evaluation."""
    from xwin_data.training.config import config_dict
    from xwin_data.training.evaluate import BonEvalSettings, evaluate_policy
    from xwin_data.training.records import new_run_id, record_run

    out = Path(cfg.output_dir)
    trainer.save_model(str(out))
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(str(out))
    if not trainer.is_world_process_zero():
        return {}
    stage = cfg.stage_name or kind
    metrics: dict[str, Any] = {
        "rows_used": rows_used, "skipped": skipped, **loss_curve(trainer),
        "fixed_batch_loss_before": loss_before,
        "fixed_batch_loss_after": fixed_loss_after if fixed_loss_after is not None else fixed_batch_loss(trainer),
        **(extra or {}),
    }
    run_id = new_run_id(stage)
    record = {"run_id": run_id, "stage": stage, "kind": kind, "output_dir": str(out.resolve()), "metrics": metrics}
    if cfg.record_run:
        record_run(cfg.catalog, run_id=run_id, stage=stage, kind=kind, table=cfg.table, rows_used=rows_used,
                   model_in=cfg.model_name_or_path, output_dir=str(out.resolve()), config=config_dict(cfg),
                   metrics=metrics, seconds=time.perf_counter() - started)
    settings = BonEvalSettings.from_config(cfg) if evaluate else None
    if settings is not None and kind != "rm":
        record["eval"] = evaluate_policy(cfg.catalog, out, stage, settings, run_id=run_id, record=cfg.record_run)
    return record
