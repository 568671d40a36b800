"""Stress and fault injection: every scenario ends with exact accounting.

Each scenario counts what was accepted and what was answered (a result or an `AgentError`),
and checks that nothing is left running: futures all done, threads back to their baseline.
They run in CI; each takes a few seconds on two cores.
"""

from __future__ import annotations

import concurrent.futures
import gc
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import actor_orch as ao
from actor_orch import AgentOptions, AgentOrchestrator, DefaultSupervisor
from actor_orch.types import text_of

WAIT = 30.0


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)  # polling a condition, not synchronising on time
    return condition()


def threads_settle(baseline: int) -> bool:
    return wait_for(lambda: threading.active_count() <= baseline)


class Tally:
    """Counts accepted requests and how each was answered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.refused = 0
        self.futures: list[concurrent.futures.Future[ao.AgentResult]] = []

    def send(self, handle: ao.OrchestratedHandle, text: str) -> None:
        try:
            future = handle.send_message_async(text, timeout=WAIT)
        except ao.PluginError:
            with self.lock:
                self.refused += 1
            return
        with self.lock:
            self.accepted += 1
            self.futures.append(future)

    def settle(self) -> tuple[int, int]:
        """(results, errors); asserts every accepted future is answered."""
        done, pending = concurrent.futures.wait(self.futures, timeout=WAIT)
        assert not pending, f"{len(pending)} accepted request(s) never answered"
        errors = sum(1 for f in done if f.exception() is not None)
        for future in done:
            error = future.exception()
            assert error is None or isinstance(error, ao.AgentError), repr(error)
        assert len(done) == self.accepted
        return len(done) - errors, errors


def run_threads(count: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()


def test_cancel_racing_eight_senders_for_two_hundred_rounds() -> None:
    baseline = threading.active_count()
    with AgentOrchestrator(supervisor=DefaultSupervisor()) as orch:
        orch.add_agent("a", lambda: AgentOptions(ao.EchoModel(), retry=None))
        for round_number in range(200):
            handle = orch.spawn("a")
            tally = Tally()
            start = threading.Barrier(9, timeout=WAIT)

            def sender(
                k: int,
                handle: ao.OrchestratedHandle = handle,
                tally: Tally = tally,
                start: threading.Barrier = start,
            ) -> None:
                start.wait()
                for i in range(5):
                    tally.send(handle, f"{k}-{i}")

            threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
            for thread in threads:
                thread.start()
            start.wait()
            if round_number % 2:
                time.sleep(random.random() / 2000)  # vary where the cancel lands
            handle.cancel()
            for thread in threads:
                thread.join(WAIT)
            results, errors = tally.settle()
            assert results + errors + tally.refused == 40
            assert handle.status() is ao.AgentStatus.CANCELLED
    assert threads_settle(baseline)


def test_restart_storm_of_four_thousand_requests_with_thirty_percent_failures() -> None:
    rng = random.Random(7)
    failures = 0
    lock = threading.Lock()

    def flaky(request: ao.ModelRequest) -> str:
        nonlocal failures
        with lock:
            fail = rng.random() < 0.3
            failures += fail
        if fail:
            raise ao.NetworkError("injected")
        return "ok"

    seen: list[ao.Event] = []
    with AgentOrchestrator(supervisor=DefaultSupervisor(max_restarts=10_000)) as orch:
        orch.subscribe(seen.append)
        orch.add_agent("a", lambda: AgentOptions(ao.FunctionModel(flaky), retry=None))
        handle = orch.spawn("a")
        tally = Tally()
        run_threads(8, lambda k: [tally.send(handle, str(i)) for i in range(500)])
        results, errors = tally.settle()
        assert tally.accepted == 4000 and tally.refused == 0
        assert errors == failures
        assert results == 4000 - failures
        assert handle.restarts == failures
        restarted = sum(1 for e in seen if isinstance(e, ao.AgentRestarted))
        assert restarted == failures
        assert handle.status() is ao.AgentStatus.RUNNING


def test_shutdown_racing_senders_answers_every_accepted_request() -> None:
    for _ in range(20):
        orch = AgentOrchestrator(supervisor=DefaultSupervisor())
        orch.add_agent("a", lambda: AgentOptions(ao.EchoModel(), retry=None))
        handles = [orch.spawn("a") for _ in range(4)]
        tally = Tally()
        start = threading.Barrier(5, timeout=WAIT)

        def sender(
            k: int,
            handles: list[Any] = handles,
            tally: Tally = tally,
            start: threading.Barrier = start,
        ) -> None:
            start.wait()
            for i in range(50):
                tally.send(handles[(k + i) % len(handles)], str(i))

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        start.wait()
        orch.shutdown(timeout=5)
        for thread in threads:
            thread.join(WAIT)
        results, errors = tally.settle()
        assert results + errors + tally.refused == 200
        assert all(h.is_done() for h in handles)


def test_spawn_cancel_shutdown_cycles_leave_no_thread_and_no_handle_behind() -> None:
    gc.collect()
    baseline = threading.active_count()
    for cycle in range(200):
        orch = AgentOrchestrator(supervisor=DefaultSupervisor())
        orch.add_agent("a", lambda: AgentOptions(ao.EchoModel()))
        orch.add_child("b", "a", lambda: AgentOptions(ao.EchoModel()))
        parent, child = orch.spawn("a"), orch.spawn("b")
        parent.send_message("x", timeout=WAIT)
        if cycle % 2:
            parent.cancel()  # cascades to the child
            assert wait_for(child.is_done)
        orch.shutdown(timeout=5)
        assert orch.running() == []
    assert threads_settle(baseline)


class _Killer(BaseException):
    """A BaseException that is not Exception: what makes Pykka stop every actor if it escapes."""


def test_a_pool_run_with_base_exceptions_hangs_and_stopped_workers_answers_every_step() -> None:
    import pykka

    release = threading.Event()

    class Hostile(ao.AgentExecutor):
        def execute_step(self, spec: ao.AgentStepSpec, events: Any = None) -> ao.StepOutcome:
            kind = int(spec.task_id) % 5
            if kind == 0:
                raise SystemExit(3)
            if kind == 1:
                raise _Killer()
            if kind == 2:
                release.wait(WAIT)  # hangs past the call's timeout
            if kind == 3:
                pykka.ActorRegistry.stop_all(block=False)  # stops the pool's own workers
            return (
                ao.StepOutcome.failed(spec.task_id, spec.agent, "unreachable")
                if kind == 2
                else (
                    ao.StepOutcome(spec.task_id, f"task-run-{spec.task_id}", spec.agent, "ok", True)
                )
            )

        def concurrency_hint(self) -> int:
            return 4

    specs = [ao.AgentStepSpec(str(i), "x", "", "") for i in range(50)]
    executor = Hostile()
    try:
        outcomes = ao.execute_steps_parallel(executor, specs, timeout=2.0)
        assert [o.task_id for o in outcomes] == [str(i) for i in range(50)]
        by_kind: dict[int, set[bool]] = {}
        for outcome in outcomes:
            by_kind.setdefault(int(outcome.task_id) % 5, set()).add(outcome.success)
        assert by_kind[0] == {False} and by_kind[1] == {False}
        assert by_kind[2] == {False}  # abandoned by the timeout
        # The pool still works after its workers were stopped from outside.
        release.set()
        again = ao.execute_steps_parallel(executor, [ao.AgentStepSpec("9", "x", "", "")])
        assert again[0].success
    finally:
        release.set()
        executor.close()


def test_streams_cancelled_mid_reply_are_answered_once_and_the_agent_keeps_serving() -> None:
    def slow_words(request: ao.ModelRequest) -> Any:
        abort = threading.Event()

        def words() -> Any:
            for i in range(1000):
                if abort.wait(0.0005):
                    return
                yield f"w{i} "

        return words()

    with AgentOrchestrator(supervisor=DefaultSupervisor()) as orch:
        orch.add_agent("a", lambda: AgentOptions(ao.FunctionModel(slow_words), retry=None))
        handle = orch.spawn("a")
        for _ in range(30):
            stream = handle.stream_message("go", timeout=WAIT)
            for received, _delta in enumerate(stream, start=1):
                if received == 5:
                    stream.cancel()
                    break
            with pytest.raises(ao.Aborted):
                stream.result(WAIT)
        assert handle.status() is ao.AgentStatus.RUNNING
        assert handle.restarts == 0
        stream = handle.stream_message("go", timeout=WAIT)
        assert "".join(stream) == stream.result(WAIT).text


def test_synchronous_sends_with_timeouts_racing_their_answers_never_hang_or_leak_a_slot() -> None:
    """Eight threads send synchronously with timeouts about as long as a reply takes, into a
    mailbox of four: every call returns or raises `RequestTimeout`, no slot of the mailbox is
    lost (the agent serves afterwards), and every reply a caller got is in the history."""
    rng = random.Random(11)
    rng_lock = threading.Lock()

    def jitter() -> float:
        with rng_lock:
            return rng.random() * 0.002

    def echo_slowly(request: ao.ModelRequest) -> str:
        time.sleep(jitter())
        last = request.messages[-1]
        assert isinstance(last, ao.UserMessage)
        return text_of(last.content)

    answered: list[str] = []
    timed_out = [0]
    lock = threading.Lock()
    with AgentOrchestrator(supervisor=DefaultSupervisor(), channel_buffer=4) as orch:
        orch.add_agent("a", lambda: AgentOptions(ao.FunctionModel(echo_slowly), retry=None))
        handle = orch.spawn("a")

        def sender(k: int) -> None:
            for i in range(100):
                text = f"{k}-{i}"
                try:
                    result = handle.send_message(text, timeout=jitter() + 0.0005)
                except ao.RequestTimeout:
                    with lock:
                        timed_out[0] += 1
                    continue
                assert result.text == text
                with lock:
                    answered.append(text)

        run_threads(8, sender)
        assert len(answered) + timed_out[0] == 800
        assert timed_out[0] > 0  # the race this is about did happen
        assert handle.send_message("final", timeout=WAIT).text == "final"
        assert handle.status() is ao.AgentStatus.RUNNING and handle.restarts == 0
        in_history = {
            text_of(m.content) for m in handle.history() if isinstance(m, ao.AssistantMessage)
        }
        assert set(answered) <= in_history


def test_sessions_written_from_two_processes_lose_no_message(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    code = (
        "import sys, actor_orch as ao\n"
        "store = ao.SqliteSessionStore(sys.argv[1])\n"
        "for i in range(200):\n"
        "    store.append('a', 's', [ao.user_message(sys.argv[2] + str(i))])\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", code, str(db), tag]) for tag in ("x", "y")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    messages = ao.SqliteSessionStore(db).load("a", "s")
    texts = [m.content[0].text for m in messages]
    assert sorted(texts) == sorted([f"x{i}" for i in range(200)] + [f"y{i}" for i in range(200)])
    assert [t for t in texts if t.startswith("x")] == [f"x{i}" for i in range(200)]


BAD_TIMEOUTS = [float("nan"), float("inf"), -1.0, "1", True]


@pytest.mark.parametrize("bad", BAD_TIMEOUTS)
def test_bad_timeouts_are_refused_everywhere_and_change_nothing(bad: Any) -> None:
    with AgentOrchestrator() as orch:
        orch.add_agent("a", lambda: AgentOptions(ao.EchoModel()))
        handle = orch.spawn("a")
        calls: list[Callable[[], object]] = [
            lambda: handle.send_message("x", timeout=bad),
            lambda: handle.send_message_async("x", timeout=bad),
            lambda: handle.send_messages([ao.user_message("x")], timeout=bad),
            lambda: handle.stream_message("x", timeout=bad),
            lambda: handle.await_result(timeout=bad),
            lambda: handle.clear_history(timeout=bad),
            lambda: orch.shutdown(timeout=bad),
        ]
        for call in calls:
            with pytest.raises((TypeError, ValueError), match="timeout"):
                call()
        assert handle.status() is ao.AgentStatus.RUNNING
        assert handle.send_message("still fine", timeout=WAIT).text == "still fine"
        executor = ao.LocalExecutor(orch)
        with pytest.raises((TypeError, ValueError), match="timeout"):
            ao.execute_steps_parallel(executor, [ao.AgentStepSpec("t", "a", "", "")], timeout=bad)
        executor.close()


BAD_VALUES: list[tuple[str, Callable[[], object]]] = [
    ("text", lambda: _handle().send_message(None)),  # type: ignore[arg-type]
    ("text", lambda: _handle().send_message(b"x")),  # type: ignore[arg-type]
    ("session", lambda: _handle().send_message("x", session=3)),  # type: ignore[arg-type]
    ("session", lambda: _handle().send_message("x", session="")),
    ("output_type", lambda: _handle().send_message("x", output_type=object())),
    ("messages", lambda: _handle().send_messages(["not a message"])),  # type: ignore[list-item]
    ("name", lambda: AgentOrchestrator().add_agent("", lambda: AgentOptions(ao.EchoModel()))),
    ("options_factory", lambda: AgentOrchestrator().add_agent("a", None)),  # type: ignore[arg-type]
    ("parent", lambda: AgentOrchestrator().add_child("c", None, lambda: None)),  # type: ignore[arg-type]
    ("channel_buffer", lambda: AgentOrchestrator(channel_buffer=0)),
    ("max_restarts", lambda: AgentOrchestrator(max_restarts=-1)),
    ("max_delegation_depth", lambda: AgentOrchestrator(max_delegation_depth=-1)),
    ("sessions", lambda: AgentOrchestrator(sessions=object())),  # type: ignore[arg-type]
    ("max_parallel_tasks", lambda: ao.LocalExecutor(AgentOrchestrator(), max_parallel_tasks=0)),
    ("max_steps", lambda: ao.AgentStepSpec("t", "a", "", "", max_steps=0)),
    ("jitter", lambda: ao.Backoff(jitter="no")),  # type: ignore[arg-type]
    ("within", lambda: ao.DefaultSupervisor(within=float("nan"))),
    ("max_turns", lambda: AgentOptions(ao.EchoModel(), max_turns=0)),
    ("history_limit", lambda: AgentOptions(ao.EchoModel(), history_limit=0)),
    ("delegates", lambda: AgentOptions(ao.EchoModel(), delegates="x")),
    ("max_tokens", lambda: ao.ModelSettings(max_tokens=0)),
]

_ORCH = AgentOrchestrator()
_ORCH.add_agent("a", lambda: AgentOptions(ao.EchoModel()))


def _handle() -> ao.OrchestratedHandle:
    return _ORCH.spawn("a")


@pytest.mark.parametrize(("argument", "call"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_input_sweep_names_the_argument(argument: str, call: Callable[[], object]) -> None:
    with pytest.raises((TypeError, ValueError)) as caught:
        call()
    assert argument in str(caught.value)
