"""Loading models by name (tiny-policy / tiny-reward / path / hub id) and scoring responses with a reward model.

Scoring renders prompt + response with the reward model's own chat template, exactly as TRL's RewardTrainer
tokenises a conversational pair when it trains one, so a trained RM scores what it was trained on.
"""
from __future__ import annotations

from typing import Sequence

from ..llm.tiny import resolve_model

Messages = list[dict[str, str]]


def device_of(model) -> "object":
    return next(model.parameters()).device


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


def reward_inputs(tokenizer, prompts: Sequence[Messages], responses: Sequence[str],
                  max_length: int | None = None) -> list[list[int]]:
    ids = []
    for prompt, response in zip(prompts, responses):
        conv = list(prompt) + [{"role": "assistant", "content": response}]
        out = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)
        seq = list(out["input_ids"])
        ids.append(seq[-max_length:] if max_length else seq)
    return ids


def score_ids(model, pad_id: int, ids: list[list[int]], batch_size: int = 32) -> list[float]:
    """Scalar rewards of token sequences, batched by length (right padding, as
    TRL's reward collator pads, so positions match training; the model pools the last real token)."""
    import torch

    device = device_of(model)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [0.0] * len(ids)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            batch = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                seq = ids[i]
                batch[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, :len(seq)] = 1
            logits = model(input_ids=batch.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(chunk):
                out[i] = float(logits[row, 0])
    return out


def score_responses(model, tokenizer, prompts: Sequence[Messages], responses: Sequence[str],
                    batch_size: int = 32, max_length: int | None = 2048) -> list[float]:
    """Reward of each (prompt, response) pair."""
    ids = reward_inputs(tokenizer, prompts, responses, max_length)
    return score_ids(model, tokenizer.pad_token_id, ids, batch_size)
