"""Exponential backoff shared by the agent's retry policy and the supervisor's restarts.

Example:
    >>> Backoff(base_delay=0.1, multiplier=2.0, jitter=False).delay(3)
    0.4
    >>> RetryPolicy(max_attempts=1).max_attempts
    1
"""

from __future__ import annotations

import random
from typing import Annotated, Protocol

import msgspec

from actor_orch.errors import ModelThrottled, NetworkError

__all__ = ["Backoff", "RetryPolicy", "exponential_delay"]

_NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]


class _DelaySettings(Protocol):
    @property
    def base_delay(self) -> float: ...
    @property
    def max_delay(self) -> float: ...
    @property
    def multiplier(self) -> float: ...
    @property
    def jitter(self) -> bool: ...


def exponential_delay(
    settings: _DelaySettings, attempt: int, error: BaseException | None = None
) -> float:
    """Seconds to wait before try number `attempt + 1` (attempt counts from 1).

    `base_delay * multiplier ** (attempt - 1)`, with jitter drawn from its upper half, raised to
    the `retry_after` the server asked for (`ModelThrottled`, or a `NetworkError` from a 503 with
    `Retry-After`), and capped by `max_delay`.
    """
    delay = settings.base_delay * settings.multiplier ** max(attempt - 1, 0)
    if settings.jitter:
        delay = random.uniform(delay / 2, delay)
    if isinstance(error, ModelThrottled | NetworkError) and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return min(delay, settings.max_delay)


def _validate(settings: _DelaySettings) -> None:
    # msgspec checks Meta constraints only when decoding, so constructors check here too.
    # Written as `not (x >= bound)` so that NaN fails too.
    for field in ("base_delay", "max_delay", "multiplier"):
        value = getattr(settings, field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{field} must be a number of seconds, got {value!r}")
    if not isinstance(settings.jitter, bool):
        raise TypeError(f"jitter must be a bool, got {settings.jitter!r}")
    for field in ("base_delay", "max_delay"):
        if not getattr(settings, field) >= 0:
            raise ValueError(f"{field} must be >= 0, got {getattr(settings, field)!r}")
    if not settings.multiplier >= 1:
        raise ValueError(f"multiplier must be >= 1, got {settings.multiplier!r}")
    if settings.max_delay < settings.base_delay:
        raise ValueError(
            f"max_delay ({settings.max_delay}) must be >= base_delay ({settings.base_delay})"
        )


class Backoff(msgspec.Struct, frozen=True):
    """Delay between supervisor restarts: exponential, jittered, honouring `retry_after`.

    Seconds throughout. `delay(n)` is the wait before the n-th consecutive restart.

    Example:
        >>> b = Backoff(base_delay=0.5, max_delay=1.0, jitter=False)
        >>> [b.delay(n) for n in (1, 2, 3)]
        [0.5, 1.0, 1.0]
    """

    base_delay: _NonNegative = 0.1
    max_delay: _NonNegative = 10.0
    multiplier: Annotated[float, msgspec.Meta(ge=1.0)] = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        _validate(self)

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failure number `attempt` (from 1)."""
        return exponential_delay(self, attempt, error)


class RetryPolicy(msgspec.Struct, frozen=True):
    """Per-model-call retry of retryable errors inside an agent.

    `max_attempts` counts the first call (1 = no retry). Delays are in seconds.

    Example:
        >>> RetryPolicy(max_attempts=5, base_delay=0.01).delay(2, None) <= 0.02
        True
    """

    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 3
    base_delay: _NonNegative = 1.0
    max_delay: _NonNegative = 60.0
    multiplier: Annotated[float, msgspec.Meta(ge=1.0)] = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        _validate(self)
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failure number `attempt` (from 1)."""
        return exponential_delay(self, attempt, error)
