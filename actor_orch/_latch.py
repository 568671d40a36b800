"""`OneShot`: one value handed from one thread to one waiter.

A lock acquired when the `OneShot` is made and released when the value is set: the cheapest
wake-up CPython has (a `concurrent.futures.Future` costs several times as much, Pykka's `ask`
more). Used where a reply crosses threads on a hot path: a synchronous request's answer, the
supervisor's decision.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

__all__ = ["OneShot"]

T = TypeVar("T")


class OneShot(Generic[T]):
    """Set once (`set`), waited for by one thread (`wait`), then read (`value`)."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self.value: T | None = None
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self, value: T) -> None:
        """Record `value` and wake the waiter; call it once."""
        self.value = value
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds (None: until set); True once the value is set."""
        return self._lock.acquire(True, -1 if timeout is None else timeout)
