"""The seam tracing plugs into: `None` until `actor_orch.otel.instrument()` installs hooks.

Call sites read `HOOKS` once and do nothing more when it is `None`, so an application that
never instruments pays one attribute read per request, model call and tool call. The hooks
are installed by `actor_orch.otel`; this module imports nothing from OpenTelemetry.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from actor_orch.types import AssistantMessage

__all__ = ["HOOKS", "TraceHooks", "install"]


class TraceHooks(Protocol):
    """What a tracer provides to the runtime (see `actor_orch.otel`)."""

    def capture(self) -> object:
        """The caller's tracing context, to carry to the thread that does the work."""
        ...

    def attach(self, context: object) -> object:
        """Make `context` current on this thread; returns a token for `detach`."""
        ...

    def detach(self, token: object) -> None: ...

    def agent(
        self, agent: str, *, session: str | None = None, task_id: str | None = None
    ) -> AbstractContextManager[Any]:
        """The `invoke_agent {agent}` span of one request or one step."""
        ...

    def chat(self, model: str) -> AbstractContextManager[Any]:
        """The `chat {model}` span of one model call."""
        ...

    def chat_result(self, span: Any, reply: AssistantMessage) -> None:
        """Record a model call's usage and finish reason on its span."""
        ...

    def tool(self, tool: str, call_id: str) -> AbstractContextManager[Any]:
        """The `execute_tool {tool}` span of one tool call."""
        ...

    def tool_result(self, span: Any, is_error: bool) -> None: ...


HOOKS: TraceHooks | None = None


def install(hooks: TraceHooks | None) -> None:
    """Install (or, with None, remove) the tracing hooks."""
    global HOOKS
    HOOKS = hooks
