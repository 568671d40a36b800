"""Messages, results and usage: the data every part of actor_orch speaks.

Everything here is a `msgspec.Struct` and round-trips through `msgspec.json` exactly. Content
blocks are a tagged union on `"type"`, messages a tagged union on `"role"`, so a list of
`AgentMessage` decodes back to the right classes.

Example:
    >>> import msgspec
    >>> msg = user_message("hello")
    >>> raw = msgspec.json.encode([msg])
    >>> msgspec.json.decode(raw, type=list[AgentMessage])[0].content
    [TextContent(text='hello')]
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = [
    "AgentMessage",
    "AgentResult",
    "AgentStatus",
    "AssistantMessage",
    "ContentBlock",
    "Cost",
    "StopReason",
    "TextContent",
    "ToolCall",
    "ToolResultMessage",
    "Usage",
    "UserMessage",
    "check_messages",
    "text_of",
    "user_message",
]


class StopReason(enum.Enum):
    """Why a model turn (or a whole run) ended."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_USE = "tool_use"
    ABORTED = "aborted"
    ERROR = "error"
    TRANSFER = "transfer"


class AgentStatus(enum.Enum):
    """Life state of an orchestrated agent handle."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TextContent(msgspec.Struct, tag="text"):
    """A block of text."""

    text: str


class ToolCall(msgspec.Struct, tag="tool_call", omit_defaults=True):
    """The model asks for tool `name` with JSON `arguments`; `id` pairs it with its result.

    `raw_arguments` is set only when the model's argument text was not a JSON object
    (truncated, malformed, an array...): it keeps that text exactly, so the call goes back to
    the server as the model wrote it, and `arguments` is then `{}`. The agent answers such a
    call with an error tool result naming the problem instead of running the tool.
    """

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    raw_arguments: str | None = None


ContentBlock = TextContent | ToolCall


class Usage(msgspec.Struct):
    """Token counts; `a + b` adds field by field."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )


class Cost(msgspec.Struct):
    """Money spent, in the provider's currency; `a + b` adds field by field."""

    total: float = 0.0
    input: float = 0.0
    output: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.total + other.total, self.input + other.input, self.output + other.output)


class UserMessage(msgspec.Struct, tag="user", tag_field="role"):
    """A message from the user; `timestamp` is seconds since the epoch."""

    content: list[ContentBlock]
    timestamp: float = msgspec.field(default_factory=time.time)


class AssistantMessage(msgspec.Struct, tag="assistant", tag_field="role"):
    """A model's reply: text and/or tool calls, why it stopped, what it used and cost."""

    content: list[ContentBlock]
    stop_reason: StopReason = StopReason.STOP
    usage: Usage = msgspec.field(default_factory=Usage)
    timestamp: float = msgspec.field(default_factory=time.time)
    cost: Cost = msgspec.field(default_factory=Cost)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [block for block in self.content if isinstance(block, ToolCall)]

    @property
    def text(self) -> str:
        return text_of(self.content)


class ToolResultMessage(msgspec.Struct, tag="tool_result", tag_field="role"):
    """The result of one tool call; `is_error` when the tool failed."""

    tool_call_id: str
    content: list[ContentBlock]
    is_error: bool = False


AgentMessage = UserMessage | AssistantMessage | ToolResultMessage


class AgentResult(msgspec.Struct):
    """The outcome of one agent run: the messages it added, why it stopped, usage and cost.

    Example:
        >>> r = AgentResult([AssistantMessage([TextContent("hi")])], StopReason.STOP)
        >>> r.text
        'hi'
    """

    messages: list[AgentMessage]
    stop_reason: StopReason
    usage: Usage = msgspec.field(default_factory=Usage)
    cost: Cost = msgspec.field(default_factory=Cost)
    error: str | None = None
    transfer_signal: str | None = None
    output: Any = None
    """The typed value of the final reply when the request asked for an `output_type`."""

    @property
    def text(self) -> str:
        """Text of the last assistant message (`""` if there is none)."""
        for message in reversed(self.messages):
            if isinstance(message, AssistantMessage):
                return message.text
        return ""

    @property
    def turn_limit_reached(self) -> bool:
        """Whether the run stopped because `max_turns` ran out while the model still asked for
        tools: `stop_reason` is `LENGTH` and the last message is a tool result.

        A reply cut by the model's token limit is also `LENGTH`, but it ends the run with
        that reply (an `AssistantMessage` whose `stop_reason` is `LENGTH`, its text kept):
        `turn_limit_reached` is then `False` and `truncated` is `True`.

        Example:
            >>> cut = AssistantMessage([TextContent("Once upon a")], StopReason.LENGTH)
            >>> r = AgentResult([cut], StopReason.LENGTH)
            >>> r.turn_limit_reached, r.truncated, r.text
            (False, True, 'Once upon a')
        """
        return (
            self.stop_reason is StopReason.LENGTH
            and bool(self.messages)
            and isinstance(self.messages[-1], ToolResultMessage)
        )

    @property
    def truncated(self) -> bool:
        """Whether the final reply was cut by the model's token limit (`max_tokens`)."""
        return (
            self.stop_reason is StopReason.LENGTH
            and bool(self.messages)
            and isinstance(self.messages[-1], AssistantMessage)
            and self.messages[-1].stop_reason is StopReason.LENGTH
        )


def text_of(content: list[ContentBlock]) -> str:
    """Concatenate the text blocks of `content`."""
    return "".join(block.text for block in content if isinstance(block, TextContent))


def check_messages(messages: Sequence[AgentMessage]) -> list[AgentMessage]:
    """`messages` as a list, or a TypeError naming the first item that is not an AgentMessage."""
    if isinstance(messages, str | bytes):
        raise TypeError("expected a list of messages, got a string; wrap it with user_message()")
    checked = list(messages)
    for index, message in enumerate(checked):
        if not isinstance(message, UserMessage | AssistantMessage | ToolResultMessage):
            raise TypeError(
                f"messages[{index}] must be an AgentMessage, got {type(message).__name__}"
            )
    return checked


def user_message(text: str) -> UserMessage:
    """A `UserMessage` holding one text block, stamped now."""
    return UserMessage([TextContent(text)])
