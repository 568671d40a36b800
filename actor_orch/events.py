"""Lifecycle events and their synchronous fan-out to callbacks.

Events are msgspec Structs tagged on `"event"`, so a log of them encodes to JSON and decodes
back as `Event`. Callbacks run synchronously on the thread that emits; a callback that raises
is logged and never breaks the run.

Example:
    >>> seen = []
    >>> bus = EventBus()
    >>> unsubscribe = bus.subscribe(seen.append)
    >>> bus.emit(AgentSpawned("writer"))
    >>> unsubscribe()
    >>> bus.emit(AgentSpawned("ignored"))
    >>> seen
    [AgentSpawned(name='writer')]
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import msgspec
from loguru import logger

from actor_orch.supervisor import SupervisorAction
from actor_orch.types import AgentStatus, StopReason, Usage

__all__ = [
    "AgentFailed",
    "AgentRestarted",
    "AgentSpawned",
    "AgentStopped",
    "Event",
    "EventBus",
    "EventCallback",
    "ModelCallFinished",
    "StepFinished",
    "StepStarted",
    "ToolCallFinished",
    "deliver",
]


class AgentSpawned(msgspec.Struct, tag="agent_spawned", tag_field="event"):
    """An orchestrated agent started."""

    name: str


class AgentFailed(msgspec.Struct, tag="agent_failed", tag_field="event"):
    """A request failed; `action` is what the supervisor did (after the restart budget)."""

    name: str
    error: str
    action: SupervisorAction


class AgentRestarted(msgspec.Struct, tag="agent_restarted", tag_field="event"):
    """The agent was rebuilt from its factory; `attempt` counts restarts in the current budget."""

    name: str
    attempt: int


class AgentStopped(msgspec.Struct, tag="agent_stopped", tag_field="event"):
    """An orchestrated agent ended with `status`."""

    name: str
    status: AgentStatus


class StepStarted(msgspec.Struct, tag="step_started", tag_field="event", omit_defaults=True):
    """A parallel step began on `agent`; `parent_session_id` is set for delegated steps."""

    task_id: str
    agent: str
    parent_session_id: str | None = None


class StepFinished(msgspec.Struct, tag="step_finished", tag_field="event", omit_defaults=True):
    """A parallel step ended; `duration_s` is its wall time in seconds; `parent_session_id`
    is set for delegated steps."""

    task_id: str
    agent: str
    success: bool
    duration_s: float
    parent_session_id: str | None = None


class ModelCallFinished(
    msgspec.Struct, tag="model_call_finished", tag_field="event", omit_defaults=True
):
    """One model call ended (retries of the call included); `error` is set when it failed."""

    agent: str
    task_id: str | None
    duration_s: float
    usage: Usage
    stop_reason: StopReason | None
    error: str | None = None


class ToolCallFinished(msgspec.Struct, tag="tool_call_finished", tag_field="event"):
    """One tool call ended; `is_error` when its result is an error result."""

    agent: str
    task_id: str | None
    tool: str
    duration_s: float
    is_error: bool


Event = (
    AgentSpawned
    | AgentFailed
    | AgentRestarted
    | AgentStopped
    | StepStarted
    | StepFinished
    | ModelCallFinished
    | ToolCallFinished
)
EventCallback = Callable[[Event], object]


def deliver(callback: EventCallback | None, event: Event) -> None:
    """Call `callback(event)`; an exception from it is logged, never raised."""
    if callback is None:
        return
    try:
        callback(event)
    except BaseException:  # user code: contained whatever it raises (SystemExit included)
        logger.opt(exception=True).error("event callback {!r} raised on {!r}", callback, event)


class EventBus:
    """Subscribers of one orchestrator. Thread-safe; emitting takes no lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: tuple[EventCallback, ...] = ()
        # Whether anybody listens: producers skip building events nobody would receive.
        self.live = False

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Deliver every later event to `callback`; returns a function that unsubscribes."""
        if not callable(callback):
            raise TypeError(f"subscribe() needs a callable, got {callback!r}")
        token = _Subscription(callback)
        with self._lock:
            self._callbacks = (*self._callbacks, token)
            self.live = True

        def unsubscribe() -> None:
            with self._lock:
                self._callbacks = tuple(c for c in self._callbacks if c is not token)
                self.live = bool(self._callbacks)

        return unsubscribe

    def emit(self, event: Event) -> None:
        for callback in self._callbacks:
            deliver(callback, event)

    __call__ = emit  # a bus is an event callback (with `live`, which producers may check)

    def __len__(self) -> int:
        return len(self._callbacks)

    def __repr__(self) -> str:
        return f"<EventBus subscribers={len(self._callbacks)}>"


class _Subscription:
    """Wraps a callback so the same function subscribed twice unsubscribes one at a time."""

    __slots__ = ("callback",)

    def __init__(self, callback: EventCallback) -> None:
        self.callback = callback

    def __call__(self, event: Event) -> object:
        return self.callback(event)

    def __repr__(self) -> str:
        return repr(self.callback)
