"""A long-lived, bounded pool of Pykka worker actors shared by all its callers.

[`ActorPool`][] is to actors what `concurrent.futures.ThreadPoolExecutor` is to threads: work
goes in as items, each answered through a `concurrent.futures.Future`, and never more than
`limit` items run at once, however many threads submit. [`ActorPool.map`][] submits a batch
and collects the futures **in input order**, with an overall timeout and a cancel event.

Workers are started on demand (up to `limit`) and wait idle for the next batch; an idle worker
is a thread blocked on its inbox. A worker runs one item at a time, then takes the next queued
item of any caller, so the bound belongs to the pool, not to a call.

Nothing raised by an item escapes a worker: any `BaseException` becomes that item's
[`Failure`][] (an exception escaping Pykka's `on_receive` that is not an `Exception` makes
Pykka stop every actor in the process).

A call made from inside one of the pool's own items (a step that runs steps, also from a
thread the item started with a copy of its `contextvars` context) does not wait idle for free
workers: while its items are queued, it runs them itself, in the place its item holds (one
caller at a time per place). Nesting thus never deadlocks, at any limit and depth, and never
raises the number of items running above `limit`.

Example:
    >>> with ActorPool(2) as pool:
    ...     pool.map(lambda n: 10 // n, [1, 0, 5])
    [10, Failure(error=ZeroDivisionError('integer division or modulo by zero')), 2]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pykka
from loguru import logger

from actor_orch.errors import Aborted, PluginError, RequestTimeout

__all__ = ["ActorPool", "Failure", "PoolItem", "PoolSlot", "run_ordered"]

T = TypeVar("T")
R = TypeVar("R")

# How often a caller holding a cancel event looks at it; a cancel is noticed within this.
_CANCEL_POLL_S = 0.05
# After a cancel, how long running items get to notice their abort before they are abandoned.
_CANCEL_GRACE_S = 0.35
# Upper bound on joining worker threads in close().
_JOIN_TIMEOUT_S = 5.0

_RUN = object()  # the one message a worker gets: "take items until none is left"


@dataclass(frozen=True, slots=True)
class Failure:
    """Marks an item that did not produce a value; `error` says why.

    `error` is what the item raised (any `BaseException`), or an `AgentError` the pool put
    there: `RequestTimeout` (the call's timeout expired), `Aborted` (cancelled before or while
    it ran, or the pool closed) or `PluginError("pool", ...)` (its worker was stopped).

    Example:
        >>> [result] = run_ordered(int, ["x"], limit=1)
        >>> isinstance(result, Failure), type(result.error).__name__
        (True, 'ValueError')
    """

    error: BaseException


class _Latch:
    """Counts the unfinished items of one `map` call; its event is set when none is left."""

    __slots__ = ("_count", "_finished", "done")

    def __init__(self, count: int) -> None:
        self._count = count
        # `next()` on an `itertools.count` is one atomic C call: no lock per item.
        self._finished = itertools.count(1)
        self.done = threading.Event()

    def count_down(self) -> None:
        if next(self._finished) == self._count:
            self.done.set()


_UNSET: Any = object()


class PoolItem(Generic[T, R]):
    """One queued call of `fn(arg)`; whoever takes its claim first runs (or withdraws) it.

    Items of `map` carry no `Future` (one costs about 3 us, more than a trivial step): their
    answer goes to `value` and the call's latch counts them. `submit` items also hold a
    `Future` for the caller.
    """

    __slots__ = ("arg", "claim", "fn", "future", "latch", "value")

    def __init__(
        self,
        fn: Callable[[T], R],
        arg: T,
        latch: _Latch | None,
        future: concurrent.futures.Future[R | Failure] | None = None,
    ) -> None:
        self.fn = fn
        self.arg = arg
        self.latch = latch
        self.future = future
        self.value: R | Failure = _UNSET
        # A worker, a waiting caller and a cancel may all reach a queued item; the claim
        # decides which of them acts on it.
        self.claim = threading.Lock()

    def run(self) -> None:
        """Run the item unless someone else claimed it."""
        if not self.claim.acquire(blocking=False):
            return
        try:
            value: R | Failure = self.fn(self.arg)
        except BaseException as exc:  # an item may raise anything; it is its answer
            value = Failure(exc)
        self._answer(value)

    def withdraw(self, answer: Failure) -> bool:
        """Answer the item with `answer` if nobody claimed it yet; True if it was withdrawn."""
        if not self.claim.acquire(blocking=False):
            return False
        self._answer(answer)
        return True

    def _answer(self, value: R | Failure) -> None:
        self.value = value
        if self.future is not None:
            self.future.set_result(value)
        if self.latch is not None:
            self.latch.count_down()

    @property
    def done(self) -> bool:
        return self.value is not _UNSET


class PoolSlot:
    """The place in the pool held by one running item. A `map` called by that item (or by a
    thread it started with a copy of its context) runs its own queued items in this place
    while it waits; the lock lets only one such caller use it at a time."""

    __slots__ = ("lock", "pool")

    def __init__(self, pool: ActorPool) -> None:
        self.pool = pool
        self.lock = threading.Lock()


_current_slot: contextvars.ContextVar[PoolSlot | None] = contextvars.ContextVar(
    "actor_orch_pool_slot", default=None
)


class _Worker(pykka.ThreadingActor):
    """Runs queued items of its pool until none is left, then waits idle for `_RUN`."""

    use_daemon_thread = True

    def __init__(self, pool: ActorPool) -> None:
        super().__init__()
        self._pool = pool
        self._current: PoolItem[Any, Any] | None = None

    def on_start(self) -> None:
        self._pool._started(threading.current_thread())
        # Everything this worker runs (and threads that copy its context) may lend its slot.
        _current_slot.set(PoolSlot(self._pool))

    def on_receive(self, message: Any) -> None:
        if message is not _RUN:
            return
        pool, me = self._pool, self.actor_ref
        item = pool._next(me)
        while item is not None:
            self._current = item
            item.run()  # contains everything the item raises
            self._current = None
            item = pool._next(me)

    def on_stop(self) -> None:
        self._pool._gone(self.actor_ref, self._current, "stopped")

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._pool._gone(self.actor_ref, self._current, f"failed: {exception_value!r}")


class ActorPool:
    """At most `limit` items at once, across every caller; futures collected in input order.

    Thread-safe. Use it as a context manager or call [`close`][]; a pool that is never closed
    keeps idle daemon threads, which never stop the interpreter from exiting.

    Example:
        >>> pool = ActorPool(4)
        >>> pool.map(str.upper, ["a", "b", "c"])
        ['A', 'B', 'C']
        >>> future = pool.submit(len, "four")
        >>> future.result(timeout=5)
        4
        >>> pool.close()
        >>> pool
        <ActorPool limit=4 busy=0 idle=0 queued=0 closed>
    """

    def __init__(self, limit: int) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        self.limit = limit
        self._lock = threading.Lock()
        self._queue: deque[PoolItem[Any, Any]] = deque()
        self._idle: list[pykka.ActorRef[_Worker]] = []
        self._busy = 0  # workers told to run and not idle again yet
        self._threads: set[threading.Thread] = set()
        self._closed = False

    # -- submitting ------------------------------------------------------------------------

    def submit(self, fn: Callable[[T], R], arg: T) -> concurrent.futures.Future[R | Failure]:
        """Queue `fn(arg)`; its future holds the value or a [`Failure`][]."""
        future = self.submit_item(fn, arg).future
        assert future is not None
        return future

    def submit_item(self, fn: Callable[[T], R], arg: T) -> PoolItem[T, R]:
        """`submit`, returning the queued item (its `future` holds the answer), which a
        caller waiting inside this pool may run in its own place with `run_lent`."""
        future: concurrent.futures.Future[R | Failure] = concurrent.futures.Future()
        return self._enqueue(fn, [arg], future=future)[0]

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        on_cancel: Callable[[], None] | None = None,
    ) -> list[R | Failure]:
        """Run `fn(item)` for every item; one answer per item, in input order.

        Each answer is `fn`'s value, or a [`Failure`][] holding what it raised.

        Args:
            fn: called once per item, on a worker thread.
            items: the inputs; empty means `[]` at once.
            timeout: overall seconds (> 0). When it expires, queued items are withdrawn and
                every unanswered item gets `Failure(RequestTimeout)` at once; an item still
                running is abandoned (it keeps its worker until it returns).
            cancel: once set, queued items are withdrawn with `Failure(Aborted("cancelled"))`,
                `on_cancel` is called, and running items get a short grace (about 0.35 s) to
                finish before they too are answered `Aborted`; the call returns within 0.5 s
                of the cancel.
            on_cancel: called once, on the calling thread, when the cancel is noticed.

        Raises:
            ValueError: `timeout` is not a finite number > 0.
            RuntimeError: the pool is closed.
        """
        if timeout is not None:
            _check_positive("timeout", timeout)
        if cancel is not None and cancel.is_set():
            _notify(on_cancel)
            return [Failure(Aborted("cancelled")) for _ in items]
        todo = self._enqueue(fn, list(items))
        if not todo:
            return []
        return _Collect(self, todo, timeout, cancel, on_cancel).answers()

    def _enqueue(
        self,
        fn: Callable[[T], R],
        args: list[T],
        *,
        future: concurrent.futures.Future[R | Failure] | None = None,
    ) -> list[PoolItem[T, R]]:
        if future is not None:
            items = [PoolItem(fn, args[0], None, future)]
        else:
            latch = _Latch(len(args)) if args else None
            items = [PoolItem(fn, arg, latch) for arg in args]
        if not items:
            return items
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a closed pool")
            self._queue.extend(items)
            wake = min(len(self._queue), self.limit - self._busy)
            woken = [self._idle.pop() for _ in range(min(wake, len(self._idle)))]
            self._busy += wake
        for ref in woken:
            self._tell_run(ref)
        for _ in range(wake - len(woken)):
            self._start_worker()
        return items

    def _start_worker(self) -> None:
        try:
            ref = _Worker.start(self)
        except Exception as exc:  # e.g. no thread can be started: the others carry on
            logger.opt(exception=exc).error("could not start a pool worker")
            self._worker_lost(None, f"could not start: {exc!r}")
            return
        self._tell_run(ref)

    def _tell_run(self, ref: pykka.ActorRef[_Worker]) -> None:
        # A worker stopped from outside meanwhile was accounted for by its on_stop.
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(_RUN)

    # -- the workers' side -----------------------------------------------------------------

    def _started(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.add(thread)

    def _next(self, worker: pykka.ActorRef[_Worker]) -> PoolItem[Any, Any] | None:
        """The next queued item for `worker`, or None: it is idle (or stops, when closed)."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            self._busy -= 1
            if not self._closed:
                self._idle.append(worker)
                return None
        worker.stop(block=False)
        return None

    def _gone(
        self, worker: pykka.ActorRef[_Worker], current: PoolItem[Any, Any] | None, why: str
    ) -> None:
        """A worker stopped (from outside, or after close): answer its item, keep the count."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return
            if self._closed and current is None:
                return  # it left through _next after close
        self._worker_lost(current, why)

    def _worker_lost(self, current: PoolItem[Any, Any] | None, why: str) -> None:
        if current is not None and not current.done:
            current._answer(Failure(PluginError("pool", f"worker {why}")))
        with self._lock:
            self._busy -= 1
            replace = bool(self._queue) and not self._closed
            if replace:
                self._busy += 1
            orphans = [] if self._busy > 0 or replace else list(self._queue)
            if orphans:
                self._queue.clear()
        for item in orphans:
            item.withdraw(Failure(PluginError("pool", f"no worker left: {why}")))
        if replace:
            self._start_worker()

    # -- waiting callers that are workers of this pool -----------------------------------

    def lent_slot(self) -> PoolSlot | None:
        """The place the calling code holds in this pool when it runs inside one of its items
        (on its worker, or on a thread the item started with a copy of its context), which it
        lends to queued items while it waits for them; None outside the pool. Waiting there
        for other items without lending could wait for the very place it holds."""
        slot = _current_slot.get()
        return slot if slot is not None and slot.pool is self else None

    def run_lent(self, slot: PoolSlot, item: PoolItem[Any, Any]) -> bool:
        """Run `item` on this thread, in `slot`'s place, unless a worker claimed it or another
        borrower uses the place; True if this call took it."""
        if item.claim.locked() or not slot.lock.acquire(blocking=False):
            return False
        try:
            self._run_here(item)
        finally:
            slot.lock.release()
        return True

    def _run_here(self, item: PoolItem[Any, Any]) -> None:
        """Run `item` on this thread as in a place of its own, which it may lend in turn."""
        token = _current_slot.set(PoolSlot(self))
        try:
            item.run()
        finally:
            _current_slot.reset(token)

    # -- teardown --------------------------------------------------------------------------

    def close(self, timeout: float = _JOIN_TIMEOUT_S) -> None:
        """Refuse new work, withdraw queued items (`Aborted`), stop the workers.

        Running items finish on their workers; their threads are joined for at most
        `timeout` seconds (a worker stuck in an item is left to end on its own). Idempotent.
        """
        _check_non_negative("timeout", timeout)
        with self._lock:
            already = self._closed
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            idle, self._idle = self._idle, []
            threads = list(self._threads)
        if already:
            return
        for item in queued:
            item.withdraw(Failure(Aborted("pool closed")))
        for ref in idle:
            ref.stop(block=False)
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"<ActorPool limit={self.limit} busy={self._busy} idle={len(self._idle)} "
            f"queued={len(self._queue)}{state}>"
        )


class _Collect(Generic[T, R]):
    """One `map` call waiting for its items, with timeout and cancel; answers in input order."""

    def __init__(
        self,
        pool: ActorPool,
        items: list[PoolItem[T, R]],
        timeout: float | None,
        cancel: threading.Event | None,
        on_cancel: Callable[[], None] | None,
    ) -> None:
        self.items = items
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.cancel = cancel
        self.on_cancel = on_cancel
        self.pool = pool
        slot = _current_slot.get()
        self.slot = slot if slot is not None and slot.pool is pool else None
        latch = items[0].latch
        assert latch is not None
        self.done = latch.done

    def answers(self) -> list[R | Failure]:
        if not self._wait():
            return self._give_up()
        return [item.value for item in self.items]

    def _wait(self) -> bool:
        """Wait for every item; False when the timeout expired or the cancel came first."""
        done, cancel, slot = self.done, self.cancel, self.slot
        polling = cancel is not None or self.deadline is not None or slot is not None
        next_inline = 0
        while not done.is_set():
            if slot is not None and next_inline >= 0 and slot.lock.acquire(blocking=False):
                try:
                    next_inline = self._run_one_inline(next_inline)
                finally:
                    slot.lock.release()
                if next_inline >= 0:
                    continue
            if cancel is not None and cancel.is_set():
                return False
            remaining = None if self.deadline is None else self.deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            wait = _CANCEL_POLL_S if polling else None
            if remaining is not None:
                wait = min(wait or remaining, remaining)
            done.wait(wait)
        return True

    def _run_one_inline(self, start: int) -> int:
        """Run the first unclaimed item from `start` on this (worker) thread; the index to
        look from next time, or -1 when every item is claimed."""
        items = self.items
        for index in range(start, len(items)):
            item = items[index]
            if not item.claim.locked():
                self.pool._run_here(item)
                return index + 1
        return -1

    def _give_up(self) -> list[R | Failure]:
        """Answer every unfinished item after a timeout or a cancel; queued ones are withdrawn
        (they will never start), running ones are abandoned."""
        cancelled = self.cancel is not None and self.cancel.is_set()
        if cancelled:
            error: BaseException = Aborted("cancelled")
        else:
            error = RequestTimeout(f"step did not finish within {self.timeout:g}s")
        for item in self.items:
            item.withdraw(Failure(error))
        if cancelled:
            _notify(self.on_cancel)
            grace = _CANCEL_GRACE_S
            if self.deadline is not None:
                grace = min(grace, max(0.0, self.deadline - time.monotonic()))
            self.done.wait(grace)
        else:
            logger.info("pool call timed out after {:g}s", self.timeout)
        return [item.value if item.done else Failure(error) for item in self.items]


def _wait_for(future: concurrent.futures.Future[Any], timeout: float | None) -> None:
    """Wait until `future` is done or `timeout` passes (cheaper than `futures.wait`)."""
    with contextlib.suppress(TimeoutError, concurrent.futures.CancelledError):
        future.exception(timeout)


def _notify(on_cancel: Callable[[], None] | None) -> None:
    if on_cancel is None:
        return
    try:
        on_cancel()
    except BaseException as exc:  # a broken callback must not lose the answers
        logger.opt(exception=exc).error("on_cancel callback raised")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e12:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e12:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def run_ordered(
    fn: Callable[[T], R],
    items: Sequence[T],
    limit: int,
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    on_cancel: Callable[[], None] | None = None,
) -> list[R | Failure]:
    """[`ActorPool.map`][] on a pool of its own, closed when the call returns.

    Example:
        >>> run_ordered(lambda n: n * n, range(5), limit=2)
        [0, 1, 4, 9, 16]
    """
    pool = ActorPool(limit)
    try:
        return pool.map(fn, items, timeout=timeout, cancel=cancel, on_cancel=on_cancel)
    finally:
        pool.close(timeout=0.0 if timeout is not None or cancel is not None else _JOIN_TIMEOUT_S)
