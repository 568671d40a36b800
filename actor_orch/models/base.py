"""What every model receives (`ModelRequest`) and the one method it implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec

from actor_orch.tools import ToolSpec
from actor_orch.types import AgentMessage, AssistantMessage, StopReason, TextContent

__all__ = ["Model", "ModelRequest", "as_assistant_message"]


class ModelRequest(msgspec.Struct):
    """One model call: the conversation so far, the system prompt, tools and output schema."""

    messages: list[AgentMessage]
    system_prompt: str = ""
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    output_schema: dict[str, Any] | None = None


@runtime_checkable
class Model(Protocol):
    """A synchronous chat model. Raise an `AgentError` for failures the supervisor should see;
    any other exception reaches the caller as `StreamError`."""

    def complete(self, request: ModelRequest) -> AssistantMessage: ...


def as_assistant_message(reply: object, *, source: str) -> AssistantMessage:
    """Accept a model reply given as `str` or `AssistantMessage`; anything else is a TypeError."""
    if isinstance(reply, AssistantMessage):
        return reply
    if isinstance(reply, str):
        return AssistantMessage([TextContent(reply)], StopReason.STOP)
    raise TypeError(f"{source} must return str or AssistantMessage, got {type(reply).__name__}")
