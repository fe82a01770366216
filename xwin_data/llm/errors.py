"""Typed failures of model calls: what the retry loop and callers branch on (`retryable` says whether another
attempt may help)."""
from __future__ import annotations

from xwin_data.core.errors import XwinError
from xwin_data.llm.costs import BudgetExceeded

__all__ = ["LLMError", "RateLimited", "ServerError", "Timeout", "ConnectionFailed", "BadResponse",
           "RequestRejected", "AuthError", "MissingKey", "BudgetExceeded"]


class LLMError(XwinError, RuntimeError):
    """A model call failed; `retryable` says whether trying again may help."""

    retryable = False


class RateLimited(LLMError):
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ServerError(LLMError):
    retryable = True


class Timeout(LLMError):
    retryable = True


class ConnectionFailed(LLMError):
    retryable = True


class BadResponse(LLMError):
    """The endpoint answered with something that is not a chat completion (malformed JSON, no choices)."""

    retryable = True


class RequestRejected(LLMError):
    """A 4xx other than 429: the request itself is wrong (unknown model, context too long); retrying won't help."""


class AuthError(RequestRejected):
    pass


class MissingKey(LLMError):
    pass
