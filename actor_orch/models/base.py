"""What every model receives (`ModelRequest`), what it returns, and what a stream yields.

A model implements `complete(request) -> AssistantMessage`. It may also implement
`stream(request) -> Iterator[ModelStreamEvent]`: zero or more `TextDelta`s, as the text is
produced, then exactly one `FinalMessage` holding the whole reply (its text is the deltas
joined). `model_events` gives a stream for any model, falling back to `complete`.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from typing import Any, Protocol, runtime_checkable

import msgspec

from actor_orch.errors import StreamError
from actor_orch.models.settings import ModelSettings
from actor_orch.tools import ToolSpec
from actor_orch.types import AgentMessage, AssistantMessage, StopReason, TextContent

__all__ = [
    "FinalMessage",
    "Model",
    "ModelRequest",
    "ModelStreamEvent",
    "StreamingModel",
    "TextDelta",
    "as_assistant_message",
    "model_events",
    "split_words",
    "stream_message",
]


class ModelRequest(msgspec.Struct):
    """One model call: the conversation so far, the system prompt, tools, the output schema,
    and the merged `ModelSettings` (the model's own, then the agent's, then the call's)."""

    messages: list[AgentMessage]
    system_prompt: str = ""
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    settings: ModelSettings | None = None


class TextDelta(msgspec.Struct, frozen=True, tag="text_delta"):
    """A piece of the reply's text, in order, as the model produced it.

    Example:
        >>> events = list(stream_message(AssistantMessage([TextContent("a b")])))
        >>> events[:2], events[2].message.text
        ([TextDelta(text='a '), TextDelta(text='b')], 'a b')
    """

    text: str


class FinalMessage(msgspec.Struct, frozen=True, tag="final_message"):
    """The last event of a stream: the complete reply (text, tool calls, stop reason, usage)."""

    message: AssistantMessage


ModelStreamEvent = TextDelta | FinalMessage


@runtime_checkable
class Model(Protocol):
    """A synchronous chat model. Raise an `AgentError` for failures the supervisor should see;
    any other exception reaches the caller as `StreamError`."""

    def complete(self, request: ModelRequest) -> AssistantMessage: ...


@runtime_checkable
class StreamingModel(Model, Protocol):
    """A model that can also stream its reply (see the module docstring for the contract)."""

    def stream(self, request: ModelRequest) -> Iterator[ModelStreamEvent]: ...


def as_assistant_message(reply: object, *, source: str) -> AssistantMessage:
    """Accept a model reply given as `str` or `AssistantMessage`; anything else is a TypeError."""
    if isinstance(reply, AssistantMessage):
        return reply
    if isinstance(reply, str):
        return AssistantMessage([TextContent(reply)], StopReason.STOP)
    raise TypeError(f"{source} must return str or AssistantMessage, got {type(reply).__name__}")


# A word and the whitespace after it: joined back, the pieces give the text exactly.
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")


def split_words(text: str) -> list[str]:
    """`text` cut into words with their trailing whitespace (`"".join` gives `text` back).

    Example:
        >>> split_words("stream  me\\nnow")
        ['stream  ', 'me\\n', 'now']
    """
    return [piece for piece in _WORD_BOUNDARY.split(text) if piece]


def stream_message(message: AssistantMessage) -> Iterator[ModelStreamEvent]:
    """The stream of an already complete reply: its text word by word, then the reply."""
    for word in split_words(message.text):
        yield TextDelta(word)
    yield FinalMessage(message)


def model_events(model: Model, request: ModelRequest) -> Generator[ModelStreamEvent, None, None]:
    """Stream `request` with `model.stream` when the model has one, else with `complete`
    (the whole text as one delta). Raises `StreamError` when a stream breaks the contract
    (an event of another type, or no `FinalMessage` at its end)."""
    stream = getattr(model, "stream", None)
    if not callable(stream):
        reply = model.complete(request)
        if not isinstance(reply, AssistantMessage):
            raise StreamError(
                f"model {model!r} returned {type(reply).__name__}, expected AssistantMessage"
            )
        if reply.text:
            yield TextDelta(reply.text)
        yield FinalMessage(reply)
        return
    events = stream(request)
    try:
        for event in events:
            if isinstance(event, FinalMessage):
                if not isinstance(event.message, AssistantMessage):
                    raise StreamError(f"model {model!r} streamed a FinalMessage without a reply")
                yield event
                return
            if not isinstance(event, TextDelta):
                raise StreamError(
                    f"model {model!r} streamed {type(event).__name__}, "
                    "expected TextDelta or FinalMessage"
                )
            yield event
        raise StreamError(f"model {model!r} ended its stream without a FinalMessage")
    finally:
        close = getattr(events, "close", None)
        if callable(close):  # a generator releases its connection now, not at garbage collection
            close()
