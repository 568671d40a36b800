"""AgentOrchestrator and OrchestratedHandle: the seed's tests, ported, and what goes beyond."""

from __future__ import annotations

import concurrent.futures
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pykka
import pytest

import actor_orch as ao
from actor_orch import (
    AgentOptions,
    AgentOrchestrator,
    AgentStatus,
    DefaultSupervisor,
    EchoModel,
    FunctionModel,
    ScriptedModel,
    SupervisorAction,
)


def not_called() -> AgentOptions:
    raise AssertionError("factory must not be called")


def echo() -> AgentOptions:
    return AgentOptions(EchoModel())


class Gate:
    """A model whose calls block until released: makes in-flight work deterministic."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, request: ao.ModelRequest) -> str:
        self.calls += 1
        self.entered.release()
        assert self.release.wait(10), "test never released the gate"
        return "released"

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=5), "model was never called"


@pytest.fixture
def orch() -> Iterator[AgentOrchestrator]:
    orchestrator = AgentOrchestrator()
    yield orchestrator
    orchestrator.shutdown(timeout=5)


def events_of(orchestrator: AgentOrchestrator) -> list[ao.Event]:
    seen: list[ao.Event] = []
    orchestrator.subscribe(seen.append)
    return seen


# -- ported from the seed -----------------------------------------------------------------------


def test_add_agent_and_names() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("alpha", not_called)
    orch.add_agent("beta", not_called)
    assert orch.names() == ["alpha", "beta"]


def test_contains_registered() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("a", not_called)
    assert orch.contains("a")
    assert not orch.contains("b")
    assert "a" in orch
    assert "b" not in orch


def test_parent_child_hierarchy() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("parent", not_called)
    orch.add_child("child1", "parent", not_called)
    orch.add_child("child2", "parent", not_called)
    assert orch.parent_of("child1") == "parent"
    assert orch.parent_of("child2") == "parent"
    assert orch.parent_of("parent") is None
    assert orch.children_of("parent") == ["child1", "child2"]
    assert orch.children_of("child1") == []
    assert orch.children_of("unknown") is None
    assert orch.parent_of("unknown") is None


def test_add_child_missing_parent_raises() -> None:
    orch = AgentOrchestrator()
    with pytest.raises(ValueError, match="parent agent 'missing' not registered"):
        orch.add_child("child", "missing", not_called)
    assert orch.names() == []


def test_add_agent_duplicate_name_raises() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("alpha", not_called)
    with pytest.raises(ValueError, match="agent 'alpha' already registered"):
        orch.add_agent("alpha", not_called)


def test_duplicate_child_registration_preserves_existing_hierarchy() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("parent1", not_called)
    orch.add_agent("parent2", not_called)
    orch.add_child("child", "parent1", not_called)
    with pytest.raises(ValueError, match="agent 'child' already registered"):
        orch.add_child("child", "parent2", not_called)
    assert orch.parent_of("child") == "parent1"
    assert orch.children_of("parent1") == ["child"]
    assert orch.children_of("parent2") == []


def test_duplicate_top_level_registration_preserves_child_link() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("parent", not_called)
    orch.add_child("child", "parent", not_called)
    with pytest.raises(ValueError, match="already registered"):
        orch.add_agent("child", not_called)
    assert orch.parent_of("child") == "parent"
    assert orch.children_of("parent") == ["child"]


def test_spawn_unregistered_agent_errors() -> None:
    orch = AgentOrchestrator()
    with pytest.raises(ao.PluginError) as info:
        orch.spawn("nonexistent")
    assert "orchestrator" in str(info.value)
    assert "agent not registered: nonexistent" in str(info.value)


def test_default_supervisor_restarts_retryable_and_stops_the_rest() -> None:
    supervisor = DefaultSupervisor()
    assert supervisor.max_restarts == 3
    assert supervisor.on_agent_error("test", ao.ModelThrottled()) is SupervisorAction.RESTART
    assert supervisor.on_agent_error("test", ao.Aborted()) is SupervisorAction.STOP


def test_supervisor_action_variants() -> None:
    assert [a.name for a in SupervisorAction] == ["RESTART", "STOP", "ESCALATE"]


def test_orchestrator_repr_names_itself_and_its_settings() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("a", not_called)
    text = repr(orch)
    assert "AgentOrchestrator" in text
    assert "channel_buffer" in text
    assert "'a'" in text


def test_with_supervisor_sets_policy() -> None:
    policy = DefaultSupervisor()
    orch = AgentOrchestrator().with_supervisor(policy)
    assert orch.supervisor is policy


def test_with_channel_buffer_sets_size() -> None:
    assert AgentOrchestrator().with_channel_buffer(64).channel_buffer == 64
    assert AgentOrchestrator(channel_buffer=7).channel_buffer == 7


def test_with_max_restarts_sets_default() -> None:
    orch = AgentOrchestrator().with_max_restarts(5)
    orch.add_agent("a", not_called)
    assert orch.restart_budget("a") == 5


def test_default_orchestrator_is_empty_and_unsupervised() -> None:
    orch = AgentOrchestrator()
    assert orch.names() == []
    assert orch.supervisor is None
    assert orch.channel_buffer == 32


def test_custom_supervisor_policy() -> None:
    class AlwaysEscalate:
        def on_agent_error(self, name: str, error: ao.AgentError) -> SupervisorAction:
            return SupervisorAction.ESCALATE

    policy = AlwaysEscalate()
    assert isinstance(policy, ao.SupervisorPolicy)
    assert policy.on_agent_error("x", ao.ModelThrottled()) is SupervisorAction.ESCALATE


def test_grandchild_hierarchy() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("root", not_called)
    orch.add_child("mid", "root", not_called)
    orch.add_child("leaf", "mid", not_called)
    assert orch.parent_of("leaf") == "mid"
    assert orch.parent_of("mid") == "root"
    assert orch.parent_of("root") is None
    assert orch.children_of("root") == ["mid"]
    assert orch.children_of("mid") == ["leaf"]
    assert orch.children_of("leaf") == []
    assert orch.descendants_of("root") == ["mid", "leaf"]


# -- registry validation and budget precedence -------------------------------------------------


def test_registration_rejects_bad_input_without_changing_anything() -> None:
    orch = AgentOrchestrator()
    with pytest.raises(ValueError, match="non-empty"):
        orch.add_agent("", echo)
    with pytest.raises(TypeError, match="callable"):
        orch.add_agent("a", "not a factory")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_restarts"):
        orch.add_agent("a", echo, max_restarts=-1)
    with pytest.raises(ValueError, match="channel_buffer"):
        orch.with_channel_buffer(0)
    assert orch.names() == []


def test_restart_budget_precedence_agent_then_orchestrator_then_supervisor_then_three() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("own", not_called, max_restarts=1)
    orch.add_agent("plain", not_called)
    assert orch.restart_budget("own") == 1
    assert orch.restart_budget("plain") == 3
    orch.with_supervisor(DefaultSupervisor(max_restarts=7))
    assert orch.restart_budget("plain") == 7
    orch.with_max_restarts(2)
    assert orch.restart_budget("plain") == 2
    assert orch.restart_budget("own") == 1


# -- serving requests ---------------------------------------------------------------------------


def test_send_message_returns_the_agent_result_and_keeps_history(orch: AgentOrchestrator) -> None:
    seen_lengths: list[int] = []

    def model(request: ao.ModelRequest) -> str:
        seen_lengths.append(len(request.messages))
        return f"reply {len(seen_lengths)}"

    orch.add_agent("a", lambda: AgentOptions(FunctionModel(model)))
    handle = orch.spawn("a")
    assert handle.name == "a"
    assert handle.send_message("one", timeout=5).text == "reply 1"
    assert handle.send_messages([ao.user_message("two")], timeout=5).text == "reply 2"
    assert seen_lengths == [1, 3]


def test_factory_returning_wrong_type_or_raising_makes_spawn_fail(orch: AgentOrchestrator) -> None:
    orch.add_agent("wrong", lambda: "options")  # type: ignore[arg-type,return-value]
    orch.add_agent("raises", lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    with pytest.raises(ao.PluginError, match="expected AgentOptions"):
        orch.spawn("wrong")
    with pytest.raises(ao.PluginError, match="ZeroDivisionError"):
        orch.spawn("raises")
    assert orch.running() == []


def test_send_messages_rejects_non_messages(orch: AgentOrchestrator) -> None:
    orch.add_agent("a", echo)
    handle = orch.spawn("a")
    with pytest.raises(TypeError, match=r"messages\[1\]"):
        handle.send_messages([ao.user_message("x"), "y"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="user_message"):
        handle.send_messages("text")  # type: ignore[arg-type]


def test_send_message_timeout_raises_request_timeout(orch: AgentOrchestrator) -> None:
    gate = Gate()
    orch.add_agent("slow", lambda: AgentOptions(FunctionModel(gate)))
    handle = orch.spawn("slow")
    with pytest.raises(ao.RequestTimeout) as info:
        handle.send_message("x", timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    gate.release.set()
    assert handle.send_message("y", timeout=5).text == "released"


def test_request_withdrawn_after_its_timeout_never_reaches_the_model(
    orch: AgentOrchestrator,
) -> None:
    gate = Gate()
    orch.add_agent("slow", lambda: AgentOptions(FunctionModel(gate)))
    handle = orch.spawn("slow")
    first = handle.send_message_async("busy")
    gate.wait_entered()
    with pytest.raises(ao.RequestTimeout):
        handle.send_message("queued then withdrawn", timeout=0.05)
    gate.release.set()
    assert first.result(5).text == "released"
    assert handle.await_result(timeout=5).text == "released"
    assert gate.calls == 1


def test_await_result_returns_last_success_or_empty_stop(orch: AgentOrchestrator) -> None:
    orch.add_agent("a", echo)
    quiet = orch.spawn("a")
    empty = quiet.await_result(timeout=5)
    assert empty.messages == []
    assert empty.stop_reason is ao.StopReason.STOP
    assert quiet.status() is AgentStatus.COMPLETED
    busy = orch.spawn("a")
    futures = [busy.send_message_async(str(i)) for i in range(5)]
    assert busy.await_result(timeout=5).text == "4"
    assert [f.result(0).text for f in futures] == ["0", "1", "2", "3", "4"]
    with pytest.raises(ao.PluginError, match="agent channel closed"):
        busy.send_message("late")


def test_await_result_timeout_leaves_the_agent_draining(orch: AgentOrchestrator) -> None:
    gate = Gate()
    orch.add_agent("slow", lambda: AgentOptions(FunctionModel(gate)))
    handle = orch.spawn("slow")
    future = handle.send_message_async("x")
    with pytest.raises(ao.RequestTimeout):
        handle.await_result(timeout=0.05)
    gate.release.set()
    assert handle.await_result(timeout=5).text == "released"
    assert future.result(0).text == "released"


# -- supervision -------------------------------------------------------------------------------


def test_restart_within_budget_replies_the_error_and_rebuilds_from_the_factory(
    orch: AgentOrchestrator,
) -> None:
    built: list[int] = []
    seen_lengths: list[int] = []
    script = iter(["first", ao.NetworkError("reset"), "after restart"])

    def model(request: ao.ModelRequest) -> str:
        seen_lengths.append(len(request.messages))
        item = next(script)
        if isinstance(item, Exception):
            raise item
        return item

    def factory() -> AgentOptions:
        built.append(1)
        return AgentOptions(FunctionModel(model), retry=None)

    orch.with_supervisor(DefaultSupervisor())
    orch.add_agent("a", factory)
    handle = orch.spawn("a")
    assert handle.send_message("1", timeout=5).text == "first"
    with pytest.raises(ao.NetworkError):
        handle.send_message("2", timeout=5)
    assert handle.restarts == 1
    assert handle.send_message("3", timeout=5).text == "after restart"
    assert len(built) == 2
    # the rebuilt agent starts with an empty history
    assert seen_lengths == [1, 3, 1]


def test_restarts_are_counted_before_the_failed_request_is_answered(
    orch: AgentOrchestrator,
) -> None:
    model = ScriptedModel([ao.NetworkError("x")])
    orch.with_supervisor(DefaultSupervisor()).add_agent(
        "a", lambda: AgentOptions(model, retry=None)
    )
    handle = orch.spawn("a")
    future = handle.send_message_async("x")
    observed: list[int] = []
    future.add_done_callback(lambda _: observed.append(handle.restarts))
    with pytest.raises(ao.NetworkError):
        future.result(5)
    assert observed == [1]


def test_exhausted_budget_stops_the_agent_as_failed(orch: AgentOrchestrator) -> None:
    model = ScriptedModel([ao.NetworkError(str(i)) for i in range(3)])
    orch.with_supervisor(DefaultSupervisor(max_restarts=2))
    orch.add_agent("a", lambda: AgentOptions(model, retry=None))
    seen = events_of(orch)
    handle = orch.spawn("a")
    for _ in range(3):
        with pytest.raises(ao.NetworkError):
            handle.send_message("x", timeout=5)
    assert handle.restarts == 2
    assert handle.status() is AgentStatus.FAILED
    assert handle.is_done()
    with pytest.raises(ao.PluginError, match="agent 'a' stopped by supervisor"):
        handle.await_result(timeout=5)
    with pytest.raises(ao.PluginError, match="agent channel closed"):
        handle.send_message("after", timeout=5)
    failed = [e for e in seen if isinstance(e, ao.AgentFailed)]
    assert [e.action for e in failed] == [
        SupervisorAction.RESTART,
        SupervisorAction.RESTART,
        SupervisorAction.STOP,
    ]
    assert [e.attempt for e in seen if isinstance(e, ao.AgentRestarted)] == [1, 2]
    assert seen[-1] == ao.AgentStopped("a", AgentStatus.FAILED)


def test_restart_budget_resets_after_success(orch: AgentOrchestrator) -> None:
    err = ao.NetworkError
    model = ScriptedModel([err("1"), "ok", err("2"), "ok", err("3"), "ok"])
    orch.with_supervisor(DefaultSupervisor(max_restarts=1))
    orch.add_agent("a", lambda: AgentOptions(model, retry=None))
    seen = events_of(orch)
    handle = orch.spawn("a")
    for _ in range(3):
        with pytest.raises(ao.NetworkError):
            handle.send_message("x", timeout=5)
        assert handle.send_message("y", timeout=5).text == "ok"
    assert handle.status() is AgentStatus.RUNNING
    assert handle.restarts == 3
    assert [e.attempt for e in seen if isinstance(e, ao.AgentRestarted)] == [1, 1, 1]


def test_default_supervisor_max_restarts_is_honoured(orch: AgentOrchestrator) -> None:
    model = ScriptedModel([ao.NetworkError("1"), ao.NetworkError("2")])
    orch.with_supervisor(DefaultSupervisor(max_restarts=1))
    orch.add_agent("a", lambda: AgentOptions(model, retry=None))
    handle = orch.spawn("a")
    for _ in range(2):
        with pytest.raises(ao.NetworkError):
            handle.send_message("x", timeout=5)
    assert handle.restarts == 1
    assert handle.status() is AgentStatus.FAILED


def test_agent_budget_overrides_the_supervisor_budget(orch: AgentOrchestrator) -> None:
    model = ScriptedModel([ao.NetworkError("1")])
    orch.with_supervisor(DefaultSupervisor(max_restarts=5))
    orch.add_agent("a", lambda: AgentOptions(model, retry=None), max_restarts=0)
    handle = orch.spawn("a")
    with pytest.raises(ao.NetworkError):
        handle.send_message("x", timeout=5)
    assert handle.restarts == 0
    assert handle.status() is AgentStatus.FAILED


def test_non_retryable_error_stops_the_agent(orch: AgentOrchestrator) -> None:
    orch.with_supervisor(DefaultSupervisor())
    orch.add_agent("a", lambda: AgentOptions(ScriptedModel([ao.AuthError("no")])))
    handle = orch.spawn("a")
    with pytest.raises(ao.AuthError):
        handle.send_message("x", timeout=5)
    assert handle.status() is AgentStatus.FAILED
    assert handle.restarts == 0


def test_escalate_replies_the_error_and_keeps_the_agent(orch: AgentOrchestrator) -> None:
    class Escalate:
        def on_agent_error(self, name: str, error: ao.AgentError) -> SupervisorAction:
            return SupervisorAction.ESCALATE

    lengths: list[int] = []
    script = iter(["one", ao.AuthError("x"), "three"])

    def model(request: ao.ModelRequest) -> str:
        lengths.append(len(request.messages))
        item = next(script)
        if isinstance(item, Exception):
            raise item
        return item

    orch.with_supervisor(Escalate()).add_agent("a", lambda: AgentOptions(FunctionModel(model)))
    handle = orch.spawn("a")
    handle.send_message("1", timeout=5)
    with pytest.raises(ao.AuthError):
        handle.send_message("2", timeout=5)
    assert handle.send_message("3", timeout=5).text == "three"
    assert handle.restarts == 0
    # same agent: its history still holds the first exchange (the failed prompt left none)
    assert lengths == [1, 3, 3]


def test_no_supervisor_means_escalate(orch: AgentOrchestrator) -> None:
    model = ScriptedModel([ao.AuthError("x"), ao.NetworkError("y"), "fine"])
    orch.add_agent("a", lambda: AgentOptions(model, retry=None))
    seen = events_of(orch)
    handle = orch.spawn("a")
    with pytest.raises(ao.AuthError):
        handle.send_message("1", timeout=5)
    with pytest.raises(ao.NetworkError):
        handle.send_message("2", timeout=5)
    assert handle.send_message("3", timeout=5).text == "fine"
    assert handle.status() is AgentStatus.RUNNING
    assert {e.action for e in seen if isinstance(e, ao.AgentFailed)} == {SupervisorAction.ESCALATE}


def test_stop_answers_requests_queued_behind_the_failure(orch: AgentOrchestrator) -> None:
    gate = Gate()

    def model(request: ao.ModelRequest) -> str:
        gate(request)
        raise ao.AuthError("fatal")

    orch.with_supervisor(DefaultSupervisor()).add_agent(
        "a", lambda: AgentOptions(FunctionModel(model))
    )
    handle = orch.spawn("a")
    first = handle.send_message_async("x")
    gate.wait_entered()
    queued = [handle.send_message_async(str(i)) for i in range(3)]
    gate.release.set()
    with pytest.raises(ao.AuthError):
        first.result(5)
    for future in queued:
        with pytest.raises(ao.PluginError, match="stopped by supervisor"):
            future.result(5)


def test_raising_policy_stops_the_agent_and_is_logged(orch: AgentOrchestrator) -> None:
    class Broken:
        def on_agent_error(self, name: str, error: ao.AgentError) -> SupervisorAction:
            raise RuntimeError("policy bug")

    orch.with_supervisor(Broken()).add_agent(
        "a", lambda: AgentOptions(ScriptedModel([ao.NetworkError("x")]), retry=None)
    )
    handle = orch.spawn("a")
    with pytest.raises(ao.NetworkError):
        handle.send_message("x", timeout=5)
    assert handle.status() is AgentStatus.FAILED


def test_factory_failing_on_restart_ends_the_agent_failed(orch: AgentOrchestrator) -> None:
    calls: list[int] = []
    model = ScriptedModel([ao.NetworkError("x")])

    def factory() -> AgentOptions:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("no more agents")
        return AgentOptions(model, retry=None)

    orch.with_supervisor(DefaultSupervisor()).add_agent("a", factory)
    handle = orch.spawn("a")
    with pytest.raises(ao.NetworkError):
        handle.send_message("x", timeout=5)
    with pytest.raises(ao.PluginError, match="no more agents"):
        handle.await_result(timeout=5)
    assert handle.status() is AgentStatus.FAILED


def test_sliding_window_stops_a_flapping_agent_despite_successes(
    orch: AgentOrchestrator,
) -> None:
    err = ao.NetworkError
    model = ScriptedModel([err("1"), "ok", err("2"), "ok", err("3"), "never"])
    orch.with_supervisor(DefaultSupervisor(max_restarts=2, within=60.0))
    orch.add_agent("a", lambda: AgentOptions(model, retry=None))
    handle = orch.spawn("a")
    for _ in range(2):
        with pytest.raises(ao.NetworkError):
            handle.send_message("x", timeout=5)
        handle.send_message("y", timeout=5)
    with pytest.raises(ao.NetworkError):
        handle.send_message("z", timeout=5)
    assert handle.restarts == 2
    assert handle.status() is AgentStatus.FAILED


def test_backoff_delays_only_the_restart_and_never_other_agents(orch: AgentOrchestrator) -> None:
    model = ScriptedModel([ao.NetworkError("x"), "after backoff"])
    rebuilt = threading.Event()
    builds = 0

    def flaky() -> AgentOptions:
        nonlocal builds
        builds += 1
        if builds > 1:
            rebuilt.set()
        return AgentOptions(model, retry=None)

    # A backoff far longer than the few local calls checked inside it. How long it is exactly
    # is the decision's business (test_backoff_honours_retry_after), not a wall-clock assert.
    orch.with_supervisor(DefaultSupervisor(backoff=ao.Backoff(base_delay=1.0, jitter=False)))
    orch.add_agent("slow", flaky)
    orch.add_agent("other", echo)
    slow, other = orch.spawn("slow"), orch.spawn("other")
    with pytest.raises(ao.NetworkError):
        slow.send_message("x", timeout=5)
    # answered at once: the rebuild has not happened yet, and another agent serves meanwhile
    assert not rebuilt.is_set()
    assert other.send_message("hello", timeout=5).text == "hello"
    assert not rebuilt.is_set()
    # the next request waits for the restart, then the rebuilt agent serves it
    assert slow.send_message("y", timeout=5).text == "after backoff"
    assert rebuilt.is_set()
    assert builds == 2


def test_backoff_honours_retry_after() -> None:
    policy = DefaultSupervisor(backoff=ao.Backoff(base_delay=0.01, max_delay=5.0, jitter=False))
    assert (
        policy.on_agent_error("a", ao.ModelThrottled(retry_after=2.0)) is SupervisorAction.RESTART
    )
    assert policy.restart_delay("a", 1, ao.ModelThrottled(retry_after=2.0)) == 2.0
    assert policy.restart_delay("a", 2, ao.ModelThrottled(retry_after=60.0)) == 5.0


def test_restart_storm_counts_one_restart_per_failure(orch: AgentOrchestrator) -> None:
    rng = random.Random(1234)
    failures = 0

    def model(request: ao.ModelRequest) -> str:
        nonlocal failures
        if rng.random() < 0.3:
            failures += 1
            raise ao.NetworkError("injected")
        return "ok"

    orch.with_supervisor(DefaultSupervisor(max_restarts=10_000))
    orch.add_agent("a", lambda: AgentOptions(FunctionModel(model), retry=None))
    seen = events_of(orch)
    handle = orch.spawn("a")
    futures = [handle.send_message_async(str(i)) for i in range(300)]
    errors = sum(1 for f in futures if f.exception(10) is not None)
    assert failures > 50
    assert errors == failures
    assert handle.restarts == failures
    assert sum(isinstance(e, ao.AgentRestarted) for e in seen) == failures
    assert handle.status() is AgentStatus.RUNNING


# -- cancel, bounded mailbox and races ---------------------------------------------------------


def test_cancel_answers_in_flight_and_queued_requests_at_once(orch: AgentOrchestrator) -> None:
    gate = Gate()
    orch.add_agent("a", lambda: AgentOptions(FunctionModel(gate)))
    seen = events_of(orch)
    handle = orch.spawn("a")
    in_flight = handle.send_message_async("x")
    gate.wait_entered()
    queued = [handle.send_message_async(str(i)) for i in range(5)]
    handle.cancel()
    for future in [in_flight, *queued]:
        with pytest.raises(ao.Aborted):
            future.result(1)
    assert handle.status() is AgentStatus.CANCELLED
    with pytest.raises(ao.Aborted):
        handle.await_result(timeout=1)
    with pytest.raises(ao.PluginError, match="agent channel closed"):
        handle.send_message("late")
    gate.release.set()  # the blocked call returns later; its result is discarded
    assert seen[-1] == ao.AgentStopped("a", AgentStatus.CANCELLED)
    handle.cancel()  # idempotent
    assert sum(isinstance(e, ao.AgentStopped) for e in seen) == 1


def test_cancel_cascades_to_children_and_grandchildren_only(orch: AgentOrchestrator) -> None:
    orch.add_agent("root", echo)
    orch.add_child("mid", "root", echo)
    orch.add_child("leaf", "mid", echo)
    orch.add_agent("other", echo)
    handles = {name: orch.spawn(name) for name in ["root", "mid", "leaf", "other"]}
    handles["mid"].cancel()
    assert handles["mid"].status() is AgentStatus.CANCELLED
    assert handles["leaf"].status() is AgentStatus.CANCELLED
    assert handles["root"].status() is AgentStatus.RUNNING
    assert handles["other"].status() is AgentStatus.RUNNING
    handles["root"].cancel()
    assert handles["other"].send_message("still here", timeout=5).text == "still here"


def test_full_mailbox_makes_senders_wait_and_time_out(orch: AgentOrchestrator) -> None:
    gate = Gate()
    orch.with_channel_buffer(1).add_agent("a", lambda: AgentOptions(FunctionModel(gate)))
    handle = orch.spawn("a")
    first = handle.send_message_async("in flight")
    gate.wait_entered()
    second = handle.send_message_async("fills the mailbox")
    with pytest.raises(ao.RequestTimeout, match="mailbox"):
        handle.send_message_async("no room", timeout=0.05)
    gate.release.set()
    assert first.result(5).text == "released"
    assert second.result(5).text == "released"


def test_sender_waiting_for_space_gets_channel_closed_when_the_agent_ends(
    orch: AgentOrchestrator,
) -> None:
    gate = Gate()
    orch.with_channel_buffer(1).add_agent("a", lambda: AgentOptions(FunctionModel(gate)))
    handle = orch.spawn("a")
    handle.send_message_async("in flight")
    gate.wait_entered()
    handle.send_message_async("fills the mailbox")
    outcome: list[BaseException] = []
    sending = threading.Event()

    def send() -> None:
        sending.set()
        outcome.append(_raised(lambda: handle.send_message_async("waits")))

    waiting = threading.Thread(target=send)
    waiting.start()
    # Cancel once the sender is on its way: whether it is already waiting for mailbox space or
    # arrives after the end, it must be refused with "agent channel closed".
    assert sending.wait(5)
    handle.cancel()
    waiting.join(5)
    gate.release.set()
    assert isinstance(outcome[0], ao.PluginError)
    assert "agent channel closed" in str(outcome[0])


def _raised(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except BaseException as err:
        return err
    raise AssertionError("expected an exception")


def test_many_threads_sending_on_one_handle_all_get_their_own_answer(
    orch: AgentOrchestrator,
) -> None:
    orch.with_channel_buffer(4).add_agent("a", echo)
    handle = orch.spawn("a")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda i: handle.send_message(str(i), timeout=10).text, range(400)))
    assert texts == [str(i) for i in range(400)]


def _race_cancel_against_senders(pause: bool) -> None:
    orch = AgentOrchestrator(channel_buffer=8)
    orch.add_agent("a", echo)
    handle = orch.spawn("a")
    accepted: list[concurrent.futures.Future[ao.AgentResult]] = []
    refused: list[ao.PluginError] = []
    start = threading.Barrier(5)

    def sender() -> None:
        start.wait(5)
        for i in range(40):
            try:
                accepted.append(handle.send_message_async(str(i), timeout=5))
            except ao.PluginError as err:
                refused.append(err)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.wait(5)
    if pause:
        time.sleep(0.001)
    handle.cancel()
    for thread in threads:
        thread.join(10)
    done, not_done = concurrent.futures.wait(accepted, timeout=5)
    assert not not_done, f"{len(not_done)} accepted requests unanswered"
    assert len(accepted) + len(refused) == 160
    for future in done:
        error = future.exception(0)
        assert error is None or isinstance(error, ao.Aborted)
    orch.shutdown(timeout=5)


@pytest.mark.parametrize("round_number", range(30))
def test_cancel_racing_senders_leaves_no_request_unanswered(round_number: int) -> None:
    _race_cancel_against_senders(pause=bool(round_number % 2))


def test_request_landing_behind_an_external_stop_is_still_answered(
    orch: AgentOrchestrator,
) -> None:
    # Pykka drops plain messages left in a stopping actor's inbox; ours must still be answered.
    gate = Gate()
    orch.add_agent("a", lambda: AgentOptions(FunctionModel(gate)))
    handle = orch.spawn("a")
    first = handle.send_message_async("x")
    gate.wait_entered()
    pykka.ActorRegistry.stop_all(block=False)
    behind_the_stop = handle.send_message_async("y")
    gate.release.set()
    assert first.result(5).text == "released"
    with pytest.raises(ao.Aborted):
        behind_the_stop.result(5)
    assert handle.status() is AgentStatus.CANCELLED


# -- shutdown ----------------------------------------------------------------------------------


def test_shutdown_stops_children_before_parents_and_lets_queued_work_finish() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("parent", echo)
    orch.add_child("child", "parent", echo)
    orch.add_agent("solo", echo)
    seen = events_of(orch)
    parent = orch.spawn("parent")
    solo = orch.spawn("solo")
    child = orch.spawn("child")
    futures = [parent.send_message_async(str(i)) for i in range(20)]
    orch.shutdown(timeout=5)
    assert [f.result(0).text for f in futures] == [str(i) for i in range(20)]
    stopped = [e.name for e in seen if isinstance(e, ao.AgentStopped)]
    assert stopped == ["child", "solo", "parent"]
    assert {h.status() for h in (parent, solo, child)} == {AgentStatus.COMPLETED}
    with pytest.raises(ao.PluginError, match="shut down"):
        orch.spawn("solo")


def test_shutdown_answers_leftovers_with_aborted_and_returns_by_the_deadline() -> None:
    gate = Gate()
    orch = AgentOrchestrator()
    orch.add_agent("a", lambda: AgentOptions(FunctionModel(gate)))
    handle = orch.spawn("a")
    in_flight = handle.send_message_async("x")
    gate.wait_entered()
    queued = handle.send_message_async("y")
    started = time.monotonic()
    orch.shutdown(timeout=0.2)
    elapsed = time.monotonic() - started
    gate.release.set()
    assert elapsed < 0.2 + 1.0
    for future in (in_flight, queued):
        with pytest.raises(ao.Aborted):
            future.result(0)
    assert handle.status() is AgentStatus.CANCELLED


def test_no_thread_started_by_the_orchestrator_survives_shutdown() -> None:
    before = set(threading.enumerate())
    orch = AgentOrchestrator(supervisor=DefaultSupervisor())
    orch.add_agent("a", echo)
    orch.add_child("b", "a", echo)
    handles = [orch.spawn("a"), orch.spawn("b"), orch.spawn("a")]
    for handle in handles:
        handle.send_message("x", timeout=5)
    assert len(set(threading.enumerate()) - before) >= 3  # three agents
    orch.shutdown(timeout=5)
    # shutdown joins the actor threads itself: nothing to wait for afterwards
    assert [t.name for t in set(threading.enumerate()) - before] == []


def test_context_manager_shuts_down() -> None:
    with AgentOrchestrator() as orch:
        orch.add_agent("a", echo)
        handle = orch.spawn("a")
        handle.send_message("x", timeout=5)
    assert handle.status() is AgentStatus.COMPLETED


def test_script_that_forgets_shutdown_still_exits() -> None:
    script = textwrap.dedent(
        """
        import threading
        import actor_orch as ao
        gate = threading.Event()
        def blocked(request):
            gate.wait()  # never released: the model call is stuck forever
            return "never"
        orch = ao.AgentOrchestrator(supervisor=ao.DefaultSupervisor())
        orch.add_agent("stuck", lambda: ao.AgentOptions(ao.FunctionModel(blocked)))
        orch.add_agent("echo", lambda: ao.AgentOptions(ao.EchoModel()))
        orch.spawn("stuck").send_message_async("x")
        print(orch.spawn("echo").send_message("bye", timeout=5).text)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "bye"


# -- events, reprs -------------------------------------------------------------------------------


def test_events_follow_the_lifecycle_and_a_raising_subscriber_is_ignored(
    orch: AgentOrchestrator,
) -> None:
    def bad_subscriber(event: ao.Event) -> None:
        raise RuntimeError("subscriber bug")

    orch.subscribe(bad_subscriber)
    seen = events_of(orch)
    later: list[ao.Event] = []
    unsubscribe = orch.subscribe(later.append)
    unsubscribe()
    orch.add_agent("a", echo)
    handle = orch.spawn("a")
    assert handle.send_message("x", timeout=5).text == "x"
    handle.await_result(timeout=5)
    lifecycle = [e for e in seen if not isinstance(e, ao.ModelCallFinished)]
    assert lifecycle == [ao.AgentSpawned("a"), ao.AgentStopped("a", AgentStatus.COMPLETED)]
    assert later == []


def test_handle_repr_shows_name_status_and_restarts(orch: AgentOrchestrator) -> None:
    orch.add_agent("writer", echo)
    handle = orch.spawn("writer")
    assert repr(handle) == "<OrchestratedHandle 'writer' status=RUNNING restarts=0 queued=0>"
    assert "running=1" in repr(orch)
