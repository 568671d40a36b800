"""Messages, results, usage and cost: msgspec Structs that round-trip exactly through JSON."""

from __future__ import annotations

import time

import msgspec
import pytest

import actor_orch as ao
from actor_orch.types import (
    AgentMessage,
    AgentResult,
    AssistantMessage,
    Cost,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
    user_message,
)


def roundtrip(value: object) -> object:
    return msgspec.json.decode(msgspec.json.encode(value), type=type(value))


def mixed_messages() -> list[AgentMessage]:
    return [
        UserMessage([TextContent("what is the weather?")], timestamp=1700000000.125),
        AssistantMessage(
            [
                TextContent("let me look"),
                ToolCall("call-1", "weather", {"city": "Oslo", "days": 2, "opts": {"x": [1, 2]}}),
            ],
            stop_reason=StopReason.TOOL_USE,
            usage=Usage(10, 5, 1, 2),
            timestamp=1700000001.5,
            cost=Cost(0.25, 0.125, 0.125),
        ),
        ToolResultMessage("call-1", [TextContent('{"temp": 3}')], is_error=False),
        ToolResultMessage("call-2", [TextContent("boom")], is_error=True),
        AssistantMessage([TextContent("It is 3 degrees.")], timestamp=1700000002.0),
    ]


@pytest.mark.parametrize(
    "value",
    [
        TextContent("hello"),
        TextContent(""),
        ToolCall("id-1", "search", {"q": "x", "n": 3, "nested": {"a": [1, None, True]}}),
        ToolCall("id-2", "noargs"),
        UserMessage([TextContent("hi"), TextContent("there")], timestamp=123.456),
        AssistantMessage(
            [TextContent("a"), ToolCall("c", "t", {"k": "v"})],
            stop_reason=StopReason.LENGTH,
            usage=Usage(input_tokens=7, output_tokens=3, cache_read_tokens=2, cache_write_tokens=1),
            timestamp=99.5,
            cost=Cost(total=0.3, input=0.1, output=0.2),
        ),
        ToolResultMessage("c", [TextContent("result")]),
        ToolResultMessage("c", [TextContent("bad")], is_error=True),
        Usage(1, 2, 3, 4),
        Cost(1.5, 0.5, 1.0),
        AgentResult(mixed_messages(), StopReason.STOP, Usage(10, 5), Cost(0.25)),
        AgentResult(
            mixed_messages(),
            StopReason.TRANSFER,
            error="something failed",
            transfer_signal="handoff:writer",
        ),
    ],
    ids=lambda v: type(v).__name__,
)
def test_every_struct_round_trips_exactly_through_msgspec_json(value: object) -> None:
    decoded = roundtrip(value)
    assert decoded == value
    assert type(decoded) is type(value)


@pytest.mark.parametrize("stop_reason", list(StopReason))
def test_assistant_message_round_trips_every_stop_reason(stop_reason: StopReason) -> None:
    message = AssistantMessage([TextContent("x")], stop_reason=stop_reason, timestamp=1.0)
    decoded = roundtrip(message)
    assert decoded == message
    assert decoded.stop_reason is stop_reason


def test_list_of_agent_messages_decodes_back_to_the_right_classes() -> None:
    messages = mixed_messages()
    raw = msgspec.json.encode(messages)
    decoded = msgspec.json.decode(raw, type=list[AgentMessage])
    assert decoded == messages
    assert [type(m) for m in decoded] == [
        UserMessage,
        AssistantMessage,
        ToolResultMessage,
        ToolResultMessage,
        AssistantMessage,
    ]
    assert [type(b) for b in decoded[1].content] == [TextContent, ToolCall]


def test_agent_result_with_mixed_messages_keeps_message_classes() -> None:
    result = AgentResult(mixed_messages(), StopReason.STOP, Usage(3, 4), Cost(0.5))
    decoded = msgspec.json.decode(msgspec.json.encode(result), type=AgentResult)
    assert [type(m) for m in decoded.messages] == [type(m) for m in result.messages]
    assert decoded.usage == Usage(3, 4)
    assert decoded.cost == Cost(0.5)


def test_tags_appear_in_json_as_role_and_type() -> None:
    decoded = msgspec.json.decode(msgspec.json.encode(mixed_messages()))
    assert [m["role"] for m in decoded] == [
        "user",
        "assistant",
        "tool_result",
        "tool_result",
        "assistant",
    ]
    assert [b["type"] for b in decoded[1]["content"]] == ["text", "tool_call"]
    assert decoded[0]["content"] == [{"type": "text", "text": "what is the weather?"}]
    assert decoded[1]["content"][1] == {
        "type": "tool_call",
        "id": "call-1",
        "name": "weather",
        "arguments": {"city": "Oslo", "days": 2, "opts": {"x": [1, 2]}},
    }


def test_stop_reason_encodes_as_its_value() -> None:
    message = AssistantMessage([], stop_reason=StopReason.TOOL_USE, timestamp=1.0)
    assert msgspec.json.decode(msgspec.json.encode(message))["stop_reason"] == "tool_use"


def test_usage_adds_field_by_field() -> None:
    total = Usage(1, 2, 3, 4) + Usage(10, 20, 30, 40)
    assert total == Usage(11, 22, 33, 44)
    assert total.total_tokens == 33
    assert Usage() + Usage() == Usage()


def test_cost_adds_field_by_field() -> None:
    total = Cost(1.0, 0.25, 0.75) + Cost(0.5, 0.125, 0.375)
    assert total == Cost(1.5, 0.375, 1.125)
    assert Cost() + Cost() == Cost(0.0, 0.0, 0.0)


def test_usage_and_cost_refuse_to_add_other_types() -> None:
    with pytest.raises(TypeError):
        Usage(1) + Cost(1.0)  # type: ignore[operator]
    with pytest.raises(TypeError):
        Cost(1.0) + 1  # type: ignore[operator]


def test_usage_and_cost_default_to_zero() -> None:
    assert Usage() == Usage(0, 0, 0, 0)
    assert Cost() == Cost(0.0, 0.0, 0.0)


def test_agent_result_text_is_the_last_assistant_text() -> None:
    result = AgentResult(mixed_messages(), StopReason.STOP)
    assert result.text == "It is 3 degrees."


def test_agent_result_text_skips_trailing_non_assistant_messages() -> None:
    messages = [
        *mixed_messages()[:3],
        ToolResultMessage("call-9", [TextContent("late")]),
    ]
    assert AgentResult(messages, StopReason.LENGTH).text == "let me look"


def test_agent_result_text_joins_text_blocks_and_ignores_tool_calls() -> None:
    reply = AssistantMessage([TextContent("a"), ToolCall("1", "t"), TextContent("b")])
    assert AgentResult([reply], StopReason.STOP).text == "ab"


def test_agent_result_text_is_empty_without_assistant_messages() -> None:
    assert AgentResult([], StopReason.STOP).text == ""
    assert AgentResult([user_message("hi")], StopReason.ERROR).text == ""


def test_agent_result_defaults() -> None:
    result = AgentResult([], StopReason.STOP)
    assert result.usage == Usage()
    assert result.cost == Cost()
    assert result.error is None
    assert result.transfer_signal is None


def test_user_message_holds_one_text_block_stamped_now() -> None:
    before = time.time()
    message = user_message("hello")
    after = time.time()
    assert isinstance(message, UserMessage)
    assert message.content == [TextContent("hello")]
    assert before <= message.timestamp <= after


def test_assistant_message_defaults_and_helpers() -> None:
    message = AssistantMessage([TextContent("x"), ToolCall("1", "a"), ToolCall("2", "b")])
    assert message.stop_reason is StopReason.STOP
    assert message.usage == Usage()
    assert message.cost == Cost()
    assert [c.id for c in message.tool_calls] == ["1", "2"]
    assert message.text == "x"


def test_tool_result_message_is_not_an_error_by_default() -> None:
    assert ToolResultMessage("1", [TextContent("ok")]).is_error is False


def test_stop_reason_has_exactly_the_contract_members() -> None:
    assert {m.name for m in StopReason} == {
        "STOP",
        "LENGTH",
        "TOOL_USE",
        "ABORTED",
        "ERROR",
        "TRANSFER",
    }


def test_types_are_exported_from_the_top_level_package() -> None:
    for name in [
        "TextContent",
        "ToolCall",
        "UserMessage",
        "AssistantMessage",
        "ToolResultMessage",
        "AgentMessage",
        "AgentResult",
        "StopReason",
        "Usage",
        "Cost",
        "user_message",
    ]:
        assert hasattr(ao, name), name
    assert ao.AgentResult is AgentResult


def test_bad_nested_payload_raises_validation_error_naming_the_path() -> None:
    raw = b'[{"role": "user", "content": [{"type": "text", "text": 1}], "timestamp": 1.0}]'
    with pytest.raises(msgspec.ValidationError, match=r"\$\[0\]\.content\[0\]\.text"):
        msgspec.json.decode(raw, type=list[AgentMessage])


def test_unknown_role_raises_validation_error_naming_the_tag_path() -> None:
    raw = b'[{"role": "system", "content": []}]'
    with pytest.raises(msgspec.ValidationError, match=r"\$\[0\]\.role"):
        msgspec.json.decode(raw, type=list[AgentMessage])


def test_bad_stop_reason_raises_validation_error_naming_the_field() -> None:
    raw = b'{"messages": [], "stop_reason": "nope"}'
    with pytest.raises(msgspec.ValidationError, match=r"\$\.stop_reason"):
        msgspec.json.decode(raw, type=AgentResult)


def test_missing_required_field_raises_validation_error_naming_it() -> None:
    raw = b'{"role": "tool_result", "content": []}'
    with pytest.raises(msgspec.ValidationError, match="tool_call_id"):
        msgspec.json.decode(raw, type=AgentMessage)


def test_bad_usage_field_in_assistant_message_names_the_path() -> None:
    raw = (
        b'{"role": "assistant", "content": [], "usage": {"input_tokens": "many"}, "timestamp": 1.0}'
    )
    with pytest.raises(msgspec.ValidationError, match=r"\$\.usage\.input_tokens"):
        msgspec.json.decode(raw, type=AgentMessage)
