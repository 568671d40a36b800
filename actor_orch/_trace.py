"""The seam tracing plugs into: `None` until `actor_orch.otel.instrument()` installs hooks.

Call sites read `HOOKS` once and do nothing more when it is `None`, so an application that
never instruments pays one attribute read per request, model call and tool call. The hooks
are installed by `actor_orch.otel`; this module imports nothing from OpenTelemetry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from actor_orch.types import AssistantMessage

__all__ = ["HOOKS", "TraceHooks", "install"]


class TraceHooks(Protocol):
    """What a tracer provides to the runtime (see `actor_orch.otel`).

    A span is started by a `start_*` method, which also makes it current on this thread, and
    ended, on the same thread, by `end` (or `end_chat`) with the scope it returned.
    """

    def capture(self) -> object:
        """The caller's tracing context, to carry to the thread that does the work."""
        ...

    def attach(self, context: object) -> object:
        """Make `context` current on this thread; returns a token for `detach`."""
        ...

    def detach(self, token: object) -> None: ...

    def start_agent(
        self,
        agent: str,
        *,
        session: str | None = None,
        task_id: str | None = None,
        parent: object = None,
    ) -> object:
        """Start the `invoke_agent {agent}` span of one request or one step, under `parent`
        (a context from `capture`; None: this thread's current one)."""
        ...

    def start_chat(self, model: str) -> object:
        """Start the `chat {model}` span of one model call."""
        ...

    def start_tool(self, tool: str, call_id: str) -> object:
        """Start the `execute_tool {tool}` span of one tool call."""
        ...

    def end_chat(self, scope: object, reply: AssistantMessage) -> None:
        """End a `chat` span, recording the call's usage and finish reason."""
        ...

    def end(self, scope: object, error: BaseException | str | None = None) -> None:
        """End a span; `error` marks it failed: an exception, or the `error.type` of a
        failure that is not one (`"tool_error"`, `"step_failed"`)."""
        ...


HOOKS: TraceHooks | None = None


def install(hooks: TraceHooks | None) -> None:
    """Install (or, with None, remove) the tracing hooks."""
    global HOOKS
    HOOKS = hooks
