"""Dollars for model calls: a price table per model and a ledger with a budget cap.

Prices are US dollars per million tokens (prompt, completion). The defaults are the public list prices of
common GPT-4-class models at the time of writing; check your provider's page and override them in a recipe
(`judge.prices: {my-model: [prompt_per_1m, completion_per_1m]}`). A model that is not in the table (a local
model behind vLLM, SGLang, ...) costs nothing. A dated snapshot (`gpt-4o-2024-08-06`) uses the price of the
longest listed prefix (`gpt-4o`).
"""
from __future__ import annotations

import math
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


class CostLedger:
    """Tokens and dollars of one build's new calls, with an optional budget on new spend that is a hard cap.

    Before a call, `try_reserve(estimate)` holds the call's expected cost: the estimate uses the completion
    length observed so far (`expected_completion_tokens`), not `max_tokens`, so a build with short answers is
    not stopped at a fraction of its budget. When the estimate does not fit beside what is spent and in flight,
    the caller waits for in-flight calls to settle (their real cost may be less than held); when it does not fit
    beside what is spent alone, no call could ever start again and the ledger stops: every later reservation
    fails with BudgetExceeded, calls already in flight finish and are kept. `settle` replaces a reservation by
    the cost the endpoint's reported usage gives.
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
        # what answers have been like, for reservations: completion tokens per choice, and reported prompt
        # tokens against the character-based guess made before the call
        self._choices = 0
        self._completion_seen = 0
        self._prompt_guessed = 0
        self._prompt_seen = 0

    def estimate(self, model: str, prompt_tokens: int, max_completion_tokens: int) -> float:
        return self.prices.cost(model, prompt_tokens, max_completion_tokens)

    def expected_prompt_tokens(self, guess: int) -> int:
        """A character-based guess corrected by the ratio reported usage has shown so far."""
        with self._lock:
            if self._prompt_guessed <= 0 or self._prompt_seen <= 0:
                return guess
            return round(guess * self._prompt_seen / self._prompt_guessed)

    def expected_completion_tokens(self, max_tokens: int, n: int = 1) -> int:
        """The observed mean completion length per choice (at most `max_tokens`), times `n`; `max_tokens`
        times `n` until a call has been seen."""
        with self._lock:
            if not self._choices:
                return max_tokens * n
            mean = self._completion_seen / self._choices
        return math.ceil(min(max_tokens, mean) * n)

    def observe(self, prompt_guess: int, prompt_tokens: int, completion_tokens: int, n: int) -> None:
        with self._lock:
            self._choices += max(1, n)
            self._completion_seen += completion_tokens
            if prompt_tokens > 0:
                self._prompt_guessed += prompt_guess
                self._prompt_seen += prompt_tokens

    def _refuse(self) -> BudgetExceeded:
        self.stopped = True
        return BudgetExceeded(
            f"budget of ${self.budget_usd:.4f} reached (spent ${self.spent_usd:.4f} in {self.calls} calls, "
            f"${self.reserved_usd:.4f} in flight); finished calls are cached, raise the budget to go on")

    def try_reserve(self, usd: float) -> bool:
        """Hold `usd` for a call: True when held; False when it may fit once in-flight calls settle (wait and
        try again); raises BudgetExceeded when the remaining budget cannot cover it."""
        with self._lock:
            if self.budget_usd is not None:
                cap = self.budget_usd * (1 + 1e-9)  # sums of float prices that land on the cap fit it
                if self.stopped or self.spent_usd + usd > cap:
                    raise self._refuse()
                if self.spent_usd + self.reserved_usd + usd > cap:
                    if self.reserved_usd > 0:
                        return False
                    raise self._refuse()
            self.reserved_usd += usd
            return True

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
