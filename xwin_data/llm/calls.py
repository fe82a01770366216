"""What a chat call is: where it goes and how (ClientSettings), what is asked (ChatCall) and what came back
(ChatResult). Only `model`, the sampling parameters and caller-given key parts enter cache keys."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from xwin_data.llm.costs import BudgetExceeded
from xwin_data.llm.errors import LLMError


class ClientSettings(BaseModel):
    """Where and how to call; only `model`, the sampling parameters and caller-given parts enter cache keys."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("judge", description="model id served by the endpoint (part of every cache key)")
    base_url: str | None = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint; "
                                 "https://api.openai.com/v1 for OpenAI")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (never stored)")
    concurrency: int = Field(16, ge=1, description="requests in flight at once")
    requests_per_minute: int | None = Field(None, ge=1, description="request starts are spaced 60/rpm seconds "
                                            "apart (no burst), so a server's per-minute limit is never passed")
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt + max completion tokens per minute")
    timeout_s: float = Field(120.0, gt=0, description="per-request time-out")
    max_retries: int = Field(6, ge=0, description="retries of a failed request (429, 5xx, time-out, bad JSON)")
    backoff_initial_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    retry_after_max_s: float = Field(60.0, ge=0, description="longest Retry-After honoured; a server asking "
                                     "for more gets that call retried with backoff (or failed), not a stalled run")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGINT/SIGTERM no new call starts; calls in flight "
                                   "get this long to finish and be cached before the run stops")
    budget_usd: float | None = Field(None, ge=0, description="a hard cap on dollars of new calls: a call starts "
                                     "only if the remaining budget covers its expected cost")
    prices: dict[str, list[float]] = Field(default_factory=dict,
                                           description="model -> [prompt $/1M tokens, completion $/1M tokens]")
    transport: Literal["auto", "aiohttp", "openai", "httpx"] = Field(
        "auto", description="how requests are sent: aiohttp (a direct POST, about a fifth of the openai client's "
                            "CPU per request), or openai (the openai client on httpx: HTTP(S) proxies from the "
                            "environment, Azure-style endpoints; `httpx` is its earlier name); auto is aiohttp "
                            "where it imports and no proxy is set, else openai")
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers sent with every request "
                                    "(e.g. an organisation or project id); never part of a cache key")

    def needs_real_key(self) -> bool:
        return "api.openai.com" in (self.base_url or "https://api.openai.com")


@dataclass
class ChatCall:
    messages: list[dict]
    params: dict = field(default_factory=dict)  # temperature, max_tokens, n, seed, top_p, stop
    key_parts: dict = field(default_factory=dict)  # template version, attempt index, ...
    tag: Any = None  # the caller's bookkeeping, returned untouched


@dataclass
class ChatResult:
    call: ChatCall
    key: str
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    attempts: int = 0
    error: LLMError | BudgetExceeded | None = None
    choice_tokens: list[int] | None = None  # per-choice completion tokens, where the server returns token ids

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def ok(self) -> bool:
        return self.error is None
