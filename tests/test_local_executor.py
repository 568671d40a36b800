"""LocalExecutor: fresh agents per step, supervision, structured output, events, cancel."""

from __future__ import annotations

import threading

import pytest

import actor_orch as ao
from actor_orch import (
    AgentOptions,
    AgentOrchestrator,
    AgentStepSpec,
    DefaultSupervisor,
    EchoModel,
    FunctionModel,
    LocalExecutor,
    ScriptedModel,
    execute_steps_parallel,
)

SCHEMA = {"type": "object", "properties": {"v": {"type": "string"}}, "required": ["v"]}


def spec(task_id: str, agent: str = "a", prompt: str = "p") -> AgentStepSpec:
    return AgentStepSpec(task_id, agent, "d", prompt)


def orchestrator_with(
    factory: ao.orchestrator.OptionsFactory, **kwargs: object
) -> AgentOrchestrator:
    orch = AgentOrchestrator(**kwargs)  # type: ignore[arg-type]
    orch.add_agent("a", factory)
    return orch


def tool_call(name: str = "noop") -> ao.AssistantMessage:
    return ao.AssistantMessage([ao.ToolCall("c1", name, {})], ao.StopReason.TOOL_USE)


def test_each_step_runs_on_a_fresh_agent_so_no_history_leaks() -> None:
    seen: list[int] = []

    def model(request: ao.ModelRequest) -> str:
        seen.append(len(request.messages))
        return "done"

    orch = orchestrator_with(lambda: AgentOptions(FunctionModel(model)))
    outcomes = execute_steps_parallel(LocalExecutor(orch), [spec(str(i)) for i in range(5)])
    assert seen == [1] * 5
    assert [o.success for o in outcomes] == [True] * 5


def test_outcome_carries_session_id_agent_and_final_text() -> None:
    orch = orchestrator_with(lambda: AgentOptions(EchoModel()))
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t1", prompt="hello")])
    assert outcome.duration_s is not None
    assert outcome.duration_s >= 0
    assert outcome == ao.StepOutcome(
        "t1",
        "task-run-t1",
        "a",
        "hello",
        True,
        stop_reason="stop",
        usage=ao.Usage(),
        duration_s=outcome.duration_s,
    )


def test_unknown_agent_is_a_failed_outcome_naming_it() -> None:
    orch = orchestrator_with(lambda: AgentOptions(EchoModel()))
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t", agent="ghost")])
    assert not outcome.success
    assert "ghost" in outcome.output
    assert outcome.session_id == "task-run-t"


def test_max_steps_caps_the_turns_and_fails_the_step_naming_why() -> None:
    @ao.tool
    def noop() -> str:
        """Do nothing."""
        return "ok"

    calls: list[int] = []

    def always_tools(request: ao.ModelRequest) -> ao.AssistantMessage:
        calls.append(1)
        return tool_call()

    orch = orchestrator_with(lambda: AgentOptions(FunctionModel(always_tools), tools=[noop]))
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t").with_max_steps(2)])
    assert not outcome.success
    assert "turn limit" in outcome.output
    assert "max_steps=2" in outcome.output
    assert len(calls) == 2


def test_retryable_failure_restarts_the_step_under_the_supervisor_policy() -> None:
    model = ScriptedModel([ao.NetworkError("reset"), "recovered"])
    orch = orchestrator_with(
        lambda: AgentOptions(model, retry=None), supervisor=DefaultSupervisor()
    )
    events: list[ao.Event] = []
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t")], events.append)
    assert outcome.success
    assert outcome.output == "recovered"
    assert [type(e).__name__ for e in events if not isinstance(e, _CALL_EVENTS)] == [
        "StepStarted",
        "AgentFailed",
        "AgentRestarted",
        "StepFinished",
    ]


def test_exhausted_budget_reports_a_failed_outcome_naming_the_error() -> None:
    model = ScriptedModel([ao.NetworkError(str(i)) for i in range(3)])
    orch = orchestrator_with(
        lambda: AgentOptions(model, retry=None), supervisor=DefaultSupervisor(max_restarts=2)
    )
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t")])
    assert not outcome.success
    assert outcome.output == "NetworkError: network error: 2"
    assert model.remaining == 0


def test_without_a_supervisor_a_failure_is_reported_at_once() -> None:
    model = ScriptedModel([ao.NetworkError("reset"), "never used"])
    orch = orchestrator_with(lambda: AgentOptions(model, retry=None))
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t")])
    assert not outcome.success
    assert "reset" in outcome.output
    assert model.remaining == 1


def test_valid_structured_output_fills_structured_and_the_schema_reaches_the_model() -> None:
    model = ScriptedModel(['```json\n{"v": "x"}\n```'])
    orch = orchestrator_with(lambda: AgentOptions(model))
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t").with_output_schema(SCHEMA)])
    assert outcome.success
    assert outcome.structured == {"v": "x"}
    assert model.requests[0].output_schema == SCHEMA


def test_invalid_structured_output_is_repaired_by_a_re_prompt() -> None:
    model = ScriptedModel(['{"v": 1}', '{"v": "fixed"}'])
    orch = orchestrator_with(lambda: AgentOptions(model))
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t").with_output_schema(SCHEMA)])
    assert outcome.success
    assert outcome.structured == {"v": "fixed"}
    repair = model.requests[1].messages[-1]
    assert isinstance(repair, ao.UserMessage)
    assert "$.v" in ao.types.text_of(repair.content)


def test_structured_output_still_invalid_after_repairs_is_a_failed_outcome() -> None:
    model = ScriptedModel(["not json", '{"w": 1}', '{"v": 2}'])
    orch = orchestrator_with(lambda: AgentOptions(model))
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t").with_output_schema(SCHEMA)])
    assert not outcome.success
    assert outcome.structured is None
    assert outcome.output.startswith("structured output failed after 3 attempt(s)")
    assert model.remaining == 0


def test_an_invalid_output_schema_fails_the_step_without_calling_the_model() -> None:
    model = ScriptedModel([])
    orch = orchestrator_with(lambda: AgentOptions(model))
    bad = spec("t").with_output_schema({"type": "no-such-type"})
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [bad])
    assert not outcome.success
    assert "invalid output_schema" in outcome.output
    assert model.requests == []


def test_step_events_arrive_before_the_call_returns_despite_a_raising_callback() -> None:
    orch = orchestrator_with(lambda: AgentOptions(EchoModel()))
    seen: list[ao.Event] = []

    def callback(event: ao.Event) -> None:
        seen.append(event)
        raise RuntimeError("callback bug")

    outcomes = execute_steps_parallel(
        LocalExecutor(orch, max_parallel_tasks=3), [spec(str(i)) for i in range(6)], callback
    )
    assert all(o.success for o in outcomes)
    started = sorted(e.task_id for e in seen if isinstance(e, ao.StepStarted))
    finished = [e for e in seen if isinstance(e, ao.StepFinished)]
    assert started == [str(i) for i in range(6)]
    assert sorted(e.task_id for e in finished) == started
    assert all(e.success and e.duration_s >= 0 for e in finished)


def test_cancel_aborts_running_steps_and_skips_unstarted_ones() -> None:
    entered = threading.Event()
    release = threading.Event()

    @ao.tool
    def noop() -> str:
        """Do nothing."""
        return "ok"

    def blocking(request: ao.ModelRequest) -> ao.AssistantMessage:
        entered.set()
        assert release.wait(5)
        return tool_call()

    orch = orchestrator_with(lambda: AgentOptions(FunctionModel(blocking), tools=[noop]))
    cancel = threading.Event()
    result: list[list[ao.StepOutcome]] = []
    runner = threading.Thread(
        target=lambda: result.append(
            execute_steps_parallel(
                LocalExecutor(orch, max_parallel_tasks=1),
                [spec(str(i)) for i in range(4)],
                cancel=cancel,
            )
        )
    )
    runner.start()
    assert entered.wait(5)
    cancel.set()
    release.set()  # the running step returns a tool call, then meets the abort boundary
    runner.join(5)
    [outcomes] = result
    assert [o.task_id for o in outcomes] == ["0", "1", "2", "3"]
    assert outcomes[0].output.startswith("cancelled")
    assert [o.output for o in outcomes[1:]] == ["cancelled"] * 3
    assert not any(o.success for o in outcomes)


def test_max_parallel_tasks_is_the_concurrency_hint_and_is_validated() -> None:
    orch = AgentOrchestrator()
    assert LocalExecutor(orch).concurrency_hint() == ao.DEFAULT_MAX_PARALLEL_TASKS
    assert LocalExecutor(orch, max_parallel_tasks=3).concurrency_hint() == 3
    with pytest.raises(ValueError, match="max_parallel_tasks"):
        LocalExecutor(orch, max_parallel_tasks=0)
    assert "max_parallel_tasks=3" in repr(LocalExecutor(orch, max_parallel_tasks=3))


def test_a_raising_factory_is_a_failed_outcome_naming_the_agent() -> None:
    def factory() -> AgentOptions:
        raise RuntimeError("no key configured")

    orch = orchestrator_with(factory)
    [outcome] = execute_steps_parallel(LocalExecutor(orch), [spec("t")])
    assert not outcome.success
    assert "no key configured" in outcome.output
    assert "'a'" in outcome.output


# Per-call events (API §6) are checked in their own tests; these follow the lifecycle.
_CALL_EVENTS = (ao.ModelCallFinished, ao.ToolCallFinished)
