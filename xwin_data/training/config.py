"""Training configs: TRL's own config classes plus the fields every stage shares (catalog, table, model, the
after-training evaluation). Loaded from YAML with `key=value` overrides; an unknown key is an error.

Defaults that differ from TRL's, on purpose: `bf16` is on only where a CUDA device supports it (TRL turns it
on everywhere), gradient checkpointing is off (tiny models; turn it on in the YAML for big ones), no reporting
integrations and no intermediate checkpoints (the script saves the final model itself).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from trl import DPOConfig, RewardConfig, SFTConfig, TrlParser

from xwin_data.training.fields import ConfigError, StageArgs, parse_overrides, read_config  # noqa: F401 - re-exported

T = TypeVar("T")
_WORDS = {"yes": True, "on": True, "no": False, "off": False}
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def gpu_supports_bf16() -> bool:
    """Whether this process sees a CUDA device that computes in bf16."""
    try:
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - no torch build info: stay in fp32
        return False


def bf16_default(use_cpu: bool = False) -> bool:
    """Every stage's bf16 default (SFT, RM, DPO and WIND alike): on a bf16-capable GPU, off on CPU."""
    return gpu_supports_bf16() and not use_cpu


def _cpu_friendly_defaults(cfg: Any) -> None:
    """Called before the base config's `__post_init__`: bf16 unless set is `bf16_default()`."""
    if getattr(cfg, "bf16", None) is None:
        cfg.bf16 = bf16_default(bool(getattr(cfg, "use_cpu", False)))


def _stage_defaults(**overrides: Any) -> dict:
    """Defaults every stage shares; `bf16: None` means "decide by the device" (`bf16_default`), the same for the
    TRL configs (whose own default is None) and for WIND's plain TrainingArguments (whose default is False)."""
    return {"gradient_checkpointing": None, "report_to": "none", "save_strategy": "no", "logging_steps": 1,
            "dataloader_num_workers": 0, "bf16": None, **overrides}


def _stage_config(name: str, base: type, mixins: tuple = (StageArgs,), module: str = __name__,
                  check=None, **defaults: Any) -> type:
    """`base` (a TRL / transformers config) + mixins, with inherited fields re-declared under new defaults (so
    HfArgumentParser shows them) and bf16 decided before the base's own `__post_init__`."""
    ns: dict[str, Any] = {"__annotations__": {}, "__module__": module, "__qualname__": name,
                          "__doc__": f"{base.__name__} plus the catalog / model / evaluation fields of StageArgs."}
    for f in dataclasses.fields(base):
        if f.name in defaults:
            ns["__annotations__"][f.name] = Optional[bool] if f.name == "bf16" else f.type
            ns[f.name] = field(default=defaults[f.name], metadata=f.metadata)

    def __post_init__(self):
        _cpu_friendly_defaults(self)
        base.__post_init__(self)
        if check is not None:
            check(self)

    ns["__post_init__"] = __post_init__
    return dataclass(type(name, (base, *mixins), ns))


XwinSFTConfig = _stage_config("XwinSFTConfig", SFTConfig,
                              **_stage_defaults(max_length=1024, assistant_only_loss=True))
XwinRewardConfig = _stage_config("XwinRewardConfig", RewardConfig, **_stage_defaults(max_length=1024))
XwinDPOConfig = _stage_config("XwinDPOConfig", DPOConfig, **_stage_defaults(max_length=1024))
CONFIGS = {"sft": XwinSFTConfig, "rs": XwinSFTConfig, "rm": XwinRewardConfig, "dpo": XwinDPOConfig}


def config_class(kind: str) -> type:
    """`sft` / `rs` / `rm` / `dpo` -> its config class (`wind`: `xwin_data.training.wind.WindConfig`)."""
    if kind == "wind":
        from xwin_data.training.wind import WindConfig

        return WindConfig
    return CONFIGS[kind]


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read a YAML config into `cls`; unknown keys fail with their names and the file."""
    data = read_config(path)
    data.update(parse_overrides(overrides))
    if data.get("report_to") == []:
        data["report_to"] = "none"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = set(fields)
    for key, value in data.items():  # YAML reads 1e-3 as text; a numeric field gets a number
        if key in fields and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            kind = str(fields[key].type)
            if "float" in kind:
                data[key] = float(value)
            elif "int" in kind and float(value).is_integer():
                data[key] = int(float(value))
        if key in fields and isinstance(value, str) and str(fields[key].type) in ("bool", "<class 'bool'>"):
            if value.lower() in _WORDS:
                data[key] = _WORDS[value.lower()]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path or 'overrides'}: unknown config key(s) {', '.join(unknown)} for {cls.__name__}")
    if not data.get("table"):
        raise ConfigError(f"{path or 'overrides'}: `table` (the catalog table to train on) is required")
    if not data.get("output_dir"):
        raise ConfigError(f"{path or 'overrides'}: `output_dir` (where the trained model is saved) is required")
    (cfg,) = TrlParser(cls).parse_dict(data)
    return cfg


def config_dict(cfg: Any) -> dict:
    """A JSON-able view of a config for the run record (hub tokens are dropped)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if "token" in f.name:
            continue
        value = getattr(cfg, f.name)
        out[f.name] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
    return out
