"""Tracing (API §6a) against the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import actor_orch as ao
from actor_orch import AgentOptions, AgentOrchestrator
from actor_orch.otel import instrument, uninstrument
from actor_orch.types import AssistantMessage, StopReason, TextContent, ToolCall, Usage

WAIT = 10.0


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, trace.Tracer]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument(tracer_provider=provider)
    try:
        yield exporter, provider.get_tracer("test")
    finally:
        uninstrument()


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


@ao.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def tool_then_text() -> AgentOptions:
    calls = AssistantMessage(
        [ToolCall("c1", "add", {"a": 1, "b": 2}), ToolCall("c2", "add", {"a": 3, "b": 4})],
        StopReason.TOOL_USE,
        Usage(input_tokens=11, output_tokens=5),
    )
    final = AssistantMessage([TextContent("3 and 7")], StopReason.STOP, Usage(20, 3))
    return AgentOptions(ao.ScriptedModel([calls, final]), tools=[add])


def test_a_request_is_an_agent_span_under_the_senders_span_with_chat_and_tool_children(
    spans: tuple[InMemorySpanExporter, trace.Tracer],
) -> None:
    exporter, tracer = spans
    with AgentOrchestrator() as orch:
        orch.add_agent("calc", tool_then_text)
        handle = orch.spawn("calc")
        with tracer.start_as_current_span("request") as outer:
            assert handle.send_message("add", timeout=WAIT, session="s1").text == "3 and 7"
    found = by_name(exporter)
    [agent] = found["invoke_agent calc"]
    assert parent_of(agent) == outer.get_span_context().span_id  # across the actor thread
    assert agent.attributes is not None
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.conversation.id"] == "s1"
    chats = found["chat ScriptedModel"]
    assert len(chats) == 2
    assert all(parent_of(chat) == agent.context.span_id for chat in chats)
    first = next(
        c for c in chats if c.attributes and c.attributes["gen_ai.usage.input_tokens"] == 11
    )
    assert first.attributes is not None
    assert first.attributes["gen_ai.usage.output_tokens"] == 5
    assert tuple(first.attributes["gen_ai.response.finish_reasons"]) == ("tool_use",)
    assert first.attributes["gen_ai.request.model"] == "ScriptedModel"
    tools = found["execute_tool add"]
    assert len(tools) == 2  # two calls in one reply: they ran on tool threads
    assert all(parent_of(t) == agent.context.span_id for t in tools)


def test_steps_are_agent_spans_under_the_callers_span_across_pool_workers(
    spans: tuple[InMemorySpanExporter, trace.Tracer],
) -> None:
    exporter, tracer = spans
    orch = AgentOrchestrator()
    orch.add_agent("echo", lambda: AgentOptions(ao.EchoModel()))
    specs = [ao.AgentStepSpec(f"t{i}", "echo", "", f"p{i}") for i in range(4)]
    with (
        ao.LocalExecutor(orch, max_parallel_tasks=2) as executor,
        tracer.start_as_current_span("run") as outer,
    ):
        outcomes = ao.execute_steps_parallel(executor, specs)
    assert all(o.success for o in outcomes)
    found = by_name(exporter)
    agents = found["invoke_agent echo"]
    assert len(agents) == 4
    assert all(parent_of(a) == outer.get_span_context().span_id for a in agents)
    assert sorted(a.attributes["actor_orch.task_id"] for a in agents if a.attributes) == [
        "t0",
        "t1",
        "t2",
        "t3",
    ]
    chat_parents = {parent_of(c) for c in found["chat EchoModel"]}
    assert chat_parents == {a.context.span_id for a in agents}


def test_a_failed_model_call_is_an_error_span(
    spans: tuple[InMemorySpanExporter, trace.Tracer],
) -> None:
    exporter, _ = spans
    with AgentOrchestrator() as orch:
        orch.add_agent("bad", lambda: AgentOptions(ao.ScriptedModel([ao.AuthError("no")])))
        with pytest.raises(ao.AuthError):
            orch.spawn("bad").send_message("x", timeout=WAIT)
    [chat] = by_name(exporter)["chat ScriptedModel"]
    assert chat.status.status_code is trace.StatusCode.ERROR
    assert chat.attributes is not None
    assert chat.attributes["error.type"] == "AuthError"


def test_a_request_span_has_ended_when_send_message_returns(
    spans: tuple[InMemorySpanExporter, trace.Tracer],
) -> None:
    exporter, _ = spans
    with AgentOrchestrator() as orch:
        orch.add_agent("echo", lambda: AgentOptions(ao.EchoModel()))
        handle = orch.spawn("echo")
        for text in ("one", "two", "three"):
            handle.send_message(text, timeout=WAIT)
            # No shutdown, no wait: the span is exported before the caller is answered.
            assert (
                len(by_name(exporter)["invoke_agent echo"])
                == ("one", "two", "three").index(text) + 1
            )


def test_a_failed_request_and_a_failed_step_are_error_spans(
    spans: tuple[InMemorySpanExporter, trace.Tracer],
) -> None:
    exporter, _ = spans
    orch = AgentOrchestrator()
    orch.add_agent("bad", lambda: AgentOptions(ao.ScriptedModel([ao.AuthError("no")])))
    with pytest.raises(ao.AuthError):
        orch.spawn("bad").send_message("x", timeout=WAIT)
    with ao.LocalExecutor(orch) as executor:
        [outcome] = ao.execute_steps_parallel(executor, [ao.AgentStepSpec("t1", "bad", "", "x")])
    orch.shutdown()
    assert not outcome.success
    request, step = sorted(
        by_name(exporter)["invoke_agent bad"],
        key=lambda span: "actor_orch.task_id" in (span.attributes or {}),
    )
    assert request.status.status_code is trace.StatusCode.ERROR
    assert request.attributes is not None and request.attributes["error.type"] == "AuthError"
    assert step.status.status_code is trace.StatusCode.ERROR
    assert step.attributes is not None and step.attributes["error.type"] == "step_failed"


def test_uninstrument_stops_the_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument(tracer_provider=provider)
    uninstrument()
    with AgentOrchestrator() as orch:
        orch.add_agent("echo", lambda: AgentOptions(ao.EchoModel()))
        orch.spawn("echo").send_message("x", timeout=WAIT)
    assert exporter.get_finished_spans() == ()


def test_importing_actor_orch_does_not_import_opentelemetry() -> None:
    code = "import sys, actor_orch; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_model_and_tool_calls_are_events_too() -> None:
    seen: list[ao.Event] = []
    with AgentOrchestrator() as orch:
        orch.subscribe(seen.append)
        orch.add_agent("calc", tool_then_text)
        orch.spawn("calc").send_message("add", timeout=WAIT)
    model_calls = [e for e in seen if isinstance(e, ao.ModelCallFinished)]
    tool_calls = [e for e in seen if isinstance(e, ao.ToolCallFinished)]
    assert [e.usage.input_tokens for e in model_calls] == [11, 20]
    assert [e.stop_reason for e in model_calls] == [StopReason.TOOL_USE, StopReason.STOP]
    assert all(e.agent == "calc" and e.task_id is None and e.error is None for e in model_calls)
    assert sorted(e.tool for e in tool_calls) == ["add", "add"]
    assert not any(e.is_error for e in tool_calls)


def test_step_events_name_their_task() -> None:
    orch = AgentOrchestrator()
    orch.add_agent("calc", tool_then_text)
    seen: list[ao.Event] = []
    with ao.LocalExecutor(orch) as executor:
        [outcome] = ao.execute_steps_parallel(
            executor, [ao.AgentStepSpec("t9", "calc", "", "go")], seen.append
        )
    assert outcome.usage == Usage(31, 8)
    calls = [e for e in seen if isinstance(e, ao.ModelCallFinished | ao.ToolCallFinished)]
    assert {e.task_id for e in calls} == {"t9"}
