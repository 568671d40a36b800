"""The agent against real-model behaviour: settings, streaming deltas, malformed tool
arguments, truncation versus the turn limit, history limits, and containment of anything a
model or a tool raises."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import actor_orch as ao
from actor_orch.agent import Agent, AgentOptions, trim_history
from actor_orch.errors import Aborted, NetworkError, PluginError, StreamError
from actor_orch.models import (
    EchoModel,
    FinalMessage,
    FunctionModel,
    ModelRequest,
    ModelSettings,
    ScriptedModel,
    TextDelta,
)
from actor_orch.retry import RetryPolicy
from actor_orch.tools import tool
from actor_orch.types import (
    AgentMessage,
    AssistantMessage,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    UserMessage,
    user_message,
)

NO_WAIT = RetryPolicy(max_attempts=3, base_delay=0, max_delay=0)


@tool
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


def tool_turn(*calls: ToolCall, text: str = "") -> AssistantMessage:
    content: list[Any] = [TextContent(text)] if text else []
    return AssistantMessage([*content, *calls], StopReason.TOOL_USE)


def results(messages: list[AgentMessage]) -> list[ToolResultMessage]:
    return [m for m in messages if isinstance(m, ToolResultMessage)]


def result_text(message: ToolResultMessage) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextContent))


# --- settings ---------------------------------------------------------------------------------


class SettingsRecorder:
    """A model with its own settings that records what each request carried."""

    def __init__(self, settings: ModelSettings | None) -> None:
        self.settings = settings
        self.seen: list[ModelSettings | None] = []

    def complete(self, request: ModelRequest) -> AssistantMessage:
        self.seen.append(request.settings)
        return AssistantMessage([TextContent("ok")])


def test_request_settings_merge_model_then_agent_then_call() -> None:
    model = SettingsRecorder(ModelSettings(temperature=1.0, max_tokens=100, seed=7))
    agent = Agent(
        AgentOptions(model, settings=ModelSettings(temperature=0.5, max_tokens=50, stop="END"))
    )
    agent.prompt("a")
    agent.prompt("b", settings=ModelSettings(max_tokens=5))
    assert model.seen == [
        ModelSettings(temperature=0.5, max_tokens=50, seed=7, stop="END"),
        ModelSettings(temperature=0.5, max_tokens=5, seed=7, stop="END"),
    ]


def test_no_settings_anywhere_means_none_in_the_request() -> None:
    model = SettingsRecorder(None)
    Agent(AgentOptions(model)).prompt("a")
    assert model.seen == [None]


def test_bad_settings_and_history_limit_raise_naming_the_field() -> None:
    with pytest.raises(TypeError, match=r"AgentOptions.settings"):
        AgentOptions(EchoModel(), settings={"max_tokens": 3})  # type: ignore[arg-type]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"AgentOptions.history_limit"):
            AgentOptions(EchoModel(), history_limit=bad)
    with pytest.raises(TypeError, match="settings"):
        Agent(AgentOptions(EchoModel())).prompt("a", settings={"max_tokens": 1})  # type: ignore[arg-type]


# --- streaming --------------------------------------------------------------------------------


def test_text_deltas_join_to_the_reply_for_every_offline_model() -> None:
    models: list[Any] = [
        EchoModel(),
        ScriptedModel(["one two  three\n"]),
        FunctionModel(lambda request: iter(["one", " two", ""])),
        FunctionModel(lambda request: "one two"),
    ]
    for model in models:
        deltas: list[str] = []
        result = Agent(AgentOptions(model)).prompt("one two  three\n", on_text_delta=deltas.append)
        assert "".join(deltas) == result.text, model
        assert all(deltas), model  # no empty deltas
    echo: list[str] = []
    Agent(AgentOptions(EchoModel())).prompt("a b c", on_text_delta=echo.append)
    assert echo == ["a ", "b ", "c"]  # word by word


def test_function_model_pieces_are_joined_by_complete() -> None:
    model = FunctionModel(lambda request: (p for p in ["Hel", "lo"]))
    assert model.complete(ModelRequest([user_message("x")])).text == "Hello"
    with pytest.raises(StreamError, match="piece 1 of type int"):
        Agent(AgentOptions(FunctionModel(lambda r: ["a", 1]))).prompt("x")  # type: ignore[list-item]


class CompleteOnly:
    """A model without `stream`: the agent falls back to `complete`, one delta per reply."""

    def complete(self, request: ModelRequest) -> AssistantMessage:
        return AssistantMessage([TextContent("whole reply")])


def test_a_model_without_stream_gives_one_delta_per_reply() -> None:
    deltas: list[str] = []
    result = Agent(AgentOptions(CompleteOnly())).prompt("x", on_text_delta=deltas.append)
    assert deltas == ["whole reply"] == [result.text]


def test_deltas_cover_every_assistant_message_through_tool_rounds() -> None:
    model = ScriptedModel([tool_turn(ToolCall("c1", "add", {"a": 1}), text="Adding. "), "It is 1."])
    deltas: list[str] = []
    result = Agent(AgentOptions(model, tools=[add])).prompt("1+0?", on_text_delta=deltas.append)
    assert "".join(deltas) == "Adding. It is 1."
    assert result.text == "It is 1."


def flaky_stream(failures: list[BaseException], deltas_before_failure: int) -> FunctionModel:
    """Streams "a b c"; the first calls fail with `failures` after some deltas."""

    def fn(request: ModelRequest) -> Iterator[str]:
        failure = failures.pop(0) if failures else None
        for index, piece in enumerate(["a ", "b ", "c"]):
            if failure is not None and index == deltas_before_failure:
                raise failure
            yield piece

    return FunctionModel(fn)


def test_a_stream_failing_before_its_first_delta_is_retried() -> None:
    model = flaky_stream([NetworkError("reset"), NetworkError("reset")], deltas_before_failure=0)
    deltas: list[str] = []
    result = Agent(AgentOptions(model, retry=NO_WAIT)).prompt("x", on_text_delta=deltas.append)
    assert deltas == ["a ", "b ", "c"]
    assert result.text == "a b c"


def test_a_stream_failing_after_a_delta_is_not_retried_so_no_text_repeats() -> None:
    model = flaky_stream([NetworkError("reset")], deltas_before_failure=2)
    deltas: list[str] = []
    agent = Agent(AgentOptions(model, retry=NO_WAIT))
    with pytest.raises(NetworkError):
        agent.prompt("x", on_text_delta=deltas.append)
    assert deltas == ["a ", "b "]
    assert agent.messages == []  # the failed prompt left no trace


def test_a_raising_delta_hook_fails_the_prompt_naming_it() -> None:
    def hook(text: str) -> None:
        raise ValueError("consumer gone")

    with pytest.raises(PluginError, match=r"on_text_delta.*consumer gone") as info:
        Agent(AgentOptions(EchoModel())).prompt("a b", on_text_delta=hook)
    assert not info.value.is_retryable()


def test_abort_between_deltas_stops_the_stream_and_closes_it() -> None:
    closed = threading.Event()

    def fn(request: ModelRequest) -> Iterator[str]:
        try:
            for i in range(1000):
                yield f"w{i} "
        finally:
            closed.set()

    agent = Agent(AgentOptions(FunctionModel(fn)))
    seen: list[str] = []

    def hook(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            agent.abort()

    with pytest.raises(Aborted):
        agent.prompt("x", on_text_delta=hook)
    assert seen == ["w0 ", "w1 ", "w2 "]
    assert closed.is_set()
    assert agent.prompt("again").text.startswith("w0 w1 w2 w3 ")  # works again: flag cleared


class BrokenStream:
    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def complete(self, request: ModelRequest) -> AssistantMessage:
        raise AssertionError("stream() should be used")

    def stream(self, request: ModelRequest) -> Iterator[Any]:
        return iter(self.events)


@pytest.mark.parametrize(
    ("events", "match"),
    [
        ([TextDelta("a")], "without a FinalMessage"),
        (["a"], "streamed str"),
        ([FinalMessage("text")], "without a reply"),  # type: ignore[arg-type]
    ],
)
def test_a_stream_breaking_the_contract_is_a_stream_error(events: list[Any], match: str) -> None:
    with pytest.raises(StreamError, match=match):
        Agent(AgentOptions(BrokenStream(events))).prompt("x", on_text_delta=lambda t: None)


# --- malformed tool arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('{"a": 1', "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got an array"),
        ("3", "must be a JSON object, got a number"),
    ],
)
def test_malformed_arguments_become_an_error_result_and_the_model_may_correct_itself(
    raw: str, problem: str
) -> None:
    model = ScriptedModel(
        [
            tool_turn(ToolCall("c1", "add", {}, raw_arguments=raw)),
            tool_turn(ToolCall("c2", "add", {"a": 2, "b": 3})),
            "5",
        ]
    )
    agent = Agent(AgentOptions(model, tools=[add]))
    result = agent.prompt("2+3?")
    first, second = results(result.messages)
    assert first.is_error
    assert "'add'" in result_text(first) and problem in result_text(first)
    assert (second.is_error, result_text(second)) == (False, "5")
    assert result.text == "5"
    # The raw text stays in the history, so it goes back to the server as the model sent it.
    assert model.requests[1].messages[1].tool_calls[0].raw_arguments == raw  # type: ignore[union-attr]


# --- truncation versus the turn limit ---------------------------------------------------------


def test_a_truncated_reply_keeps_its_text_and_is_not_the_turn_limit() -> None:
    cut = AssistantMessage([TextContent("Once upon a")], StopReason.LENGTH)
    result = Agent(AgentOptions(ScriptedModel([cut]), max_turns=3)).prompt("story")
    assert (result.stop_reason, result.text) == (StopReason.LENGTH, "Once upon a")
    assert result.truncated
    assert not result.turn_limit_reached


def test_the_turn_limit_is_not_a_truncation() -> None:
    model = ScriptedModel([tool_turn(ToolCall(f"c{i}", "add", {"a": i})) for i in range(2)])
    result = Agent(AgentOptions(model, tools=[add], max_turns=2)).prompt("loop")
    assert result.stop_reason is StopReason.LENGTH
    assert result.turn_limit_reached
    assert not result.truncated


def test_plain_stop_is_neither() -> None:
    result = Agent(AgentOptions(EchoModel())).prompt("x")
    assert not result.truncated and not result.turn_limit_reached


# --- history limit ----------------------------------------------------------------------------


def reply(text: str) -> AssistantMessage:
    return AssistantMessage([TextContent(text)])


def test_trim_history_drops_oldest_whole_turns_and_keeps_tool_pairs() -> None:
    turn1 = [user_message("1"), reply("r1")]
    turn2 = [
        user_message("2"),
        tool_turn(ToolCall("c", "add", {"a": 1})),
        ToolResultMessage("c", [TextContent("1")]),
        reply("r2"),
    ]
    turn3 = [user_message("3"), reply("r3")]
    history: list[AgentMessage] = [*turn1, *turn2, *turn3]
    assert trim_history(history, None) == history
    assert trim_history(history, 8) == history
    assert trim_history(history, 7) == [*turn2, *turn3]
    assert trim_history(history, 6) == [*turn2, *turn3]
    assert trim_history(history, 5) == turn3  # turn2 would be split: it goes whole
    assert trim_history(history, 1) == turn3  # the newest turn is kept whole


def test_agent_keeps_at_most_history_limit_messages() -> None:
    agent = Agent(AgentOptions(EchoModel(), history_limit=4))
    for text in "abcde":
        agent.prompt(text)
    assert [m.content[0].text for m in agent.messages] == ["d", "d", "e", "e"]  # type: ignore[union-attr]
    assert isinstance(agent.messages[0], UserMessage)


def test_history_limit_also_bounds_what_the_model_sees() -> None:
    seen: list[int] = []

    def fn(request: ModelRequest) -> str:
        seen.append(len(request.messages))
        return "ok"

    agent = Agent(AgentOptions(FunctionModel(fn), history_limit=3))
    for _ in range(4):
        agent.prompt("q")
    assert seen == [1, 3, 3, 3]


# --- containment ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt(), SystemExit(3), GeneratorExit(), ValueError("bad")]
)
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
def test_anything_a_model_raises_becomes_a_stream_error_with_its_cause(
    error: BaseException, streaming: bool
) -> None:
    def fn(request: ModelRequest) -> str:
        raise error

    agent = Agent(AgentOptions(FunctionModel(fn), retry=NO_WAIT))
    hook = (lambda text: None) if streaming else None
    with pytest.raises(StreamError) as info:
        agent.prompt("x", on_text_delta=hook)
    assert info.value.__cause__ is error
    assert not info.value.is_retryable()
    assert agent.messages == []


def test_a_model_stream_raising_mid_way_is_contained() -> None:
    def fn(request: ModelRequest) -> Iterator[str]:
        yield "a "
        raise KeyboardInterrupt

    with pytest.raises(StreamError) as info:
        Agent(AgentOptions(FunctionModel(fn))).prompt("x", on_text_delta=lambda t: None)
    assert isinstance(info.value.__cause__, KeyboardInterrupt)


@tool
def exits(code: int) -> str:
    """Calls sys.exit."""
    raise SystemExit(code)


@tool
def interrupted() -> str:
    """Raises KeyboardInterrupt."""
    raise KeyboardInterrupt


@pytest.mark.parametrize("concurrent", [False, True], ids=["one-call", "concurrent-calls"])
def test_a_tool_raising_a_base_exception_becomes_an_error_result(concurrent: bool) -> None:
    calls = [ToolCall("c1", "exits", {"code": 2})]
    if concurrent:
        calls += [ToolCall("c2", "interrupted"), ToolCall("c3", "add", {"a": 4})]
    model = ScriptedModel([tool_turn(*calls), "survived"])
    result = Agent(AgentOptions(model, tools=[exits, interrupted, add])).prompt("x")
    assert result.text == "survived"
    found = results(result.messages)
    assert "tool 'exits' failed: SystemExit: 2" in result_text(found[0])
    assert found[0].is_error
    if concurrent:
        assert "tool 'interrupted' failed: KeyboardInterrupt" in result_text(found[1])
        assert (found[2].is_error, result_text(found[2])) == (False, "4")


def test_new_names_are_exported() -> None:
    for name in ("ModelSettings", "TextDelta", "FinalMessage", "ModelStreamEvent"):
        assert name in ao.__all__
        assert getattr(ao, name) is not None
