"""OpenAICompatibleModel and the agent against a real llama.cpp server.

Run with a server from `../shared/real-model/` (see its README):
`ACTOR_ORCH_LLAMA_URL=http://127.0.0.1:18310/v1 pytest tests/integration -q`. The model name is
`gemma3-270m` unless `ACTOR_ORCH_LLAMA_MODEL` says otherwise. Without the variable every test
here is skipped, with that reason.

The model is a 270M *base* model: its prose is poor and it rarely calls tools, so these tests
assert what a real server reliably does (token limits, grammar-constrained JSON, streaming,
error mapping, the tool loop completing), never the quality of an answer. Every call sets
`max_tokens`: without it the model runs to its context limit (~20 s a call).
"""

from __future__ import annotations

import os

import jsonschema
import pytest

from actor_orch import (
    Agent,
    AgentOptions,
    AssistantMessage,
    ContextWindowOverflow,
    ModelRequest,
    ModelSettings,
    NetworkError,
    OpenAICompatibleModel,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    tool,
    user_message,
)
from actor_orch.structured import parse_structured

URL = os.environ.get("ACTOR_ORCH_LLAMA_URL", "")
MODEL = os.environ.get("ACTOR_ORCH_LLAMA_MODEL", "gemma3-270m")

pytestmark = pytest.mark.skipif(
    not URL, reason="ACTOR_ORCH_LLAMA_URL is not set (a llama-server: ../shared/real-model/)"
)

# Greedy and seeded, so a run is as repeatable as the server allows.
DETERMINISTIC = ModelSettings(temperature=0.0, seed=42)


@pytest.fixture(scope="module")
def model() -> OpenAICompatibleModel:
    return OpenAICompatibleModel(URL, MODEL, timeout=60.0, settings=DETERMINISTIC)


def test_plain_prompt_respects_max_tokens(model: OpenAICompatibleModel) -> None:
    agent = Agent(AgentOptions(model, settings=ModelSettings(max_tokens=16)))
    result = agent.prompt("Say hi to the user.")
    assert result.stop_reason in (StopReason.STOP, StopReason.LENGTH)
    assert 0 < result.usage.output_tokens <= 16
    assert result.usage.input_tokens > 0
    assert isinstance(result.messages[-1], AssistantMessage)


def test_a_reply_cut_by_max_tokens_is_length_and_keeps_its_text(
    model: OpenAICompatibleModel,
) -> None:
    agent = Agent(AgentOptions(model, max_turns=3))
    result = agent.prompt(
        "Write a long story about a dragon who learns to bake bread.",
        settings=ModelSettings(max_tokens=5),
    )
    assert result.stop_reason is StopReason.LENGTH
    assert result.truncated and not result.turn_limit_reached
    assert result.text  # the text is kept, not dropped
    assert result.usage.output_tokens == 5


CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "population": {"type": "integer", "minimum": 0},
    },
    "required": ["city", "population"],
    "additionalProperties": False,
}


def test_json_schema_output_is_valid_against_the_schema(model: OpenAICompatibleModel) -> None:
    agent = Agent(AgentOptions(model, settings=ModelSettings(max_tokens=96)))
    result = agent.prompt("Name one city and its population, as JSON.", output_schema=CITY)
    assert result.stop_reason is StopReason.STOP, result.text
    value = parse_structured(result.text, CITY)
    jsonschema.validate(value, CITY)


def test_streamed_deltas_join_to_the_final_text(model: OpenAICompatibleModel) -> None:
    deltas: list[str] = []
    agent = Agent(AgentOptions(model, settings=ModelSettings(max_tokens=24)))
    result = agent.prompt("Count from one to ten.", on_text_delta=deltas.append)
    assert len(deltas) > 1  # it really streamed
    assert "".join(deltas) == result.text
    assert 0 < result.usage.output_tokens <= 24  # usage arrives with the stream
    assert result.stop_reason in (StopReason.STOP, StopReason.LENGTH)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_the_tool_loop_completes_and_every_call_gets_a_result(
    model: OpenAICompatibleModel,
) -> None:
    # The base model may or may not call the tool, with good or broken arguments: whatever
    # it does, the loop ends without an error and every call is answered.
    agent = Agent(
        AgentOptions(
            model,
            system_prompt="You can call the add tool.",
            tools=[add],
            max_turns=3,
            settings=ModelSettings(max_tokens=48, tool_choice="auto"),
        )
    )
    result = agent.prompt("What is 2 plus 3? Use the add tool.")
    assert result.stop_reason in (StopReason.STOP, StopReason.LENGTH)
    calls = [c for m in result.messages if isinstance(m, AssistantMessage) for c in m.tool_calls]
    answered = {m.tool_call_id: m for m in result.messages if isinstance(m, ToolResultMessage)}
    assert {c.id for c in calls} == set(answered)
    for call in calls:
        if call.raw_arguments is not None:
            assert answered[call.id].is_error


def test_a_malformed_tool_call_in_the_history_round_trips_to_the_server(
    model: OpenAICompatibleModel,
) -> None:
    # What the agent sends after a small model botched a call: the call as it was written,
    # and an error result naming the problem. The server must accept it and answer.
    history = [
        user_message("What is 2 plus 3?"),
        AssistantMessage(
            [ToolCall("call_0", "add", {}, raw_arguments='{"a": 2, "b":')], StopReason.TOOL_USE
        ),
        ToolResultMessage(
            "call_0",
            [TextContent("invalid arguments for tool 'add': arguments are not valid JSON")],
            is_error=True,
        ),
    ]
    reply = model.complete(
        ModelRequest(history, tools=[add.spec], settings=ModelSettings(max_tokens=8))
    )
    assert reply.stop_reason in (StopReason.STOP, StopReason.LENGTH, StopReason.TOOL_USE)
    assert reply.usage.input_tokens > 0


def test_a_prompt_longer_than_the_context_is_a_context_window_overflow(
    model: OpenAICompatibleModel,
) -> None:
    with pytest.raises(ContextWindowOverflow):
        model.complete(
            ModelRequest([user_message("word " * 6000)], settings=ModelSettings(max_tokens=1))
        )


def test_the_whole_call_timeout_cuts_a_long_generation() -> None:
    slow = OpenAICompatibleModel(URL, MODEL, timeout=0.3, settings=ModelSettings(max_tokens=400))
    with pytest.raises(NetworkError, match=r"timeout of 0\.3s"):
        slow.complete(ModelRequest([user_message("Write a very long essay about rivers.")]))


# -- the runtime on top of the real server ------------------------------------------------------


def test_a_step_cut_at_max_tokens_succeeds_with_stop_reason_length(
    model: OpenAICompatibleModel,
) -> None:
    from actor_orch import AgentOrchestrator, AgentStepSpec, LocalExecutor, execute_steps_parallel

    orch = AgentOrchestrator()
    orch.add_agent("writer", lambda: AgentOptions(model, settings=ModelSettings(max_tokens=4)))
    specs = [
        AgentStepSpec(f"t{i}", "writer", "", "Write a long story about a fox.") for i in range(2)
    ]
    with LocalExecutor(orch, max_parallel_tasks=2) as executor:
        outcomes = execute_steps_parallel(executor, specs, timeout=120)
    for outcome in outcomes:
        assert outcome.success, outcome.output
        assert outcome.stop_reason == "length"
        assert outcome.output
        assert outcome.usage is not None and outcome.usage.output_tokens == 4


def test_a_handle_streams_and_types_a_real_reply(model: OpenAICompatibleModel) -> None:
    from actor_orch import AgentOrchestrator

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    with AgentOrchestrator() as orch:
        orch.add_agent("a", lambda: AgentOptions(model, settings=ModelSettings(max_tokens=24)))
        handle = orch.spawn("a")
        stream = handle.stream_message("Name a city.", timeout=120, session="s")
        pieces = list(stream)
        assert "".join(pieces) == stream.result().text
        typed = handle.send_message(
            "Name a city as JSON.", timeout=120, session="s", output_type=schema
        )
        jsonschema.validate(typed.output, schema)
        assert len(handle.history("s")) == 4
