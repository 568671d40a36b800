"""A bounded pool of Pykka actors that runs a function over items and keeps input order.

[`run_ordered`][] is the engine under `execute_steps_parallel`. Each call starts its own
`min(limit, len(items))` worker actors. A worker gets one message, then pulls the next
unclaimed index from the call's shared state until none is left; there is no future and no
queue put per item, which is what makes it cheaper than `ThreadPoolExecutor.map`.

Every item is answered exactly once: with the value `fn` returned or a [`Failure`][], by a
worker, by the caller on timeout or cancel, or by the last worker to leave when the others
died. Nothing raised by `fn` ever reaches Pykka: an exception escaping an actor's
`on_receive` that is not an `Exception` makes Pykka stop every actor in the process.

Example:
    >>> run_ordered(lambda n: 10 // n, [1, 0, 5], limit=2)
    [10, Failure(error=ZeroDivisionError('integer division or modulo by zero')), 2]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import pykka
from loguru import logger

from actor_orch.errors import Aborted, PluginError, RequestTimeout

__all__ = ["Failure", "run_ordered"]

T = TypeVar("T")
R = TypeVar("R")

# How often a caller holding a cancel event looks at it; cancelling is noticed within this.
_CANCEL_POLL_S = 0.05
# Upper bound on waiting for finished workers to leave and their threads to end.
_JOIN_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Failure:
    """Marks an item that did not produce a value; `error` says why.

    `error` is what `fn` raised, or an `AgentError` the pool put there: `RequestTimeout`
    (the call's timeout expired), `Aborted("cancelled")` (never started because of
    `cancel`) or `PluginError("pool", ...)` (its worker died).

    Example:
        >>> [result] = run_ordered(int, ["x"], limit=1)
        >>> isinstance(result, Failure), type(result.error).__name__
        (True, 'ValueError')
    """

    error: BaseException


class _Pending:
    """Type of the placeholder in a result slot that has not been answered yet."""


_PENDING = _Pending()


class _Call(Generic[T, R]):
    """State shared by the caller and the workers of one `run_ordered` call.

    Everything mutable is guarded by `_lock`; `done` is set once every slot is answered
    and `all_left` once every worker has left.
    """

    def __init__(
        self,
        fn: Callable[[T], R],
        items: list[T],
        workers: int,
        cancel: threading.Event | None,
    ) -> None:
        self.fn = fn
        self.items = items
        self.cancel = cancel
        self.results: list[R | Failure | _Pending] = [_PENDING] * len(items)
        self.done = threading.Event()
        self.all_left = threading.Event()
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._next_index = 0
        self._unanswered = len(items)
        self._live_workers = workers
        self._death: str | None = None

    def _answer(self, index: int, value: R | Failure) -> None:
        # Caller holds the lock. A slot already answered (by timeout) keeps its answer.
        if self.results[index] is _PENDING:
            self.results[index] = value
            self._unanswered -= 1
            if self._unanswered == 0:
                self.done.set()

    def _claim(self) -> int | None:
        # Caller holds the lock. close() and leave() stop claiming by moving _next_index.
        if self._next_index >= len(self.items):
            return None
        if self.cancel is not None and self.cancel.is_set():
            return None
        index = self._next_index
        self._next_index += 1
        return index

    def work(self) -> None:
        """Run items until none is left to claim; called by a worker, never raises from `fn`."""
        with self._lock:
            index = self._claim()
        while index is not None:
            try:
                value: R | Failure = self.fn(self.items[index])
            except BaseException as exc:  # a step may raise anything; it is its answer
                value = Failure(exc)
            # Answering and claiming the next item under one lock halves the lock traffic.
            with self._lock:
                self._answer(index, value)
                index = self._claim()

    def add_thread(self, thread: threading.Thread) -> None:
        with self._lock:
            self.threads.append(thread)

    def leave(self, death: str | None = None) -> None:
        """Record that a worker left (`death` says why if it did not finish its loop).

        The last worker to leave answers whatever no worker can answer any more.
        """
        with self._lock:
            if death is not None and self._death is None:
                self._death = death
            self._live_workers -= 1
            if self._live_workers > 0:
                return
            cancelled = self.cancel is not None and self.cancel.is_set()
            for index in range(len(self.items)):
                if self.results[index] is not _PENDING:
                    continue
                if cancelled and index >= self._next_index:
                    error: BaseException = Aborted("cancelled")
                else:
                    error = PluginError("pool", f"worker died: {self._death or 'unknown'}")
                self._answer(index, Failure(error))
            self._next_index = len(self.items)
        self.all_left.set()

    def close(self, unclaimed: Failure, running: Failure | None = None) -> None:
        """Stop claiming; answer unclaimed items, and still-running ones if `running` is given."""
        with self._lock:
            for index in range(len(self.items)):
                if self.results[index] is not _PENDING:
                    continue
                if index >= self._next_index:
                    self._answer(index, unclaimed)
                elif running is not None:
                    self._answer(index, running)
            self._next_index = len(self.items)

    def worker_threads(self) -> list[threading.Thread]:
        with self._lock:
            return list(self.threads)

    def answers(self) -> list[R | Failure]:
        with self._lock:
            # Every slot is answered once `done` is set, so no placeholder remains.
            return cast("list[R | Failure]", list(self.results))


class _Worker(pykka.ThreadingActor):
    """One worker of one call: drains the call's items on its first message, then stops."""

    use_daemon_thread = True

    def __init__(self, call: _Call[Any, Any]) -> None:
        super().__init__()
        self._call = call
        self._left = False

    def _leave(self, death: str | None = None) -> None:
        # on_receive, on_stop and on_failure all run on this actor's thread, so no lock.
        if not self._left:
            self._left = True
            self._call.leave(death)

    def on_start(self) -> None:
        self._call.add_thread(threading.current_thread())

    def on_receive(self, message: Any) -> None:
        if self._left:
            return
        death = None
        try:
            self._call.work()
        except BaseException as exc:  # escaping would make Pykka stop all actors
            logger.opt(exception=exc).error("pool worker {} died", self.actor_urn)
            death = f"{type(exc).__name__}: {exc}"
        finally:
            self._leave(death)
        self.stop()

    def on_stop(self) -> None:
        # Reached without on_receive when someone stopped us before our message arrived.
        self._leave("stopped before it ran")

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._leave(f"failed: {exception_value!r}")


def run_ordered(
    fn: Callable[[T], R],
    items: Sequence[T],
    limit: int,
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    on_cancel: Callable[[], None] | None = None,
) -> list[R | Failure]:
    """Run `fn(item)` for every item, at most `limit` at once; one answer per item, in order.

    Each answer is `fn`'s value, or a [`Failure`][] holding what `fn` raised (any
    `BaseException`; one item's failure never disturbs the others).

    Args:
        fn: called once per item, on a worker thread.
        items: the inputs; empty means `[]` at once and no worker started.
        limit: most items running at once (>= 1).
        timeout: overall seconds (> 0). When it expires, nothing new starts, every item not
            answered yet gets `Failure(RequestTimeout)`, and the call returns at once; a
            worker still inside `fn` is abandoned and its late result discarded.
        cancel: once set, nothing new starts and unstarted items get
            `Failure(Aborted("cancelled"))`; running items finish and keep their results.
        on_cancel: called once, on the calling thread, when the call notices `cancel` is set
            (within about 50 ms, or when it returns).

    Raises:
        ValueError: `limit` < 1 or `timeout` <= 0.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    # A private copy: the caller may change its sequence while workers index into ours.
    todo = list(items)
    if not todo:
        return []
    workers = min(limit, len(todo))
    call: _Call[T, R] = _Call(fn, todo, workers, cancel)
    for _ in range(workers):
        _start_worker(call)

    if not _wait(call, timeout, cancel, on_cancel):
        logger.info("run_ordered timed out after {:g}s", timeout)
        timed_out = Failure(RequestTimeout(f"step did not finish within {timeout:g}s"))
        call.close(timed_out, running=timed_out)
        # Workers still inside fn are abandoned: daemon threads that end when fn returns.
        return call.answers()
    _join_workers(call)
    return call.answers()


def _start_worker(call: _Call[Any, Any]) -> None:
    try:
        _Worker.start(call).tell(None)
    except pykka.ActorDeadError:
        # Stopped between start and tell: its on_stop has already left the call.
        logger.warning("pool worker stopped before it got its work")
    except Exception as exc:  # e.g. no thread can be started; items still get answers
        logger.opt(exception=exc).error("could not start a pool worker")
        call.leave(f"could not start: {type(exc).__name__}: {exc}")


def _wait(
    call: _Call[Any, Any],
    timeout: float | None,
    cancel: threading.Event | None,
    on_cancel: Callable[[], None] | None,
) -> bool:
    """Wait until every item is answered; False when `timeout` expired first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    if cancel is not None:
        # Poll in slices only when there is a cancel event to notice.
        while not (cancel.is_set() or call.done.is_set()):
            remaining = _remaining(deadline)
            if remaining == 0.0:
                break
            call.done.wait(_CANCEL_POLL_S if remaining is None else min(_CANCEL_POLL_S, remaining))
        if cancel.is_set():
            call.close(Failure(Aborted("cancelled")))
            _notify_cancel(on_cancel)
    return call.done.wait(_remaining(deadline))


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _notify_cancel(on_cancel: Callable[[], None] | None) -> None:
    if on_cancel is None:
        return
    try:
        on_cancel()
    except Exception as exc:  # a broken callback must not lose the answers
        logger.opt(exception=exc).error("on_cancel callback raised")


def _join_workers(call: _Call[Any, Any]) -> None:
    """Let the workers of a finished call end, so no thread outlives it; bounded."""
    deadline = time.monotonic() + _JOIN_TIMEOUT_S
    if not call.all_left.wait(_JOIN_TIMEOUT_S):
        logger.warning("pool workers still running {:g}s after their call", _JOIN_TIMEOUT_S)
        return
    current = threading.current_thread()
    for thread in call.worker_threads():
        if thread is not current:
            thread.join(max(0.0, deadline - time.monotonic()))
