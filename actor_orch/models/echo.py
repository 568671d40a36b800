"""The offline default model: it repeats the last user message."""

from __future__ import annotations

from actor_orch.models.base import ModelRequest
from actor_orch.types import AssistantMessage, StopReason, TextContent, UserMessage, text_of

__all__ = ["EchoModel"]


class EchoModel:
    """Replies with the text of the last user message; needs no network, never fails.

    Example:
        >>> from actor_orch.types import user_message
        >>> EchoModel().complete(ModelRequest([user_message("ping")])).text
        'ping'
    """

    def complete(self, request: ModelRequest) -> AssistantMessage:
        for message in reversed(request.messages):
            if isinstance(message, UserMessage):
                return AssistantMessage([TextContent(text_of(message.content))], StopReason.STOP)
        return AssistantMessage([TextContent("")], StopReason.STOP)

    def __repr__(self) -> str:
        return "EchoModel()"
