"""The offline default model: it repeats the last user message."""

from __future__ import annotations

from collections.abc import Iterator

from actor_orch.models.base import ModelRequest, ModelStreamEvent, stream_message
from actor_orch.types import AssistantMessage, StopReason, TextContent, UserMessage, text_of

__all__ = ["EchoModel"]


class EchoModel:
    """Replies with the text of the last user message; needs no network, never fails.
    `stream` yields that text word by word.

    Example:
        >>> from actor_orch.types import user_message
        >>> EchoModel().complete(ModelRequest([user_message("ping")])).text
        'ping'
        >>> events = EchoModel().stream(ModelRequest([user_message("a b")]))
        >>> [getattr(event, "text", "end") for event in events]
        ['a ', 'b', 'end']
    """

    def complete(self, request: ModelRequest) -> AssistantMessage:
        for message in reversed(request.messages):
            if isinstance(message, UserMessage):
                return AssistantMessage([TextContent(text_of(message.content))], StopReason.STOP)
        return AssistantMessage([TextContent("")], StopReason.STOP)

    def stream(self, request: ModelRequest) -> Iterator[ModelStreamEvent]:
        return stream_message(self.complete(request))

    def __repr__(self) -> str:
        return "EchoModel()"
