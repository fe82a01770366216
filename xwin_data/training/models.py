"""Loading models for training by name (tiny-policy / tiny-reward / path / hub id).

Reward scoring lives in one place, `xwin_data.llm.reward` (`make_scorer`, or `TransformersScorer.from_model`
for a model already loaded), shared with the Xwin-Set `score_responses` op.
"""
from __future__ import annotations

from pathlib import Path

from xwin_data.core.errors import MissingModelError
from xwin_data.core.origins import looks_local, missing_model_message
from xwin_data.llm.tiny import resolve_model as _resolve


def resolve_model(name: str):
    """`_resolve` (tiny models, folders, hub ids), failing in one line for a local folder that is not there."""
    if looks_local(name) and not Path(name).expanduser().exists():
        raise MissingModelError(missing_model_message(name))
    return _resolve(name)


def load_tokenizer(name: str, fallback: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(fallback or name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(name: str, device: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=torch.float32)
    return model.to(device) if device else model


def load_reward(name: str, device: str | None = None):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(name), num_labels=1,
                                                               dtype=torch.float32)
    model.eval()
    return model.to(device) if device else model
