"""Behaviour of the bounded, order-keeping actor pool (`actor_orch.pool.run_ordered`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actor_orch.errors import Aborted, RequestTimeout
from actor_orch.pool import ActorPool, Failure, run_ordered

WAIT_S = 5.0  # generous bound for any synchronisation wait in these tests


class PeakCounter:
    """Counts how many calls run at once and remembers the highest count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.active -= 1


class Bystander(pykka.ThreadingActor):
    """An unrelated actor that must survive whatever the pool's steps do."""

    use_daemon_thread = True

    def on_receive(self, message: Any) -> Any:
        return message


@pytest.fixture
def bystander() -> Iterator[pykka.ActorRef[Bystander]]:
    ref = Bystander.start()
    yield ref
    ref.stop(timeout=WAIT_S)


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_returns_values_in_input_order() -> None:
    assert run_ordered(lambda n: n * n, range(10), limit=3) == [n * n for n in range(10)]


def test_empty_items_return_empty_list_without_calling_fn() -> None:
    def never(_: object) -> object:
        raise AssertionError("fn must not be called")

    assert run_ordered(never, [], limit=4) == []


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_a_value_error_naming_limit(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        run_ordered(str, [1], limit=limit)


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        run_ordered(str, [1], limit=1, timeout=timeout)


def test_never_runs_more_than_limit_at_once() -> None:
    counter = PeakCounter()
    both_running = threading.Barrier(2, timeout=WAIT_S)

    def step(n: int) -> int:
        with counter:
            if n < 2:
                both_running.wait()  # proves two really run together
            time.sleep(0.002)
        return n

    assert run_ordered(step, range(12), limit=2) == list(range(12))
    assert counter.peak == 2


def test_exception_in_one_item_is_its_failure_and_others_complete() -> None:
    def step(n: int) -> int:
        if n == 1:
            raise KeyError("missing")
        return n

    results = run_ordered(step, [0, 1, 2, 3], limit=2)
    assert results[0] == 0
    assert isinstance(results[1], Failure)
    assert isinstance(results[1].error, KeyError)
    assert results[2:] == [2, 3]


def test_system_exit_in_a_step_is_a_failure_and_other_actors_keep_running(
    bystander: pykka.ActorRef[Bystander],
) -> None:
    def step(n: int) -> int:
        if n % 3 == 0:
            raise SystemExit(f"step {n} exits")
        return n

    results = run_ordered(step, range(9), limit=3)
    for n, result in enumerate(results):
        if n % 3 == 0:
            assert isinstance(result, Failure)
            assert isinstance(result.error, SystemExit)
        else:
            assert result == n
    assert bystander.is_alive()
    assert bystander.ask("still here", timeout=WAIT_S) == "still here"


def test_workers_stopped_from_outside_finish_their_items_and_are_replaced() -> None:
    pool = ActorPool(2)
    try:

        def step(n: int) -> int:
            if n == 1:
                pykka.ActorRegistry.stop_all(block=False)  # a hostile bystander
            return n

        assert pool.map(step, range(6)) == list(range(6))
        assert wait_for(lambda: "idle=0" in repr(pool))
        assert pool.map(lambda n: n + 1, range(4)) == [1, 2, 3, 4]
    finally:
        pool.close()


def test_limit_holds_across_concurrent_callers_of_one_pool() -> None:
    pool = ActorPool(2)
    lock = threading.Lock()
    running = peak = 0

    def step(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002)  # widen the window in which an overrun would show
        with lock:
            running -= 1
        return n

    answers: dict[int, list[int | Failure]] = {}

    def caller(k: int) -> None:
        answers[k] = pool.map(step, range(k * 10, k * 10 + 10))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    pool.close()
    assert peak <= 2
    assert answers == {k: list(range(k * 10, k * 10 + 10)) for k in range(3)}


def test_closed_pool_refuses_work_and_close_is_idempotent() -> None:
    pool = ActorPool(1)
    assert pool.map(str, [1]) == ["1"]
    pool.close()
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.map(str, [1])


def test_timeout_answers_unfinished_items_promptly_and_discards_late_results() -> None:
    release = threading.Event()
    late_step_done = threading.Event()

    def step(n: int) -> str:
        if n == 1:
            release.wait(WAIT_S)
            late_step_done.set()
            return "late"
        return f"ok-{n}"

    started = time.monotonic()
    results = run_ordered(step, range(4), limit=2, timeout=0.2)
    assert time.monotonic() - started < WAIT_S / 2
    assert results[0] == "ok-0"
    assert results[2:] == ["ok-2", "ok-3"]
    assert isinstance(results[1], Failure)
    assert isinstance(results[1].error, RequestTimeout)
    assert str(results[1].error) == "step did not finish within 0.2s"

    release.set()
    assert late_step_done.wait(WAIT_S)
    assert isinstance(results[1], Failure), "the late result never replaces the timeout"


def test_timeout_answers_unclaimed_items_too() -> None:
    release = threading.Event()
    calls: list[int] = []

    def step(n: int) -> int:
        calls.append(n)
        release.wait(WAIT_S)
        return n

    baseline_threads = threading.active_count()
    try:
        results = run_ordered(step, range(5), limit=1, timeout=0.1)
    finally:
        release.set()
    assert all(isinstance(r, Failure) and isinstance(r.error, RequestTimeout) for r in results)
    # Once the abandoned worker has ended, it can no longer start anything.
    assert wait_for(lambda: threading.active_count() <= baseline_threads)
    assert calls == [0], "no item starts after the timeout"


def test_cancel_answers_unstarted_items_aborted_and_keeps_running_results() -> None:
    cancel = threading.Event()
    both_running = threading.Barrier(2, timeout=WAIT_S)
    may_finish = threading.Event()
    cancel_calls: list[threading.Thread] = []

    def on_cancel() -> None:
        cancel_calls.append(threading.current_thread())
        may_finish.set()

    def step(n: int) -> str:
        both_running.wait()
        if n == 0:
            cancel.set()
        assert may_finish.wait(WAIT_S), "on_cancel was not called while steps ran"
        return f"done-{n}"

    results = run_ordered(step, range(6), limit=2, cancel=cancel, on_cancel=on_cancel)
    assert results[:2] == ["done-0", "done-1"]
    for result in results[2:]:
        assert isinstance(result, Failure)
        assert isinstance(result.error, Aborted)
        assert str(result.error) == "cancelled"
    assert cancel_calls == [threading.current_thread()]


def test_cancel_set_before_the_call_starts_nothing() -> None:
    cancel = threading.Event()
    cancel.set()
    calls: list[int] = []
    cancel_calls: list[None] = []

    results = run_ordered(
        calls.append, range(4), limit=2, cancel=cancel, on_cancel=lambda: cancel_calls.append(None)
    )
    assert calls == []
    assert all(isinstance(r, Failure) and isinstance(r.error, Aborted) for r in results)
    assert len(results) == 4
    assert cancel_calls == [None]


def test_cancel_never_set_runs_everything_without_calling_on_cancel() -> None:
    cancel_calls: list[None] = []
    results = run_ordered(
        lambda n: -n,
        range(7),
        limit=3,
        cancel=threading.Event(),
        on_cancel=lambda: cancel_calls.append(None),
    )
    assert results == [-n for n in range(7)]
    assert cancel_calls == []


def test_nested_calls_from_inside_a_step_complete() -> None:
    def outer(n: int) -> list[int | Failure]:
        return run_ordered(lambda m: n * 10 + m, range(3), limit=2)

    assert run_ordered(outer, range(4), limit=2) == [
        [n * 10 + m for m in range(3)] for n in range(4)
    ]


def test_concurrent_callers_each_get_their_own_answers() -> None:
    answers: dict[int, list[int | Failure]] = {}
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        try:
            answers[k] = run_ordered(lambda n: n + k * 100, range(25), limit=4)
        except BaseException as exc:
            errors.append(exc)

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(12)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(WAIT_S * 2)
    assert errors == []
    assert answers == {k: [n + k * 100 for n in range(25)] for k in range(12)}


def test_worker_threads_and_actors_end_with_the_call() -> None:
    baseline_threads = threading.active_count()
    baseline_actors = len(pykka.ActorRegistry.get_all())
    assert run_ordered(lambda n: n, range(50), limit=8) == list(range(50))
    assert wait_for(lambda: threading.active_count() <= baseline_threads)
    assert wait_for(lambda: len(pykka.ActorRegistry.get_all()) <= baseline_actors)


def test_failure_exposes_the_error() -> None:
    error = ValueError("bad")
    assert Failure(error).error is error


@settings(max_examples=50, deadline=None)
@given(items=st.lists(st.integers(), max_size=60), limit=st.integers(min_value=1, max_value=12))
def test_outputs_match_inputs_in_order_and_concurrency_stays_within_limit(
    items: list[int], limit: int
) -> None:
    counter = PeakCounter()

    def step(n: int) -> int:
        with counter:
            if n % 7 == 0:
                raise ValueError(n)
            return n * 2

    results = run_ordered(step, items, limit=limit)
    assert len(results) == len(items)
    for item, result in zip(items, results, strict=True):
        if item % 7 == 0:
            assert isinstance(result, Failure)
            assert result.error.args == (item,)
        else:
            assert result == item * 2
    assert counter.peak <= limit
