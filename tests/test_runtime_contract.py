"""Acceptance tests for the runtime contract (issue 8), black-box against `import actor_orch as ao`.

Each section states one part of API.md as behaviour; together they define "done" for the rewrite
of the orchestrator, the supervisor and the executor pool.

  1. One limit per executor ............ §5 "The limit belongs to the executor, not to the call"
  2. One supervision path .............. §5 "a step's failures and restarts go through the
                                          orchestrator's supervisor"; §4 DefaultSupervisor(within=)
  3. A slow policy isolates ............ §4 "the failed request is answered at once" / "a policy
                                          that blocks for one agent never holds up ... another"
  4. Backoff never blocks shutdown ..... §4 backoff, `shutdown(timeout)`
  5. User code is contained ............ §4 Robustness ("a BaseException ... is contained like an
                                          Exception"); §3 tools; §5 "a step that raises"
  6. Callbacks may call back ........... §4 Robustness ("a callback may call any public method")
  7. Validation at the boundary ........ §4 handle / registry; §5 specs, executor, timeout
  8. Prompt cancel and timeout ......... §5 "the call returns within 0.5 s ... even when a model
                                          call blocks"
  9. Ended handles are released ........ §4 "Ended handles are released by the orchestrator at once"
 10. Threads are bounded ............... §5 LocalExecutor owns a pool reused across calls; close()
 11. Every request answered once ....... §4 "Every request ever accepted is answered exactly once"

Rules these tests keep: nothing but the public API (plus `pykka` to start one unrelated actor);
no sleep used to synchronise (threads meet on Events, Barriers and Conditions); every blocking
wait has a timeout, so a bug fails a test instead of hanging it; the only wall-clock asserts are
bounds the API states, checked with a large margin; a blocked model is always released at
teardown so no thread outlives its test for long.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

import actor_orch as ao
from actor_orch import (
    AgentOptions,
    AgentOrchestrator,
    AgentStatus,
    DefaultSupervisor,
    FunctionModel,
    SupervisorAction,
)

# Bound for anything the API says happens "at once" (or that a deadlock would stop forever).
WAIT = 5.0
# API §5: once cancel is set or the timeout expires the call returns within 0.5 s; we allow 2 s.
PROMPT_RETURN_S = 2.0
# How long a blocked model call blocks unless the test releases it first.
MODEL_BLOCK_S = 10.0


class Boom(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


BASE_EXCEPTIONS = [SystemExit, KeyboardInterrupt, Boom]


# -- small helpers -------------------------------------------------------------------------------


def step(task_id: str, agent: str, prompt: str) -> ao.AgentStepSpec:
    return ao.AgentStepSpec(task_id, agent, f"step {task_id}", prompt)


def prompt_of(request: ao.ModelRequest) -> str:
    """The text of the last user message of a model call."""
    for message in reversed(request.messages):
        if isinstance(message, ao.UserMessage):
            return "".join(b.text for b in message.content if isinstance(b, ao.TextContent))
    return ""


def echo_unless_fail(request: ao.ModelRequest) -> str:
    """Echo the prompt; a prompt starting with "fail" raises a retryable `NetworkError`."""
    text = prompt_of(request)
    if text.startswith("fail"):
        raise ao.NetworkError(f"injected failure for {text!r}")
    return text


def flaky_options() -> AgentOptions:
    return AgentOptions(FunctionModel(echo_unless_fail), retry=None)


def echo_options() -> AgentOptions:
    return AgentOptions(ao.EchoModel(), retry=None)


def outcome(fn: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """`(value, None)` or `(None, error)` for `fn()`.

    A BaseException that is not an Exception escaping into the caller fails the test: it means
    user code was not contained (and a KeyboardInterrupt would otherwise abort the whole run).
    """
    try:
        return fn(), None
    except Exception as err:
        return None, err
    except BaseException as err:
        pytest.fail(
            f"{type(err).__name__}({err}) escaped into the caller instead of being contained"
        )


class Background:
    """Runs `fn` on a daemon thread, so a call that hangs fails the test instead of hanging it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as err:
            self._error = err
        finally:
            self.finished_at = time.monotonic()

    def result(self, timeout: float, what: str) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            pytest.fail(f"{what} did not return within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value


class Recorder:
    """An event callback that keeps what it sees and lets a test wait for an event."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, event: Any) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def of(self, kind: type) -> list[Any]:
        with self._cond:
            return [e for e in self.events if isinstance(e, kind)]

    def wait_for(self, match: Callable[[Any], bool], timeout: float = WAIT) -> Any:
        def found() -> Any:
            return next((e for e in self.events if match(e)), None)

        with self._cond:
            event = self._cond.wait_for(found, timeout)
        assert event is not None, f"no matching event within {timeout}s; saw {self.events}"
        return event


class BlockingModel:
    """A `FunctionModel` function whose calls block until `release` is set (at most `block_s`)."""

    def __init__(self, block_s: float = MODEL_BLOCK_S) -> None:
        self.release = threading.Event()
        self.block_s = block_s
        self.entered = 0
        self._cond = threading.Condition()

    def __call__(self, request: ao.ModelRequest) -> str:
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
        self.release.wait(self.block_s)
        return "released"

    def wait_entered(self, calls: int = 1) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.entered >= calls, WAIT)
        assert ok, f"{calls} model call(s) expected to be running, saw {self.entered}"


class _PlainActor(pykka.ThreadingActor):
    use_daemon_thread = True

    def on_receive(self, message: Any) -> Any:
        return message


class Bystanders:
    """What no failure elsewhere may touch: a plain Pykka actor, another orchestrator's agent."""

    def __init__(self, actor: pykka.ActorRef[Any], handle: ao.OrchestratedHandle) -> None:
        self.actor = actor
        self.handle = handle

    def assert_untouched(self) -> None:
        assert self.actor.is_alive(), "an unrelated Pykka actor was stopped (pykka stop_all ran)"
        assert self.actor.ask("ping", timeout=WAIT) == "ping"
        assert self.handle.status() is AgentStatus.RUNNING, (
            "an unrelated orchestrator's agent ended"
        )
        assert self.handle.send_message("still here", timeout=WAIT).text == "still here"


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll `condition` until true or `timeout`; for what has no event (GC, threads exiting)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        threading.Event().wait(0.02)
    return True


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def orchestrators() -> Iterator[Callable[..., AgentOrchestrator]]:
    """Make orchestrators; every one is shut down at teardown."""
    made: list[AgentOrchestrator] = []

    def make(**kwargs: Any) -> AgentOrchestrator:
        orchestrator = AgentOrchestrator(**kwargs)
        made.append(orchestrator)
        return orchestrator

    yield make
    problems = []
    for orchestrator in reversed(made):
        try:
            orchestrator.shutdown(timeout=2)
        except BaseException as err:  # keep cleaning up; report at the end
            problems.append(err)
    assert not problems, f"shutdown at teardown raised {problems!r}"


@pytest.fixture
def executors() -> Iterator[Callable[..., ao.LocalExecutor]]:
    """Make LocalExecutors; each is closed at teardown (`close()` itself is tested in §10)."""
    made: list[ao.LocalExecutor] = []

    def make(orchestrator: AgentOrchestrator, max_parallel_tasks: int = 4) -> ao.LocalExecutor:
        executor = ao.LocalExecutor(orchestrator, max_parallel_tasks=max_parallel_tasks)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        close = getattr(executor, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


@pytest.fixture
def blocking() -> Iterator[BlockingModel]:
    """A blocking model function, released at teardown (list it after orchestrators/executors)."""
    model = BlockingModel()
    yield model
    model.release.set()


@pytest.fixture
def bystanders(orchestrators: Callable[..., AgentOrchestrator]) -> Iterator[Bystanders]:
    actor = _PlainActor.start()
    other = orchestrators()
    other.add_agent("bystander", echo_options)
    yield Bystanders(actor, other.spawn("bystander"))
    with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
        actor.stop(timeout=WAIT)


# == 1. One limit per executor (API §5) ========================================================


def test_threads_calling_one_executor_at_once_share_its_limit(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
) -> None:
    limit = 2
    cond = threading.Condition()
    active = peak = 0

    def model(request: ao.ModelRequest) -> str:
        nonlocal active, peak
        with cond:
            active += 1
            peak = max(peak, active)
            cond.notify_all()
            # Hold the call briefly so calls overlap when an executor admits too many at once;
            # a correct executor only pays the wait, the outcome never depends on it.
            cond.wait_for(lambda: active > limit, timeout=0.05)
            active -= 1
            cond.notify_all()
        return prompt_of(request)

    orch = orchestrators()
    orch.add_agent("a", lambda: AgentOptions(FunctionModel(model), retry=None))
    executor = executors(orch, max_parallel_tasks=limit)
    start = threading.Barrier(3)

    def caller(c: int) -> list[ao.StepOutcome]:
        specs = [step(f"c{c}-{i}", "a", f"caller {c} item {i}") for i in range(6)]
        start.wait(WAIT)
        return ao.execute_steps_parallel(executor, specs)

    calls = [Background(lambda c=c: caller(c)) for c in range(3)]
    for c, call in enumerate(calls):
        outcomes = call.result(10, f"execute_steps_parallel of caller {c}")
        assert [o.task_id for o in outcomes] == [f"c{c}-{i}" for i in range(6)]
        assert [o.output for o in outcomes] == [f"caller {c} item {i}" for i in range(6)]
        assert all(o.success for o in outcomes)
    assert peak <= limit, f"{peak} model calls ran at once on an executor limited to {limit}"


# == 2. One supervision path (API §5, §4) ======================================================


def test_step_failure_and_restart_reach_subscribers_as_well_as_events(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
) -> None:
    calls = itertools.count()

    def fails_once(request: ao.ModelRequest) -> str:
        if next(calls) == 0:
            raise ao.NetworkError("reset once")
        return "recovered"

    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("w", lambda: AgentOptions(FunctionModel(fails_once), retry=None))
    subscribed, passed = Recorder(), Recorder()
    orch.subscribe(subscribed)

    [result] = ao.execute_steps_parallel(executors(orch), [step("t1", "w", "go")], events=passed)

    assert result.success and result.output == "recovered"
    for seen, where in ((subscribed, "orchestrator.subscribe"), (passed, "events=")):
        failed = seen.of(ao.AgentFailed)
        assert [(e.name, e.action) for e in failed] == [("w", SupervisorAction.RESTART)], where
        assert "reset once" in failed[0].error, where
        assert [(e.name, e.attempt) for e in seen.of(ao.AgentRestarted)] == [("w", 1)], where


def test_step_started_and_finished_reach_subscribers_as_well_as_events(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
) -> None:
    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("w", echo_options)
    subscribed, passed = Recorder(), Recorder()
    orch.subscribe(subscribed)

    ao.execute_steps_parallel(executors(orch), [step("t1", "w", "go")], events=passed)

    for seen, where in ((subscribed, "orchestrator.subscribe"), (passed, "events=")):
        assert [(e.task_id, e.agent) for e in seen.of(ao.StepStarted)] == [("t1", "w")], where
        finished = seen.of(ao.StepFinished)
        assert [(e.task_id, e.agent, e.success) for e in finished] == [("t1", "w", True)], where


def test_failing_steps_never_use_up_the_restart_window_of_a_spawned_agent_of_the_same_name(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
) -> None:
    orch = orchestrators(supervisor=DefaultSupervisor(max_restarts=1, within=60))
    orch.add_agent("w", flaky_options)
    handle = orch.spawn("w")
    assert handle.send_message("hello", timeout=WAIT).text == "hello"

    specs = [step(f"t{i}", "w", "fail every time") for i in range(4)]
    assert not any(o.success for o in ao.execute_steps_parallel(executors(orch), specs))

    # The spawned agent's own first failure is its first restart in its own window.
    seen = Recorder()
    orch.subscribe(seen)  # every event of the steps was delivered before they returned
    with pytest.raises(ao.NetworkError):
        handle.send_message("fail once", timeout=WAIT)
    decided = seen.wait_for(lambda e: isinstance(e, ao.AgentFailed))
    assert (decided.name, decided.action) == ("w", SupervisorAction.RESTART)
    assert handle.send_message("hello again", timeout=WAIT).text == "hello again"
    assert handle.restarts == 1
    assert handle.status() is AgentStatus.RUNNING


class ExclusivePolicy:
    """RESTART on retryable errors, STOP otherwise; counts calls about agent `watched` that
    overlap another call about it (calls about other agents may run at the same time)."""

    def __init__(self, watched: str) -> None:
        self._watched = watched
        self._busy = threading.Lock()
        self._count = threading.Lock()
        self._hold = threading.Event()  # never set: waited on only to widen the overlap window
        self.calls = 0
        self.overlaps = 0

    def on_agent_error(self, name: str, error: ao.AgentError) -> SupervisorAction:
        action = SupervisorAction.RESTART if error.is_retryable() else SupervisorAction.STOP
        if name != self._watched:
            self._hold.wait(0.02)  # overlaps calls about the watched agent, which is allowed
            return action
        with self._count:
            self.calls += 1
        if not self._busy.acquire(blocking=False):
            with self._count:
                self.overlaps += 1
            return action
        try:
            # Stay inside a moment, so a runtime that calls us from several threads overlaps.
            self._hold.wait(0.02)
            return action
        finally:
            self._busy.release()


def test_the_policy_is_never_called_twice_at_once_for_one_agent_while_steps_fail_too(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
) -> None:
    # A policy runs on the failing agent's own thread: calls about different agents (or
    # different steps) may overlap, calls about one running agent never do.
    policy = ExclusivePolicy("s")
    orch = orchestrators(supervisor=policy)
    orch.add_agent("w", flaky_options, max_restarts=2)
    orch.add_agent("s", flaky_options, max_restarts=100)
    spawned = orch.spawn("s")
    executor = executors(orch, max_parallel_tasks=4)
    start = threading.Barrier(2)

    def run_steps() -> list[ao.StepOutcome]:
        start.wait(WAIT)
        return ao.execute_steps_parallel(executor, [step(f"t{i}", "w", "fail") for i in range(6)])

    steps = Background(run_steps)
    start.wait(WAIT)
    futures = [spawned.send_message_async(f"fail {i}") for i in range(8)]

    assert not any(o.success for o in steps.result(10, "execute_steps_parallel"))
    for future in futures:
        assert isinstance(future.exception(timeout=WAIT), ao.NetworkError)
    assert policy.overlaps == 0, f"calls about one agent overlapped {policy.overlaps} time(s)"
    assert policy.calls == 8  # every failure of the spawned agent was decided by it


# == 3. A slow policy for one agent holds up nobody else (API §4) ================================


class BlockingPolicy:
    """RESTART on retryable errors, STOP otherwise; for agent `slow`, first blocks on `release`."""

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.entered = threading.Event()
        self.release = threading.Event()

    def on_agent_error(self, name: str, error: ao.AgentError) -> SupervisorAction:
        if name == self.slow:
            self.entered.set()
            self.release.wait(MODEL_BLOCK_S)
        return SupervisorAction.RESTART if error.is_retryable() else SupervisorAction.STOP


@pytest.fixture
def blocking_policy() -> Iterator[BlockingPolicy]:
    policy = BlockingPolicy(slow="A")
    yield policy
    policy.release.set()


def test_a_policy_blocked_for_one_agent_never_delays_another_agents_failure(
    orchestrators: Callable[..., AgentOrchestrator], blocking_policy: BlockingPolicy
) -> None:
    orch = orchestrators(supervisor=blocking_policy)
    orch.add_agent("A", flaky_options)
    orch.add_agent("B", flaky_options)
    a, b = orch.spawn("A"), orch.spawn("B")
    a.send_message_async("fail A")
    assert blocking_policy.entered.wait(WAIT), "the policy was never asked about A"

    with pytest.raises(ao.NetworkError):  # not RequestTimeout: B's failure is handled at once
        b.send_message("fail B", timeout=3)
    assert not blocking_policy.release.is_set()  # answered while A's policy call still blocks
    assert b.status() is AgentStatus.RUNNING  # B did not give up waiting and stop itself
    # The policy is never called concurrently, so B's own decision may wait for A's; once A's
    # call returns, B is restarted and serves again.
    blocking_policy.release.set()
    assert b.send_message("hello", timeout=WAIT).text == "hello"
    assert b.status() is AgentStatus.RUNNING


def test_a_failed_request_is_answered_after_its_own_policy_with_the_restart_counted(
    orchestrators: Callable[..., AgentOrchestrator], blocking_policy: BlockingPolicy
) -> None:
    # API §4: `restarts` is counted before the failed request is answered, so the request
    # waits for its own agent's decision (and only that one: see the test above).
    orch = orchestrators(supervisor=blocking_policy)
    orch.add_agent("A", flaky_options)
    a = orch.spawn("A")
    failed = a.send_message_async("fail A")
    assert blocking_policy.entered.wait(WAIT), "the policy was never asked about A"
    assert not failed.done()
    blocking_policy.release.set()
    assert isinstance(failed.exception(WAIT), ao.NetworkError)
    assert a.restarts == 1
    assert a.send_message("hello", timeout=WAIT).text == "hello"  # restarted, serving again


# == 4. A restart backoff never blocks shutdown (API §4) ========================================


def test_shutdown_does_not_wait_out_a_restart_backoff(
    orchestrators: Callable[..., AgentOrchestrator],
) -> None:
    backoff = ao.Backoff(base_delay=3.0, max_delay=10.0, jitter=False)
    orch = orchestrators(supervisor=DefaultSupervisor(backoff=backoff))
    model = ao.ScriptedModel([ao.NetworkError("reset"), "not needed"])
    orch.add_agent("a", lambda: AgentOptions(model, retry=None))
    seen = Recorder()
    orch.subscribe(seen)
    handle = orch.spawn("a")
    with pytest.raises(ao.NetworkError):  # answered at once; only the restart waits
        handle.send_message("x", timeout=2)
    seen.wait_for(lambda e: isinstance(e, ao.AgentFailed) and e.action is SupervisorAction.RESTART)

    started = time.monotonic()
    orch.shutdown(timeout=10)
    elapsed = time.monotonic() - started

    assert elapsed < 2.0, (
        f"shutdown of an idle agent took {elapsed:.1f}s: it waited out the backoff"
    )
    assert handle.is_done()


# == 5. User code is contained, even a BaseException (API §4 Robustness) =========================


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_callback_raising_base_exception_on_restart_still_answers_and_agent_keeps_serving(
    orchestrators: Callable[..., AgentOrchestrator],
    bystanders: Bystanders,
    exc_type: type[BaseException],
) -> None:
    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", flaky_options)

    def hostile(event: Any) -> None:
        if isinstance(event, ao.AgentRestarted):
            raise exc_type("from an event callback")

    orch.subscribe(hostile)
    later = Recorder()
    orch.subscribe(later)
    handle = orch.spawn("a")

    _, error = outcome(lambda: handle.send_message("fail", timeout=WAIT))
    assert isinstance(error, ao.NetworkError)
    assert handle.send_message("hello", timeout=WAIT).text == "hello"
    assert handle.status() is AgentStatus.RUNNING
    later.wait_for(lambda e: isinstance(e, ao.AgentRestarted))  # other subscribers still served
    bystanders.assert_untouched()


@pytest.mark.parametrize("exc_type", [*BASE_EXCEPTIONS, RuntimeError])
def test_policy_raising_is_contained_and_never_touches_unrelated_actors(
    orchestrators: Callable[..., AgentOrchestrator],
    bystanders: Bystanders,
    exc_type: type[BaseException],
) -> None:
    class HostilePolicy:
        def on_agent_error(self, name: str, error: ao.AgentError) -> SupervisorAction:
            raise exc_type("from a policy")

    orch = orchestrators(supervisor=HostilePolicy())
    orch.add_agent("a", flaky_options)
    handle = orch.spawn("a")

    _, error = outcome(lambda: handle.send_message("fail", timeout=WAIT))
    assert isinstance(error, ao.NetworkError)
    # Either the agent goes on serving, or it ended (FAILED) and refuses or fails the request.
    reply, later_error = outcome(lambda: handle.send_message("hello", timeout=WAIT))
    if later_error is None:
        assert reply.text == "hello"
    else:
        assert isinstance(later_error, ao.PluginError), repr(later_error)
        assert handle.status() is AgentStatus.FAILED
    assert handle.status() is not AgentStatus.CANCELLED
    bystanders.assert_untouched()


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_options_factory_raising_base_exception_at_spawn_is_a_plugin_error(
    orchestrators: Callable[..., AgentOrchestrator],
    bystanders: Bystanders,
    exc_type: type[BaseException],
) -> None:
    def hostile_factory() -> AgentOptions:
        raise exc_type("from an options factory")

    orch = orchestrators()
    orch.add_agent("bad", hostile_factory)
    orch.add_agent("good", echo_options)

    _, error = outcome(lambda: orch.spawn("bad"))
    assert isinstance(error, ao.PluginError), repr(error)
    assert "bad" in str(error)
    assert orch.spawn("good").send_message("hi", timeout=WAIT).text == "hi"
    bystanders.assert_untouched()


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_options_factory_raising_base_exception_at_restart_ends_the_agent_failed(
    orchestrators: Callable[..., AgentOrchestrator],
    bystanders: Bystanders,
    exc_type: type[BaseException],
) -> None:
    builds = itertools.count()

    def factory() -> AgentOptions:
        if next(builds) > 0:
            raise exc_type("from an options factory")
        return flaky_options()

    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", factory)
    seen = Recorder()
    orch.subscribe(seen)
    handle = orch.spawn("a")

    _, error = outcome(lambda: handle.send_message("fail", timeout=WAIT))
    assert isinstance(error, ao.NetworkError)
    # The rebuild fails (now or when the next request needs it): nothing is left unanswered.
    _, next_error = outcome(lambda: handle.send_message("hello", timeout=WAIT))
    assert isinstance(next_error, ao.PluginError), repr(next_error)
    seen.wait_for(lambda e: isinstance(e, ao.AgentStopped) and e.name == "a")
    assert handle.status() is AgentStatus.FAILED
    _, final_error = outcome(lambda: handle.await_result(timeout=WAIT))
    assert isinstance(final_error, ao.PluginError), repr(final_error)
    bystanders.assert_untouched()


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_tool_raising_base_exception_becomes_an_error_tool_result_and_the_loop_goes_on(
    orchestrators: Callable[..., AgentOrchestrator],
    bystanders: Bystanders,
    exc_type: type[BaseException],
) -> None:
    @ao.tool
    def explode() -> str:
        """Always fails."""
        raise exc_type("from a tool")

    call = ao.AssistantMessage([ao.ToolCall("call-1", "explode", {})], ao.StopReason.TOOL_USE)
    model = ao.ScriptedModel([call, "recovered"])
    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", lambda: AgentOptions(model, tools=[explode], retry=None))
    handle = orch.spawn("a")

    result, error = outcome(lambda: handle.send_message("go", timeout=WAIT))
    assert error is None, repr(error)
    assert result.text == "recovered"
    [tool_result] = [m for m in result.messages if isinstance(m, ao.ToolResultMessage)]
    assert tool_result.is_error
    assert "explode" in "".join(b.text for b in tool_result.content)
    assert handle.status() is AgentStatus.RUNNING
    bystanders.assert_untouched()


@pytest.mark.parametrize("supervised", [False, True], ids=["escalate", "default-supervisor"])
@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_model_raising_base_exception_fails_the_request_with_stream_error(
    orchestrators: Callable[..., AgentOrchestrator],
    bystanders: Bystanders,
    exc_type: type[BaseException],
    supervised: bool,
) -> None:
    def model(request: ao.ModelRequest) -> str:
        if prompt_of(request) == "boom":
            raise exc_type("from a model")
        return prompt_of(request)

    orch = orchestrators(supervisor=DefaultSupervisor() if supervised else None)
    orch.add_agent("a", lambda: AgentOptions(FunctionModel(model), retry=None))
    handle = orch.spawn("a")

    _, error = outcome(lambda: handle.send_message("boom", timeout=WAIT))
    assert isinstance(error, ao.StreamError), repr(error)
    if supervised:  # StreamError is not retryable: the default supervisor stops the agent
        _, final_error = outcome(lambda: handle.await_result(timeout=WAIT))
        assert isinstance(final_error, ao.PluginError), repr(final_error)
        assert handle.status() is AgentStatus.FAILED
    else:  # no supervisor means ESCALATE: the agent keeps serving
        assert handle.send_message("hello", timeout=WAIT).text == "hello"
        assert handle.status() is AgentStatus.RUNNING
    bystanders.assert_untouched()


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
def test_step_whose_model_raises_base_exception_is_a_labelled_failed_outcome(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
    bystanders: Bystanders,
    exc_type: type[BaseException],
) -> None:
    def model(request: ao.ModelRequest) -> str:
        if prompt_of(request) == "boom":
            raise exc_type("from a model")
        return prompt_of(request)

    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", lambda: AgentOptions(FunctionModel(model), retry=None))
    specs = [step("t1", "a", "fine"), step("t2", "a", "boom"), step("t3", "a", "fine too")]

    outcomes, error = outcome(lambda: ao.execute_steps_parallel(executors(orch), specs))

    assert error is None, repr(error)
    assert [o.task_id for o in outcomes] == ["t1", "t2", "t3"]
    assert [o.agent for o in outcomes] == ["a", "a", "a"]
    assert [o.success for o in outcomes] == [True, False, True]
    assert [outcomes[0].output, outcomes[2].output] == ["fine", "fine too"]
    assert outcomes[1].session_id == "task-run-t2"
    bystanders.assert_untouched()


# == 6. Callbacks may call back (API §4 Robustness) =============================================


def test_shutdown_from_an_agent_failed_callback_completes_and_the_request_gets_its_real_error(
    orchestrators: Callable[..., AgentOrchestrator],
) -> None:
    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", flaky_options)
    shut_down = threading.Event()
    problems: list[BaseException] = []

    def on_event(event: Any) -> None:
        if isinstance(event, ao.AgentFailed):
            try:
                orch.shutdown(timeout=8)
            except BaseException as err:
                problems.append(err)
            finally:
                shut_down.set()

    orch.subscribe(on_event)
    seen = Recorder()
    orch.subscribe(seen)
    handle = orch.spawn("a")
    failing = handle.send_message_async("fail")

    assert shut_down.wait(WAIT), (
        "shutdown() from a callback deadlocked (it waited for its deadline)"
    )
    assert not problems, repr(problems)
    error = failing.exception(timeout=WAIT)
    assert isinstance(error, ao.NetworkError), f"expected the real error, got {error!r}"
    seen.wait_for(lambda e: isinstance(e, ao.AgentStopped) and e.name == "a")
    assert handle.is_done()


def test_cancel_from_an_agent_failed_callback_ends_the_agent_without_deadlock(
    orchestrators: Callable[..., AgentOrchestrator],
) -> None:
    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", flaky_options)
    handles: list[ao.OrchestratedHandle] = []
    cancelled = threading.Event()

    def on_event(event: Any) -> None:
        if isinstance(event, ao.AgentFailed):
            handles[0].cancel()
            cancelled.set()

    orch.subscribe(on_event)
    seen = Recorder()
    orch.subscribe(seen)
    handles.append(orch.spawn("a"))
    handle = handles[0]
    failing = handle.send_message_async("fail")
    queued = handle.send_message_async("hello")

    assert cancelled.wait(WAIT), "cancel() from a callback did not return"
    assert isinstance(failing.exception(timeout=WAIT), ao.NetworkError | ao.Aborted)
    queued_error = queued.exception(timeout=WAIT)  # answered either way, never left waiting
    assert queued_error is None or isinstance(queued_error, ao.Aborted), repr(queued_error)
    seen.wait_for(lambda e: isinstance(e, ao.AgentStopped) and e.name == "a")
    assert handle.status() is AgentStatus.CANCELLED


def test_sends_from_a_restart_callback_are_served_without_deadlock(
    orchestrators: Callable[..., AgentOrchestrator],
) -> None:
    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", flaky_options)
    orch.add_agent("b", echo_options)
    a, b = orch.spawn("a"), orch.spawn("b")
    sent: list[concurrent.futures.Future[ao.AgentResult]] = []
    replies: list[str] = []
    done = threading.Event()

    def on_event(event: Any) -> None:
        if isinstance(event, ao.AgentRestarted) and event.name == "a":
            try:
                sent.append(a.send_message_async("hello from a callback"))
                replies.append(b.send_message("ping from a callback", timeout=WAIT).text)
            finally:
                done.set()

    orch.subscribe(on_event)
    with pytest.raises(ao.NetworkError):
        a.send_message("fail", timeout=WAIT)

    assert done.wait(WAIT), "the callback's sends did not return"
    assert replies == ["ping from a callback"]
    assert sent[0].result(timeout=WAIT).text == "hello from a callback"


# == 7. Validation at the boundary (API §4, §5) =================================================


@pytest.mark.parametrize("bad_text", [None, 123, b"x"], ids=["None", "int", "bytes"])
def test_send_with_text_that_is_not_str_raises_type_error_and_leaves_the_agent_untouched(
    orchestrators: Callable[..., AgentOrchestrator], bad_text: Any
) -> None:
    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", echo_options)
    seen = Recorder()
    orch.subscribe(seen)
    handle = orch.spawn("a")

    with pytest.raises(TypeError, match="text"):
        handle.send_message(bad_text, timeout=WAIT)
    with pytest.raises(TypeError, match="text"):
        handle.send_message_async(bad_text)

    assert handle.send_message("hello", timeout=WAIT).text == "hello"
    assert handle.status() is AgentStatus.RUNNING
    assert handle.restarts == 0
    assert not seen.of(ao.AgentFailed)


def test_send_messages_with_an_item_that_is_not_a_message_raises_type_error(
    orchestrators: Callable[..., AgentOrchestrator],
) -> None:
    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", echo_options)
    handle = orch.spawn("a")
    with pytest.raises(TypeError, match="messages"):
        handle.send_messages([ao.user_message("ok"), "not a message"], timeout=WAIT)
    assert handle.send_message("hello", timeout=WAIT).text == "hello"


BAD_TIMEOUTS = [math.inf, -math.inf, math.nan, -1]


@pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=["inf", "-inf", "nan", "-1"])
def test_a_timeout_that_is_not_a_finite_number_at_least_zero_raises_and_sends_nothing(
    orchestrators: Callable[..., AgentOrchestrator], bad: float
) -> None:
    prompts: list[str] = []

    def model(request: ao.ModelRequest) -> str:
        prompts.append(prompt_of(request))
        return prompt_of(request)

    orch = orchestrators()
    orch.add_agent("a", lambda: AgentOptions(FunctionModel(model), retry=None))
    handle = orch.spawn("a")

    for call in (
        lambda: handle.send_message("rejected", timeout=bad),
        lambda: handle.send_message_async("rejected", timeout=bad),
        lambda: handle.await_result(timeout=bad),
    ):
        _, error = outcome(call)
        assert isinstance(error, ValueError), repr(error)
        assert "timeout" in str(error)

    # Nothing was sent and the rejected await_result did not close the handle.
    assert handle.send_message("hello", timeout=WAIT).text == "hello"
    assert handle.await_result(timeout=WAIT).text == "hello"
    assert prompts == ["hello"]


def test_a_timeout_that_is_not_a_number_raises_naming_it(
    orchestrators: Callable[..., AgentOrchestrator],
) -> None:
    orch = orchestrators()
    orch.add_agent("a", echo_options)
    handle = orch.spawn("a")
    with pytest.raises((TypeError, ValueError), match="timeout"):
        handle.send_message("x", timeout="1")  # type: ignore[arg-type]
    assert handle.send_message("hello", timeout=WAIT).text == "hello"


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1], ids=["inf", "nan", "-1"])
def test_shutdown_with_a_bad_timeout_is_rejected_up_front_or_completes_normally(
    orchestrators: Callable[..., AgentOrchestrator], bad: float
) -> None:
    orch = orchestrators()
    orch.add_agent("a", echo_options)
    handle = orch.spawn("a")

    call = Background(lambda: outcome(lambda: orch.shutdown(timeout=bad)))
    _, error = call.result(WAIT, f"shutdown(timeout={bad})")

    if error is None:  # treated sensibly: the orchestrator shut down
        assert handle.is_done()
    else:  # rejected at the boundary: nothing was done
        assert isinstance(error, ValueError), f"{error!r} raised half-way through shutdown"
        assert "timeout" in str(error)
        assert handle.send_message("hello", timeout=WAIT).text == "hello"
        orch.shutdown(timeout=WAIT)
        assert handle.status() is AgentStatus.COMPLETED


def test_backoff_with_a_jitter_that_is_not_bool_raises_type_error() -> None:
    with pytest.raises(TypeError, match="jitter"):
        ao.Backoff(jitter="no")  # type: ignore[arg-type]


def test_add_child_without_a_parent_raises_naming_parent_and_changes_nothing() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("p", echo_options)
    with pytest.raises((TypeError, ValueError), match="parent"):
        orch.add_child("c", None, echo_options)  # type: ignore[arg-type]
    assert orch.names() == ["p"]
    assert "c" not in orch
    assert orch.children_of("p") == []


def test_add_agent_with_an_empty_name_raises_value_error_and_changes_nothing() -> None:
    orch = AgentOrchestrator()
    with pytest.raises(ValueError, match="name"):
        orch.add_agent("", echo_options)
    assert orch.names() == []


def test_add_agent_without_a_factory_raises_type_error_and_changes_nothing() -> None:
    orch = AgentOrchestrator()
    with pytest.raises(TypeError):
        orch.add_agent("a", None)  # type: ignore[arg-type]
    assert orch.names() == []


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "2"], ids=["0", "-1", "True", "2.5", "str"])
def test_local_executor_rejects_a_limit_that_is_not_a_positive_int(bad: Any) -> None:
    orch = AgentOrchestrator()
    with pytest.raises((TypeError, ValueError), match="max_parallel_tasks"):
        ao.LocalExecutor(orch, max_parallel_tasks=bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_step_spec_with_max_steps_below_one_raises_on_construction(bad: int) -> None:
    with pytest.raises(ValueError, match="max_steps"):
        ao.AgentStepSpec("t", "a", "d", "p", max_steps=bad)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_restarts": -1}, {"within": math.nan}, {"within": -1.0}],
    ids=["max_restarts=-1", "within=nan", "within=-1"],
)
def test_default_supervisor_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    [name] = kwargs
    with pytest.raises(ValueError, match=name):
        DefaultSupervisor(**kwargs)


@pytest.mark.parametrize("bad", [math.nan, -1.0], ids=["nan", "-1"])
def test_execute_steps_parallel_with_a_bad_timeout_raises_and_runs_nothing(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
    bad: float,
) -> None:
    prompts: list[str] = []

    def model(request: ao.ModelRequest) -> str:
        prompts.append(prompt_of(request))
        return "ran"

    orch = orchestrators()
    orch.add_agent("a", lambda: AgentOptions(FunctionModel(model), retry=None))
    with pytest.raises(ValueError, match="timeout"):
        ao.execute_steps_parallel(executors(orch), [step("t1", "a", "x")], timeout=bad)
    assert prompts == []


# == 8. Cancel and timeout are prompt, even with a blocked model call (API §5) ==================


def test_cancel_returns_promptly_with_every_outcome_while_model_calls_block(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
    blocking: BlockingModel,
) -> None:
    orch = orchestrators()
    orch.add_agent("slow", lambda: AgentOptions(FunctionModel(blocking), retry=None))
    specs = [step(f"t{i}", "slow", "wait") for i in range(3)]
    cancel = threading.Event()
    call = Background(
        lambda: ao.execute_steps_parallel(
            executors(orch, max_parallel_tasks=2), specs, cancel=cancel
        )
    )
    blocking.wait_entered(2)  # two steps running (blocked), the third not started

    cancelled_at = time.monotonic()
    cancel.set()
    outcomes = call.result(PROMPT_RETURN_S + 1, "execute_steps_parallel after cancel")

    assert call.finished_at is not None
    assert call.finished_at - cancelled_at < PROMPT_RETURN_S
    assert [o.task_id for o in outcomes] == ["t0", "t1", "t2"]
    assert [o.agent for o in outcomes] == ["slow"] * 3
    assert not any(o.success for o in outcomes), (
        "steps still running at cancel came back as successes"
    )


def test_timeout_returns_promptly_with_every_outcome_while_model_calls_block(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
    blocking: BlockingModel,
) -> None:
    orch = orchestrators()
    orch.add_agent("slow", lambda: AgentOptions(FunctionModel(blocking), retry=None))
    specs = [step(f"t{i}", "slow", "wait") for i in range(3)]
    executor = executors(orch, max_parallel_tasks=2)

    started = time.monotonic()
    call = Background(lambda: ao.execute_steps_parallel(executor, specs, timeout=0.3))
    outcomes = call.result(0.3 + PROMPT_RETURN_S + 1, "execute_steps_parallel with timeout=0.3")

    assert call.finished_at is not None
    assert call.finished_at - started < 0.3 + PROMPT_RETURN_S
    assert [o.task_id for o in outcomes] == ["t0", "t1", "t2"]
    assert not any(o.success for o in outcomes)


def test_cancel_returns_even_when_a_model_call_never_returns(
    orchestrators: Callable[..., AgentOrchestrator],
    executors: Callable[..., ao.LocalExecutor],
) -> None:
    stuck = BlockingModel(block_s=120.0)  # released only at the end of the test
    try:
        orch = orchestrators()
        orch.add_agent("stuck", lambda: AgentOptions(FunctionModel(stuck), retry=None))
        cancel = threading.Event()
        call = Background(
            lambda: ao.execute_steps_parallel(
                executors(orch), [step("t0", "stuck", "wait")], cancel=cancel
            )
        )
        stuck.wait_entered()
        cancel.set()
        [result] = call.result(PROMPT_RETURN_S + 1, "execute_steps_parallel after cancel")
        assert not result.success
        assert (result.task_id, result.agent) == ("t0", "stuck")
    finally:
        stuck.release.set()


# == 9. Ended handles are released by the orchestrator at once (API §4) ==========================


def reply_or_fail_fatally(request: ao.ModelRequest) -> str:
    if prompt_of(request) == "fatal":
        raise ao.AuthError("bad key")
    return "x" * 1000  # some history per handle


def spawn_and_end(orch: AgentOrchestrator, ending: str) -> weakref.ref[ao.OrchestratedHandle]:
    """Spawn agent "a", use it once, end it as `ending`; only a weak reference is returned."""
    handle = orch.spawn("a")
    if ending == "completed":
        handle.send_message("hello", timeout=WAIT)
        handle.await_result(timeout=WAIT)
    elif ending == "cancelled":
        handle.send_message("hello", timeout=WAIT)
        handle.cancel()
    else:
        _, error = outcome(lambda: handle.send_message("fatal", timeout=WAIT))
        assert isinstance(error, ao.AuthError)
        _, error = outcome(lambda: handle.await_result(timeout=WAIT))
        assert isinstance(error, ao.PluginError)
        assert handle.status() is AgentStatus.FAILED
    return weakref.ref(handle)


@pytest.mark.parametrize("ending", ["completed", "cancelled", "stopped-by-supervisor"])
def test_ended_handles_are_released_by_the_orchestrator(
    orchestrators: Callable[..., AgentOrchestrator], ending: str
) -> None:
    models: list[weakref.ref[Any]] = []

    def factory() -> AgentOptions:
        model = FunctionModel(reply_or_fail_fatally)
        models.append(weakref.ref(model))  # reachable only through the agent
        return AgentOptions(model, retry=None)

    orch = orchestrators(supervisor=DefaultSupervisor())
    orch.add_agent("a", factory)
    handles = [spawn_and_end(orch, ending) for _ in range(300)]

    def alive() -> int:
        gc.collect()
        return sum(ref() is not None for ref in handles + models)

    assert wait_until(lambda: alive() == 0), f"{alive()} ended handles/agents still referenced"
    # The orchestrator itself is alive and working.
    assert orch.spawn("a").send_message("still working", timeout=WAIT).text == "x" * 1000


# == 10. Threads are bounded and released (API §5) =============================================


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def test_repeated_calls_on_one_executor_do_not_grow_threads_and_close_releases_them() -> None:
    before = set(threading.enumerate())
    limit = 4
    orch = AgentOrchestrator()
    orch.add_agent("a", echo_options)
    executor = ao.LocalExecutor(orch, max_parallel_tasks=limit)
    try:
        most = 0
        for call in range(50):
            specs = [step(f"c{call}-t{i}", "a", f"{call}-{i}") for i in range(8)]
            outcomes = ao.execute_steps_parallel(executor, specs)
            assert [o.output for o in outcomes] == [f"{call}-{i}" for i in range(8)]
            most = max(most, len(new_threads(before)))
        assert most <= limit + 3, f"{most} threads alive after a call, for a limit of {limit}"
    finally:
        executor.close()
        orch.shutdown(timeout=WAIT)
    assert wait_until(lambda: not new_threads(before)), f"left behind: {new_threads(before)}"


def test_local_executor_is_a_context_manager_whose_exit_releases_its_threads() -> None:
    before = set(threading.enumerate())
    orch = AgentOrchestrator()
    orch.add_agent("a", echo_options)
    try:
        with ao.LocalExecutor(orch, max_parallel_tasks=4) as executor:
            specs = [step(f"t{i}", "a", f"item {i}") for i in range(6)]
            outcomes = ao.execute_steps_parallel(executor, specs)
            assert [o.output for o in outcomes] == [f"item {i}" for i in range(6)]
    finally:
        orch.shutdown(timeout=WAIT)
    assert wait_until(lambda: not new_threads(before)), f"left behind: {new_threads(before)}"


# == 11. Every accepted request is answered exactly once (API §4) ===============================


def test_every_async_send_is_answered_when_the_handle_is_cancelled_midway(
    orchestrators: Callable[..., AgentOrchestrator],
) -> None:
    orch = orchestrators(channel_buffer=16)
    orch.add_agent("a", echo_options)
    handle = orch.spawn("a")
    lock = threading.Lock()
    accepted: list[tuple[str, concurrent.futures.Future[ao.AgentResult]]] = []
    refused: list[ao.AgentError] = []
    halfway = threading.Event()
    start = threading.Barrier(9)

    def sender(n: int) -> None:
        start.wait(WAIT)
        for i in range(50):
            text = f"{n}-{i}"
            try:
                future = handle.send_message_async(text, timeout=WAIT)
            except ao.AgentError as err:
                with lock:
                    refused.append(err)
                continue
            with lock:
                accepted.append((text, future))
                if len(accepted) >= 100:
                    halfway.set()

    def canceller() -> None:
        start.wait(WAIT)
        halfway.wait(WAIT)
        handle.cancel()

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=canceller))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads), "a sender or the canceller hung"

    assert len(accepted) + len(refused) == 400
    assert len(accepted) >= 100
    _, pending = concurrent.futures.wait([f for _, f in accepted], timeout=WAIT)
    assert not pending, f"{len(pending)} accepted requests left unanswered"
    answered = aborted = 0
    for text, future in accepted:
        error = future.exception(0)
        if error is None:
            assert future.result(0).text == text  # each caller gets its own answer
            answered += 1
        else:
            assert isinstance(error, ao.AgentError), repr(error)
            aborted += isinstance(error, ao.Aborted)
    for err in refused:
        assert isinstance(err, ao.PluginError) and "agent channel closed" in str(err), repr(err)
    assert answered + aborted == len(accepted), "an accepted request failed with something else"
    assert handle.status() is AgentStatus.CANCELLED
