"""The `AgentError` family: what a model, an agent or the orchestrator can fail with.

Supervision decides on these errors, so the one property that matters is
[`AgentError.is_retryable`][]: only a throttled model and a network failure are worth
another try. Every error keeps its constructor arguments in `args`, so it pickles (for the
Ray backend) and compares in tests.

Example:
    >>> err = ModelThrottled(retry_after=2.5)
    >>> err.is_retryable(), err.retry_after
    (True, 2.5)
    >>> str(PluginError("orchestrator", "agent not registered: x"))
    'plugin error (orchestrator): agent not registered: x'
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "Aborted",
    "AgentError",
    "AuthError",
    "ContentFiltered",
    "ContextWindowOverflow",
    "ModelThrottled",
    "NetworkError",
    "PluginError",
    "RequestTimeout",
    "StreamError",
    "StructuredOutputFailed",
]


class AgentError(Exception):
    """Base class of every error an agent, a model or the orchestrator raises.

    Subclasses set the class attribute `retryable`; callers ask `is_retryable()`.
    """

    retryable: ClassVar[bool] = False

    def is_retryable(self) -> bool:
        """Whether trying the same request again may succeed (throttling, network)."""
        return self.retryable


class ModelThrottled(AgentError):
    """The model refused for rate limits (HTTP 429); `retry_after` is in seconds, if known."""

    retryable = True

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.retry_after is None:
            return "model throttled"
        return f"model throttled (retry after {self.retry_after:g}s)"


class NetworkError(AgentError):
    """The model could not be reached, timed out, or answered a retryable status (408, 409,
    5xx but 501); `cause` says how. `retry_after` (seconds) is the wait the server asked for
    with `Retry-After` / `retry-after-ms`, if it did; retry policies honour it."""

    retryable = True

    def __init__(self, cause: BaseException | str, retry_after: float | None = None) -> None:
        # `args` stays `(cause,)` without a delay, so pickles and reprs keep their old shape.
        super().__init__(*((cause,) if retry_after is None else (cause, retry_after)))
        self.cause = cause
        self.retry_after = retry_after
        if isinstance(cause, BaseException):
            self.__cause__ = cause

    def __str__(self) -> str:
        return f"network error: {self.cause}"


class ContextWindowOverflow(AgentError):
    """The conversation no longer fits the model's context window."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model

    def __str__(self) -> str:
        return f"context window overflow for model {self.model!r}"


class StructuredOutputFailed(AgentError):
    """The model's output did not validate against the output schema after `attempts` tries."""

    def __init__(self, attempts: int, last_error: str) -> None:
        super().__init__(attempts, last_error)
        self.attempts = attempts
        self.last_error = last_error

    def __str__(self) -> str:
        return f"structured output failed after {self.attempts} attempt(s): {self.last_error}"


class AuthError(AgentError):
    """The model server refused the credentials (HTTP 401/403)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"authentication failed: {self.message}"


class ContentFiltered(AgentError):
    """The model's provider filtered the content."""

    def __init__(self, message: str = "content filtered by the model provider") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StreamError(AgentError):
    """Any unexpected failure of a model; the original exception is kept as `__cause__`."""

    def __init__(self, cause: BaseException | str) -> None:
        super().__init__(cause)
        self.cause = cause
        if isinstance(cause, BaseException):
            self.__cause__ = cause

    def __str__(self) -> str:
        if isinstance(self.cause, BaseException):
            return f"stream error: {type(self.cause).__name__}: {self.cause}"
        return f"stream error: {self.cause}"


class Aborted(AgentError):
    """The request was cancelled (`cancel()`, `abort()`, shutdown)."""

    def __init__(self, message: str = "aborted") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PluginError(AgentError):
    """A component (`name`) failed; the orchestrator reports itself as `"orchestrator"`."""

    def __init__(self, name: str, cause: BaseException | str) -> None:
        super().__init__(name, cause)
        self.name = name
        self.cause = cause
        if isinstance(cause, BaseException):
            self.__cause__ = cause

    def __str__(self) -> str:
        return f"plugin error ({self.name}): {self.cause}"


class RequestTimeout(AgentError, TimeoutError):
    """A wait ran past its timeout; also a builtin `TimeoutError`."""

    def __init__(self, message: str = "request timed out") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
