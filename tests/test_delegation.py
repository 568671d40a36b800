"""Delegation (API §10): a parent hands tasks to its delegates through the `delegate` tool."""

from __future__ import annotations

import itertools
import json
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import actor_orch as ao
from actor_orch import AgentOptions, AgentOrchestrator, DefaultSupervisor
from actor_orch.executor import current_step_abort
from actor_orch.types import AssistantMessage, StopReason, ToolCall, ToolResultMessage
from actor_orch.workflow import WorkflowError, load_workflow, registration_order

WAIT = 10.0


def delegate_call(*tasks: tuple[str, str], call_id: str = "c1") -> ToolCall:
    return ToolCall(
        call_id,
        "delegate",
        {"tasks": [{"agent": a, "description": "d", "prompt": p} for a, p in tasks]},
    )


def asks(*calls: ToolCall) -> AssistantMessage:
    return AssistantMessage(list(calls), StopReason.TOOL_USE)


def tool_results(result: ao.AgentResult) -> list[list[dict[str, Any]]]:
    """The delegate tool's results in `result`, decoded."""
    found = []
    for message in result.messages:
        if isinstance(message, ToolResultMessage):
            assert not message.is_error, message.content
            found.append(json.loads(message.content[0].text))
    return found


@pytest.fixture
def orch() -> Iterator[AgentOrchestrator]:
    orchestrator = AgentOrchestrator(supervisor=DefaultSupervisor())
    yield orchestrator
    orchestrator.shutdown(timeout=5)


def lead_with(script: list[Any], delegates: Any = True) -> Callable[[], AgentOptions]:
    return lambda: AgentOptions(ao.ScriptedModel(list(script)), delegates=delegates, retry=None)


def test_tasks_run_concurrently_and_outcomes_come_back_in_task_order(
    orch: AgentOrchestrator,
) -> None:
    barrier = threading.Barrier(3, timeout=WAIT)

    def helper(request: ao.ModelRequest) -> str:
        barrier.wait()  # all three tasks must be running at once to get past this
        return request.messages[-1].content[0].text.upper()

    orch.add_agent(
        "lead", lead_with([asks(delegate_call(*[("w", f"t{i}") for i in range(3)])), "ok"])
    )
    orch.add_child("w", "lead", lambda: AgentOptions(ao.FunctionModel(helper)))
    result = orch.spawn("lead").send_message("go", timeout=WAIT)
    [reported] = tool_results(result)
    assert [r["output"] for r in reported] == ["T0", "T1", "T2"]
    assert all(r["success"] and r["agent"] == "w" for r in reported)
    assert result.text == "ok"


def test_delegated_steps_carry_the_calling_conversation_in_their_events(
    orch: AgentOrchestrator,
) -> None:
    seen: list[ao.Event] = []
    orch.subscribe(seen.append)
    orch.add_agent("lead", lead_with([asks(delegate_call(("w", "x"))), "ok"]))
    orch.add_child("w", "lead", lambda: AgentOptions(ao.EchoModel()))
    orch.spawn("lead").send_message("go", timeout=WAIT, session="user-7")
    started = [e for e in seen if isinstance(e, ao.StepStarted)]
    finished = [e for e in seen if isinstance(e, ao.StepFinished)]
    assert [e.parent_session_id for e in started] == ["agent:lead:user-7"]
    assert [e.parent_session_id for e in finished] == ["agent:lead:user-7"]
    assert finished[0].success


def test_a_task_for_an_agent_that_is_not_a_delegate_is_an_error_tool_result(
    orch: AgentOrchestrator,
) -> None:
    orch.add_agent("lead", lead_with([asks(delegate_call(("stranger", "x"))), "ok"], ["w"]))
    orch.add_agent("w", lambda: AgentOptions(ao.EchoModel()))
    orch.add_agent("stranger", lambda: AgentOptions(ao.EchoModel()))
    seen: list[ao.Event] = []
    orch.subscribe(seen.append)
    result = orch.spawn("lead").send_message("go", timeout=WAIT)
    [error] = [m for m in result.messages if isinstance(m, ToolResultMessage)]
    assert error.is_error
    assert "stranger" in error.content[0].text or "agent" in error.content[0].text
    assert not [e for e in seen if isinstance(e, ao.StepStarted)], "nothing was run"
    assert result.text == "ok"


def test_delegation_stops_at_the_depth_limit(orch: AgentOrchestrator) -> None:
    orchestrator = AgentOrchestrator(max_delegation_depth=1)
    try:
        orchestrator.add_agent("a", lead_with([asks(delegate_call(("b", "x"))), "a done"], ["b"]))
        orchestrator.add_agent("b", lead_with([asks(delegate_call(("c", "y"))), "b done"], ["c"]))
        orchestrator.add_agent("c", lambda: AgentOptions(ao.EchoModel()))
        result = orchestrator.spawn("a").send_message("go", timeout=WAIT)
        [reported] = tool_results(result)
        assert reported[0]["success"] and reported[0]["output"] == "b done"
        # b's own delegate call was refused: it got an error tool result and went on.
    finally:
        orchestrator.shutdown(timeout=5)


@pytest.mark.parametrize("calls_per_reply", [1, 2])
def test_no_deadlock_with_limit_one_and_depth_three(calls_per_reply: int) -> None:
    orchestrator = AgentOrchestrator(supervisor=DefaultSupervisor(), max_delegation_depth=3)
    executor = ao.LocalExecutor(orchestrator, max_parallel_tasks=1)
    orchestrator.with_executor(executor)
    chain = ["a", "b", "c", "d"]
    for parent, child in itertools.pairwise(chain):
        calls = [
            delegate_call((child, "p0"), (child, "p1"), call_id=f"c{k}")
            for k in range(calls_per_reply)
        ]
        orchestrator.add_agent(parent, lead_with([asks(*calls), f"{parent} done"], [child]))
    orchestrator.add_agent("d", lambda: AgentOptions(ao.EchoModel()))
    try:
        [outcome] = ao.execute_steps_parallel(
            executor, [ao.AgentStepSpec("root", "a", "", "go")], timeout=WAIT
        )
        assert outcome.success, outcome.output
        assert outcome.output == "a done"
    finally:
        orchestrator.shutdown(timeout=5)
        executor.close()


def test_the_limit_holds_across_delegated_steps() -> None:
    orchestrator = AgentOrchestrator()
    executor = ao.LocalExecutor(orchestrator, max_parallel_tasks=2)
    orchestrator.with_executor(executor)
    lock = threading.Lock()
    running = peak = 0
    release = threading.Event()

    def worker(request: ao.ModelRequest) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(0.01)  # hold a moment so an overrun would show
        with lock:
            running -= 1
        return "w"

    orchestrator.add_agent(
        "lead", lead_with([asks(delegate_call(*[("w", str(i)) for i in range(6)])), "ok"])
    )
    orchestrator.add_child("w", "lead", lambda: AgentOptions(ao.FunctionModel(worker)))
    try:
        outcomes = ao.execute_steps_parallel(
            executor, [ao.AgentStepSpec(f"s{i}", "lead", "", "go") for i in range(3)], timeout=WAIT
        )
        assert all(o.success for o in outcomes)
        # The lead steps make no model call while they wait; the workers never exceed 2.
        assert peak <= 2
    finally:
        release.set()
        orchestrator.shutdown(timeout=5)
        executor.close()


def test_a_failing_delegate_is_supervised_and_reported(orch: AgentOrchestrator) -> None:
    seen: list[ao.Event] = []
    orch.subscribe(seen.append)
    flaky = ao.ScriptedModel([ao.NetworkError("reset"), "recovered"])
    orch.add_agent("lead", lead_with([asks(delegate_call(("w", "x"), ("bad", "y"))), "ok"]))
    orch.add_child("w", "lead", lambda: AgentOptions(flaky, retry=None))
    orch.add_child(
        "bad", "lead", lambda: AgentOptions(ao.ScriptedModel([ao.AuthError("no")]), retry=None)
    )
    result = orch.spawn("lead").send_message("go", timeout=WAIT)
    [reported] = tool_results(result)
    assert reported[0]["success"] and reported[0]["output"] == "recovered"
    assert not reported[1]["success"] and "AuthError" in reported[1]["output"]
    actions = [(e.name, e.action) for e in seen if isinstance(e, ao.AgentFailed)]
    assert ("w", ao.SupervisorAction.RESTART) in actions
    assert ("bad", ao.SupervisorAction.STOP) in actions


def test_cancelling_the_parent_aborts_its_delegated_steps(orch: AgentOrchestrator) -> None:
    entered = threading.Event()
    release = threading.Event()
    seen: list[ao.Event] = []
    orch.subscribe(seen.append)

    def blocked(request: ao.ModelRequest) -> str:
        entered.set()
        abort = current_step_abort()
        assert abort is not None
        abort.wait(WAIT)  # a model call that notices the step's abort, as a stream would
        return "late"

    orch.add_agent("lead", lead_with([asks(delegate_call(("w", "x"))), "ok"]))
    orch.add_child("w", "lead", lambda: AgentOptions(ao.FunctionModel(blocked), retry=None))
    handle = orch.spawn("lead")
    stream = handle.stream_message("go", timeout=WAIT)
    try:
        assert entered.wait(WAIT)
        stream.cancel()
        with pytest.raises(ao.Aborted):
            stream.result(WAIT)
        finished = threading.Event()
        orch.subscribe(lambda e: finished.set() if isinstance(e, ao.StepFinished) else None)
        assert finished.wait(WAIT) or any(isinstance(e, ao.StepFinished) for e in seen)
        [done] = [e for e in seen if isinstance(e, ao.StepFinished)]
        assert not done.success  # the delegated step came back failed, not "late"
        assert handle.status() is ao.AgentStatus.RUNNING  # a caller's cancel is no agent failure
    finally:
        release.set()


def test_delegates_true_means_every_registered_child(orch: AgentOrchestrator) -> None:
    orch.add_agent("lead", lead_with([asks(delegate_call(("x", "1"), ("y", "2"))), "ok"]))
    orch.add_child("x", "lead", lambda: AgentOptions(ao.EchoModel()))
    orch.add_child("y", "lead", lambda: AgentOptions(ao.EchoModel()))
    [reported] = tool_results(orch.spawn("lead").send_message("go", timeout=WAIT))
    assert [(r["agent"], r["output"]) for r in reported] == [("x", "1"), ("y", "2")]


def test_delegates_must_be_names() -> None:
    with pytest.raises(TypeError, match="delegates"):
        AgentOptions(ao.EchoModel(), delegates="child")
    with pytest.raises(TypeError, match="delegates"):
        AgentOptions(ao.EchoModel(), delegates=["ok", 3])  # type: ignore[list-item]


# --- the demo model ------------------------------------------------------------------------------


def test_demo_model_delegates_one_task_per_line_then_sums_up(orch: AgentOrchestrator) -> None:
    orch.add_agent("lead", lambda: AgentOptions(ao.DemoModel(), delegates=True))
    orch.add_child("critic", "lead", lambda: AgentOptions(ao.EchoModel()))
    orch.add_child("writer", "lead", lambda: AgentOptions(ao.EchoModel()))
    result = orch.spawn("lead").send_message(
        "critic: check the claim\nfirst line\n\n  second line  \n", timeout=WAIT
    )
    [outcomes] = tool_results(result)
    # `NAME: text` goes to NAME; other lines go to the delegates in turn (by line index).
    assert [(o["agent"], o["output"]) for o in outcomes] == [
        ("critic", "check the claim"),
        ("writer", "first line"),
        ("critic", "second line"),
    ]
    assert result.text == (
        "3 of 3 delegated tasks succeeded:\n"
        "- critic: check the claim\n"
        "- writer: first line\n"
        "- critic: second line"
    )


def test_demo_model_reports_failed_tasks_and_echoes_without_a_delegate_tool(
    orch: AgentOrchestrator,
) -> None:
    orch.add_agent("lead", lambda: AgentOptions(ao.DemoModel(), delegates=["broken"]))
    orch.add_agent(
        "broken", lambda: AgentOptions(ao.ScriptedModel([ao.AuthError("no key")]), retry=None)
    )
    orch.add_agent("alone", lambda: AgentOptions(ao.DemoModel()))
    result = orch.spawn("lead").send_message("try it", timeout=WAIT)
    assert result.text.startswith("0 of 1 delegated tasks succeeded:\n- broken failed: ")
    assert "no key" in result.text
    assert orch.spawn("alone").send_message("just echo", timeout=WAIT).text == "just echo"


def test_demo_model_streams_its_summary(orch: AgentOrchestrator) -> None:
    orch.add_agent("lead", lambda: AgentOptions(ao.DemoModel(), delegates=["helper"]))
    orch.add_agent("helper", lambda: AgentOptions(ao.EchoModel()))
    stream = orch.spawn("lead").stream_message("a task", timeout=WAIT)
    pieces = list(stream)
    assert len(pieces) > 1
    assert (
        "".join(pieces)
        == stream.result().text
        == "1 of 1 delegated tasks succeeded:\n- helper: a task"
    )


# --- delegation in workflow files ----------------------------------------------------------------


def write_workflow(folder: Path, agents: str) -> Path:
    path = folder / "wf.toml"
    path.write_text(
        textwrap.dedent(agents)
        + '\n[[steps]]\ntask_id = "t"\nagent = "lead"\ndescription = "d"\nprompt = "p"\n'
    )
    return path


def test_workflow_agents_declare_delegates_and_parents(tmp_path: Path) -> None:
    workflow = load_workflow(
        write_workflow(
            tmp_path,
            """
            [agents.helper]
            parent = "lead"
            [agents.lead]
            model = "demo"
            delegates = true
            [agents.editor]
            delegates = ["helper", "lead"]
            """,
        )
    )
    assert workflow.agents["lead"].delegates is True
    assert workflow.agents["editor"].delegates == ("helper", "lead")
    assert workflow.agents["helper"].parent == "lead"
    # Parents are registered before their children, whatever the order in the file.
    assert registration_order(workflow.agents) == ["lead", "helper", "editor"]


BAD_DELEGATION = {
    "unknown-delegate": (
        '[agents.lead]\ndelegates = ["ghost"]',
        "$.agents.lead.delegates[0]: agent 'ghost' is not defined in [agents]",
    ),
    "delegate-listed-twice": (
        '[agents.lead]\ndelegates = ["lead", "a", "a"]\n[agents.a]',
        "$.agents.lead.delegates[2]: 'a' is listed twice",
    ),
    "empty-delegate-name": (
        '[agents.lead]\ndelegates = [""]',
        "Expected `str` of length >= 1 - at `$.agents.lead.delegates[0]`",
    ),
    "delegates-not-a-list": (
        '[agents.lead]\ndelegates = "a"',
        "Expected `bool | array`, got `str` - at `$.agents.lead.delegates`",
    ),
    "true-without-children": (
        "[agents.lead]\ndelegates = true",
        "$.agents.lead.delegates: true delegates to the agents whose parent is 'lead', "
        "and there are none",
    ),
    "undefined-parent": (
        '[agents.lead]\n[agents.a]\nparent = "boss"',
        "$.agents.a.parent: agent 'boss' is not defined in [agents]",
    ),
    "own-parent": (
        '[agents.lead]\nparent = "lead"',
        "$.agents.lead.parent: parent cycle: lead -> lead",
    ),
    "parent-cycle": (
        '[agents.lead]\n[agents.a]\nparent = "b"\n[agents.b]\nparent = "c"\n'
        '[agents.c]\nparent = "a"',
        "$.agents.a.parent: parent cycle: a -> b -> c -> a",
    ),
    "server-field-on-demo": (
        '[agents.lead]\nmodel = "demo"\nbase_url = "http://x"',
        '$.agents.lead.base_url: only used by model = "openai", not "demo"',
    ),
}


@pytest.mark.parametrize("case", list(BAD_DELEGATION))
def test_bad_delegation_in_a_workflow_file_names_the_field(tmp_path: Path, case: str) -> None:
    agents, expected = BAD_DELEGATION[case]
    path = write_workflow(tmp_path, agents)
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)
    assert str(caught.value).startswith(f"{path}: {expected}")
