"""OpenTelemetry tracing (API §6a), following the GenAI semantic conventions.

`pip install 'actor_orch[otel]'`, then `instrument()`: every request of a spawned agent and
every step becomes an `invoke_agent {agent}` span, every model call a `chat {model}` span
(`gen_ai.request.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
`gen_ai.response.finish_reasons`), every tool call an `execute_tool {tool}` span. Spans are
parented across threads: a request carries its sender's context to the agent's actor, a step
its caller's context to the pool worker, a tool thread copies its prompt's context.
`uninstrument()` undoes it. `import actor_orch` never imports OpenTelemetry.

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel
    >>> exporter = InMemorySpanExporter()
    >>> provider = TracerProvider()
    >>> provider.add_span_processor(SimpleSpanProcessor(exporter))
    >>> instrument(tracer_provider=provider)
    >>> with AgentOrchestrator() as orch:
    ...     orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
    ...     _ = orch.spawn("echo").send_message("hi", timeout=5)
    >>> uninstrument()
    >>> sorted(span.name for span in exporter.get_finished_spans())
    ['chat EchoModel', 'invoke_agent echo']
"""

from __future__ import annotations

from typing import cast

from actor_orch import _trace
from actor_orch.types import AssistantMessage

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "actor_orch.otel needs OpenTelemetry: pip install 'actor_orch[otel]'"
    ) from err

__all__ = ["instrument", "uninstrument"]

_SCOPE = "actor_orch"
_SYSTEM = "actor_orch"


class _Scope:
    """A started span and the token that made it current."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: object) -> None:
        self.span = span
        self.token = token


class _OtelHooks:
    """`_trace.TraceHooks` on an OpenTelemetry tracer.

    Spans are started with `Tracer.start_span` and made current with one `attach`: no
    context-manager layers, since the SDK's own work (about 12 us a span) is most of the cost.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def capture(self) -> object:
        return otel_context.get_current()

    def attach(self, context: object) -> object:
        if context is None:
            return None
        return otel_context.attach(context)  # type: ignore[arg-type]

    def detach(self, token: object) -> None:
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def _start(
        self, name: str, kind: SpanKind, attributes: dict[str, str], parent: object = None
    ) -> _Scope:
        context = cast("otel_context.Context | None", parent)
        span = self._tracer.start_span(
            name,
            context,
            kind,
            attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _Scope(span, otel_context.attach(trace.set_span_in_context(span, context)))

    def start_agent(
        self,
        agent: str,
        *,
        session: str | None = None,
        task_id: str | None = None,
        parent: object = None,
    ) -> object:
        attributes: dict[str, str] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "gen_ai.system": _SYSTEM,
        }
        if session is not None:
            attributes["gen_ai.conversation.id"] = session
        if task_id is not None:
            attributes["actor_orch.task_id"] = task_id
        return self._start(f"invoke_agent {agent}", SpanKind.INTERNAL, attributes, parent)

    def start_chat(self, model: str) -> object:
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
        return self._start(f"chat {model}", SpanKind.CLIENT, attributes)

    def start_tool(self, tool: str, call_id: str) -> object:
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": call_id,
        }
        return self._start(f"execute_tool {tool}", SpanKind.INTERNAL, attributes)

    def end_chat(self, scope: object, reply: AssistantMessage) -> None:
        assert isinstance(scope, _Scope)
        scope.span.set_attributes(
            {
                "gen_ai.usage.input_tokens": reply.usage.input_tokens,
                "gen_ai.usage.output_tokens": reply.usage.output_tokens,
                "gen_ai.response.finish_reasons": (reply.stop_reason.value,),
            }
        )
        self.end(scope)

    def end(self, scope: object, error: BaseException | str | None = None) -> None:
        assert isinstance(scope, _Scope)
        otel_context.detach(scope.token)  # type: ignore[arg-type]
        span = scope.span
        if error is not None:
            if isinstance(error, BaseException):
                span.record_exception(error)
                span.set_attribute("error.type", type(error).__name__)
            else:  # a failure that is not an exception: `error` is its type
                span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()


def instrument(tracer_provider: trace.TracerProvider | None = None) -> None:
    """Emit spans for agents, model calls and tool calls from now on.

    `tracer_provider`: where spans go; None uses the global provider. Calling it again
    replaces the provider.
    """
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    _trace.install(_OtelHooks(provider.get_tracer(_SCOPE)))


def uninstrument() -> None:
    """Stop emitting spans (requests already running finish their spans)."""
    _trace.install(None)
