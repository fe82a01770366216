"""An offline pairwise judge: a reward model (AutoModelForSequenceClassification, one logit) scores each
(prompt, answer) and the higher score wins. It needs no server, so a recipe builds end to end on a fresh
machine (with the project's tiny random reward model its verdicts are arbitrary but deterministic).

It answers in the `abc` format of the text judges (`[[A]]`, `[[B]]`, `[[C]]` when the scores differ by less
than `tie_margin`), so the same parsing, aggregation and tables apply; being order-blind it is always consistent.
Scores are cached per (model identity, rendered conversation) in the request cache.
"""
from __future__ import annotations

from typing import Sequence

from xwin_data.llm.cache import RequestCache, request_key


class RewardModelScorer:
    def __init__(self, model: str = "tiny-reward", batch_size: int = 8, max_length: int = 1024,
                 cache: RequestCache | None = None):
        from xwin_data.llm.generation import model_identity

        self.model_name, self.batch_size, self.max_length, self.cache = model, batch_size, max_length, cache
        self.model_id = model_identity(model)
        self._model = self._tok = None

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from xwin_data.llm.tiny import resolve_model

        path = resolve_model(self.model_name)
        self._tok = AutoTokenizer.from_pretrained(path)
        self._model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        if self._model.config.pad_token_id is None:
            self._model.config.pad_token_id = self._tok.pad_token_id

    def score(self, conversations: Sequence[list[dict]]) -> list[float]:
        """One scalar per conversation (prompt turns + the assistant answer)."""
        keys = [request_key(kind="reward", model=self.model_id, messages=c, max_length=self.max_length)
                for c in conversations]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        todo = [i for i, k in enumerate(keys) if k not in found]
        scores = {k: float(v["score"]) for k, v in found.items()}
        if todo:
            import torch

            self._load()
            for lo in range(0, len(todo), self.batch_size):
                idx = todo[lo:lo + self.batch_size]
                texts = [self._tok.apply_chat_template(conversations[i], tokenize=False) for i in idx]
                enc = self._tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
                with torch.no_grad():
                    logits = self._model(**enc).logits[:, 0].tolist()
                for i, s in zip(idx, logits):
                    scores[keys[i]] = float(s)
                    if self.cache is not None:
                        self.cache.put(keys[i], {"score": float(s)}, namespace="reward")
        return [scores[k] for k in keys]


def verdict_text(score_a: float, score_b: float, tie_margin: float) -> str:
    label = "C" if abs(score_a - score_b) < tie_margin else "A" if score_a > score_b else "B"
    return f"reward(A)={score_a:.6f} reward(B)={score_b:.6f}\n\n[[{label}]]"
