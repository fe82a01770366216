"""Dollars for model calls: a price table per model and a ledger with a budget cap.

Prices are US dollars per million tokens (prompt, completion). The defaults are the public list prices of
common GPT-4-class models at the time of writing; check your provider's page and override them in a recipe
(`judge.prices: {my-model: [prompt_per_1m, completion_per_1m]}`). A model that is not in the table (a local
model behind vLLM, SGLang, ...) costs nothing. A dated snapshot (`gpt-4o-2024-08-06`) uses the price of the
longest listed prefix (`gpt-4o`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from xwin_data.core.errors import XwinError

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4-1106-preview": (10.00, 30.00),
    "gpt-4-0125-preview": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-4-32k": (60.00, 120.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}


class BudgetExceeded(XwinError, RuntimeError):
    """The next call would pass the budget: no new calls are made; finished ones stay cached."""


@dataclass
class PriceTable:
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def with_overrides(cls, overrides: dict[str, list[float] | tuple[float, float]] | None) -> "PriceTable":
        table = dict(DEFAULT_PRICES)
        for model, pair in (overrides or {}).items():
            if len(pair) != 2 or any(float(p) < 0 for p in pair):
                raise ValueError(f"price of {model!r} must be [prompt_per_1m, completion_per_1m] >= 0, got {pair}")
            table[model] = (float(pair[0]), float(pair[1]))
        return cls(table)

    def price(self, model: str) -> tuple[float, float]:
        """(prompt, completion) dollars per million tokens; (0, 0) for an unlisted (local) model."""
        name = model.split("/")[-1] if model not in self.prices else model
        best = ""
        for key in self.prices:
            if (name == key or name.startswith(key + "-")) and len(key) > len(best):
                best = key
        return self.prices[best] if best else (0.0, 0.0)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        p, c = self.price(model)
        return (prompt_tokens * p + completion_tokens * c) / 1_000_000

    def is_priced(self, model: str) -> bool:
        return self.price(model) != (0.0, 0.0)


class CostLedger:
    """Tokens and dollars of one build's new calls, with an optional budget on new spend.

    Before a call, `reserve(estimate)` fails with BudgetExceeded when spent + in-flight reservations + the
    estimate would pass the budget; `settle` replaces the reservation by the real cost. Once the budget is hit,
    every later `reserve` fails too, so the run stops cleanly while calls already in flight finish and are kept.
    """

    def __init__(self, prices: PriceTable | None = None, budget_usd: float | None = None):
        self.prices = prices or PriceTable()
        self.budget_usd = budget_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self.cached_calls = 0
        self.cached_usd = 0.0  # what cache hits cost when they were first made
        self.stopped = False
        self._lock = threading.Lock()

    def estimate(self, model: str, prompt_tokens: int, max_completion_tokens: int) -> float:
        return self.prices.cost(model, prompt_tokens, max_completion_tokens)

    def reserve(self, usd: float) -> None:
        with self._lock:
            if self.budget_usd is not None and (
                    self.stopped or self.spent_usd + self.reserved_usd + usd > self.budget_usd):
                self.stopped = True
                raise BudgetExceeded(
                    f"budget of ${self.budget_usd:.4f} reached (spent ${self.spent_usd:.4f} in {self.calls} calls, "
                    f"${self.reserved_usd:.4f} in flight); finished calls are cached, raise the budget to go on")
            self.reserved_usd += usd

    def settle(self, reserved_usd: float, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        cost = self.prices.cost(model, prompt_tokens, completion_tokens)
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
            self.spent_usd += cost
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.calls += 1
        return cost

    def release(self, reserved_usd: float) -> None:
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)

    def record_cached(self, cost_usd: float) -> None:
        with self._lock:
            self.cached_calls += 1
            self.cached_usd += cost_usd

    def summary(self) -> dict:
        return {"new_calls": self.calls, "cached_calls": self.cached_calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "spent_usd": round(self.spent_usd, 6),
                "cached_usd": round(self.cached_usd, 6), "budget_usd": self.budget_usd,
                "budget_stopped": self.stopped}
