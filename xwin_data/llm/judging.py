"""The Judge interface: a `JudgeSpec` (the `judge:` block of a recipe) names a registered judge backend, and the
backend turns candidate pairs into a `JudgeRun` (every call, the verdict of each order, each pair's outcome).

Shipped backends (`xwin_data/llm/backends/`): `openai`, any OpenAI-compatible endpoint through the cached,
rate-limited, budgeted `ChatClient` with a versioned template, called from the driver; `reward_model`, offline, a
reward model decides through the one reward scorer, one model per executor replica (`Judge.replica`). `kind` is accepted as the older name of `backend`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

from pydantic import AliasChoices, Field

from xwin_data.llm.judge import JudgeRun, PairToJudge
from xwin_data.llm.spec import OPENAI_URL, ModelSpec, served_identity

Track = Callable[..., Any]  # ctx.track(label, total, unit) -> a context manager whose value has .advance(n)


class JudgeSpec(ModelSpec):
    """Which judge decides and how."""

    KIND: ClassVar[str] = "judge"
    backend: str = Field("reward_model", validation_alias=AliasChoices("backend", "kind"),
                         description="openai: any OpenAI-compatible endpoint; reward_model: offline, a reward "
                                     "model decides (`kind` is the same setting)")
    model: str = Field("gpt-4o", description="openai: the served judge model")
    base_url: str | None = OPENAI_URL
    template: str = Field("pairwise-abc", description="a shipped template name or a path to a YAML template")
    temperature: float = 0.0
    max_tokens: int = Field(1024, ge=1)
    both_orders: bool = True
    parse_retries: int = Field(2, ge=0, description="ask again this many times when a reply has no verdict")
    retry_temperature: float | None = Field(0.7, description="temperature of parse retries (None: unchanged)")
    concurrency: int = Field(16, ge=1)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    timeout_s: float = 120.0
    max_retries: int = Field(6, ge=0, description="transport retries (429, 5xx, time-outs, malformed JSON)")
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    retry_after_max_s: float = Field(60.0, ge=0, description="longest Retry-After honoured; longer asks are "
                                     "retried with backoff or failed, never stalling the stage")
    budget_usd: float | None = Field(None, ge=0, description="dollars of new calls this build may spend")
    transport: Literal["auto", "aiohttp", "openai", "httpx"] = Field(
        "auto", exclude=True, description="openai: how requests are sent (aiohttp, or the openai client on httpx "
                                          "for proxies and Azure-style endpoints); not part of the fingerprint")
    prices: dict[str, list[float]] = Field(default_factory=dict)
    max_failed_calls: int = Field(0, ge=0, description="calls that may still fail after retries before the "
                                                       "stage fails (their pairs are dropped with a reason)")
    reward_model: str = Field("tiny-reward", description="reward_model: the reward model that decides")
    tie_margin: float = Field(0.0, ge=0, description="reward_model: score gap under which a pair is a tie")
    batch_size: int = Field(8, ge=1)
    expected_reply_tokens: int = Field(250, ge=1, description="plan estimate of a judge reply's length")

    @property
    def kind(self) -> str:
        return self.backend


@dataclass
class Verdicts:
    """What a judge backend returns: the run, the judge's and template's identifiers for the tables, and stats."""

    run: JudgeRun
    judge_id: str
    template_id: str
    stats: dict = field(default_factory=dict)


class Judge:
    """Base of the judge backends: `judge(pairs, cache_dir, track)`; `fingerprint(spec)` is what, besides the
    settings, changes its verdicts."""

    spec: JudgeSpec

    def __init__(self, spec: JudgeSpec):
        self.spec = spec

    @classmethod
    def identity(cls, spec: JudgeSpec) -> str:
        return served_identity(spec)

    @classmethod
    def fingerprint(cls, spec: JudgeSpec) -> dict:
        return {"judge": cls.identity(spec)}

    def judge(self, pairs: Sequence[PairToJudge], cache_dir: Path, track: Track) -> Verdicts:
        raise NotImplementedError

    def replica(self, cache_dir: Path) -> tuple[type, dict, Any] | None:
        """Where a local model judges: (class, arguments, output schema) of one replica of it, which the judge
        stage runs as executor units (one model per replica: this process, or a Ray actor each), turning a chunk
        of (pair id, prompt, first, second) into a table and a small record; `verdicts(pairs, per-pair row,
        model id, stats)` then decides the pairs. None (the default): the judge calls an endpoint, on the driver,
        through the rate-limited, budgeted client."""
        return None

    def verdicts(self, pairs: Sequence[PairToJudge], rows: dict[str, Any], model_id: str,
                 stats: dict | None = None) -> Verdicts:
        raise NotImplementedError
