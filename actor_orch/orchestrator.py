"""The orchestrator: a registry of agents and the supervised actors they are spawned into.

Each spawned agent is a Pykka `ThreadingActor` owning an `Agent`. Its handle owns a stdlib
`concurrent.futures.Future` per request, so every accepted request is answered exactly once,
even when the actor is cancelled, stopped by its supervisor or shut down. The mailbox is bounded
by `channel_buffer`: a sender waits (up to its timeout) while it is full.

Example:
    >>> from actor_orch import AgentOptions, DefaultSupervisor, EchoModel
    >>> with AgentOrchestrator(supervisor=DefaultSupervisor()) as orch:
    ...     orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
    ...     handle = orch.spawn("echo")
    ...     handle.send_message("hi", timeout=5).text
    'hi'
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pykka
from loguru import logger

from actor_orch.agent import Agent, AgentOptions
from actor_orch.errors import Aborted, AgentError, PluginError, RequestTimeout, StreamError
from actor_orch.events import AgentRestarted, AgentSpawned, AgentStopped, EventBus, EventCallback
from actor_orch.supervisor import (
    AgentFailure,
    Decision,
    SupervisorActor,
    SupervisorPolicy,
    resolve_restart_budget,
    supervise,
)
from actor_orch.types import (
    AgentMessage,
    AgentResult,
    AgentStatus,
    StopReason,
    SupervisorAction,
    check_messages,
    user_message,
)

__all__ = ["AgentOrchestrator", "OptionsFactory", "OrchestratedHandle", "build_options"]

OptionsFactory = Callable[[], AgentOptions]

_ORCHESTRATOR = "orchestrator"
# How long an agent waits for its supervisor's decision before stopping itself.
_SUPERVISOR_TIMEOUT_S = 30.0
# Slack after a shutdown deadline for threads to notice they were told to end.
_SHUTDOWN_GRACE_S = 0.5


def _channel_closed() -> PluginError:
    return PluginError(_ORCHESTRATOR, "agent channel closed")


def _start_request(future: concurrent.futures.Future[AgentResult]) -> bool:
    """Mark `future` running; False when it was answered or cancelled already."""
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:  # already finished: answered by cancel() or shutdown()
        return False


def _settle(
    future: concurrent.futures.Future[AgentResult],
    result: AgentResult | None = None,
    error: BaseException | None = None,
) -> None:
    """Answer `future` unless it was answered already (the first answer wins)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except concurrent.futures.InvalidStateError:
        pass


def _empty_result() -> AgentResult:
    return AgentResult([], StopReason.STOP)


def build_options(name: str, factory: OptionsFactory) -> AgentOptions:
    """Call `factory` for agent `name`; any failure is a `PluginError` naming the agent."""
    try:
        options = factory()
    except Exception as err:
        raise PluginError(
            _ORCHESTRATOR, f"options factory of agent '{name}' raised: {err!r}"
        ) from err
    if not isinstance(options, AgentOptions):
        raise PluginError(
            _ORCHESTRATOR,
            f"options factory of agent '{name}' returned {type(options).__name__}, "
            "expected AgentOptions",
        )
    if options.name is None:
        options = options.replace(name=name)
    return options


class _Request:
    __slots__ = ("future", "messages")

    def __init__(self, messages: list[AgentMessage]) -> None:
        self.messages = messages
        self.future: concurrent.futures.Future[AgentResult] = concurrent.futures.Future()


# Told to the actor by await_result(): everything queued before it is served, then it ends.
_DRAIN = object()


@dataclasses.dataclass
class _Entry:
    factory: OptionsFactory
    parent: str | None
    children: list[str]
    max_restarts: int | None


class OrchestratedHandle:
    """A running agent: send it messages, await its end, cancel it.

    Created by `AgentOrchestrator.spawn`. Thread-safe: any number of threads may send at once;
    requests are served one at a time, in arrival order.

    Example:
        >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel
        >>> orch = AgentOrchestrator()
        >>> orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
        >>> handle = orch.spawn("echo")
        >>> future = handle.send_message_async("one")
        >>> future.result(timeout=5).text
        'one'
        >>> handle.await_result(timeout=5).text
        'one'
        >>> handle.status()
        <AgentStatus.COMPLETED: 'completed'>
        >>> orch.shutdown()
    """

    def __init__(
        self,
        name: str,
        factory: OptionsFactory,
        options: AgentOptions,
        *,
        policy: SupervisorPolicy | None,
        budget: int,
        channel_buffer: int,
        supervisor: pykka.ActorRef[SupervisorActor],
        bus: EventBus,
        on_cancel: Callable[[OrchestratedHandle], None],
    ) -> None:
        self._name = name
        self._factory = factory
        self._policy = policy
        self._budget = budget
        self._buffer = channel_buffer
        self._supervisor = supervisor
        self._bus = bus
        self._on_cancel = on_cancel
        self._log = logger.bind(agent=name)
        self._agent = Agent(options)
        self._cond = threading.Condition()
        self._queued = 0  # accepted requests the actor has not taken yet: the mailbox fill
        self._outstanding: set[_Request] = set()  # accepted and not yet answered
        self._closed = False  # no new requests (await_result, shutdown, or ended)
        self._status = AgentStatus.RUNNING
        self._ended = threading.Event()
        self._final: concurrent.futures.Future[AgentResult] = concurrent.futures.Future()
        self._last_result: AgentResult | None = None
        self._restarts = 0
        self._consecutive_restarts = 0
        self.thread: threading.Thread | None = None
        self._actor = _AgentActor.start(self)

    # -- public API ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def restarts(self) -> int:
        """Total restarts since spawn (counted before the failed request is answered)."""
        return self._restarts

    def status(self) -> AgentStatus:
        return self._status

    def is_done(self) -> bool:
        return self._status is not AgentStatus.RUNNING

    def send_message(self, text: str, *, timeout: float | None = None) -> AgentResult:
        """Send one user message and wait for the result.

        `timeout` (seconds) bounds the whole call, mailbox wait included; past it
        `RequestTimeout` is raised (a request not yet started is then withdrawn). Errors of the
        agent are raised as the `AgentError` it failed with.
        """
        return self.send_messages([user_message(text)], timeout=timeout)

    def send_messages(
        self, messages: Sequence[AgentMessage], *, timeout: float | None = None
    ) -> AgentResult:
        """Like `send_message`, with a list of messages."""
        deadline = None if timeout is None else time.monotonic() + timeout
        future = self.send_messages_async(messages, timeout=timeout)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return future.result(remaining)
        except concurrent.futures.CancelledError:
            raise Aborted("request cancelled") from None
        except TimeoutError:
            if not future.done():
                future.cancel()  # withdraw it if the actor has not started it yet
                raise RequestTimeout(
                    f"agent '{self._name}' did not answer within {timeout:g}s"
                ) from None
            return future.result(0)

    def send_message_async(
        self, text: str, *, timeout: float | None = None
    ) -> concurrent.futures.Future[AgentResult]:
        """Queue one user message; returns its `Future`. `timeout` bounds only the wait for
        mailbox space (then `RequestTimeout`)."""
        return self.send_messages_async([user_message(text)], timeout=timeout)

    def send_messages_async(
        self, messages: Sequence[AgentMessage], *, timeout: float | None = None
    ) -> concurrent.futures.Future[AgentResult]:
        """Queue messages as one request; returns its `Future`. See `send_message_async`."""
        checked = check_messages(messages)
        request = _Request(checked)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed and self._queued >= self._buffer:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RequestTimeout(
                        f"mailbox of agent '{self._name}' stayed full for {timeout:g}s"
                    )
                self._cond.wait(remaining)
            if self._closed:
                raise _channel_closed()
            # Told under the lock, so a request can never land behind the drain marker.
            try:
                self._actor.tell(request)
            except pykka.ActorDeadError:  # the actor died and is still reporting it
                raise _channel_closed() from None
            self._queued += 1
            self._outstanding.add(request)
        return request.future

    def await_result(self, timeout: float | None = None) -> AgentResult:
        """Close the handle to new requests, let queued ones finish, return the last result.

        Returns the last successful result (an empty `STOP` result if there was none). Raises
        `PluginError` when the supervisor stopped the agent, `Aborted` after `cancel()`, and
        `RequestTimeout` when `timeout` seconds pass first (the agent keeps draining).
        """
        self._close()
        try:
            return self._final.result(timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"agent '{self._name}' did not finish within {timeout:g}s"
            ) from None

    def cancel(self) -> None:
        """Answer the in-flight and every queued request with `Aborted` now, end as CANCELLED.

        Cascades to the handles of this agent's children (and theirs) from the same
        orchestrator. A model call already running finishes on its thread; its result is
        discarded.
        """
        self._end(AgentStatus.CANCELLED, Aborted(f"agent '{self._name}' cancelled"))
        self._on_cancel(self)

    def __repr__(self) -> str:
        return (
            f"<OrchestratedHandle {self._name!r} status={self._status.name} "
            f"restarts={self._restarts} queued={self._queued}>"
        )

    # -- internals shared with the actor and the orchestrator -----------------------------

    def _close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()  # senders waiting for space now get "channel closed"
            self._actor.tell(_DRAIN)

    def _end(self, status: AgentStatus, error: AgentError | None) -> bool:
        """End the handle once: settle the final future, answer what is left, stop the actor."""
        with self._cond:
            if self._status is not AgentStatus.RUNNING:
                return False
            self._status = status
            self._closed = True
            leftovers = list(self._outstanding)
            self._outstanding.clear()
            self._cond.notify_all()
        self._ended.set()
        self._agent.abort()
        leftover_error = error if error is not None else _channel_closed()
        for request in leftovers:
            _settle(request.future, error=leftover_error)
        _settle(self._final, self._last_result or _empty_result(), error)
        log = self._log.warning if status is AgentStatus.FAILED else self._log.debug
        log("agent {} ended: {}", self._name, status.name)
        self._bus.emit(AgentStopped(self._name, status))
        with contextlib.suppress(pykka.ActorDeadError):
            self._actor.stop(block=False)
        return True

    def _join(self, timeout: float) -> None:
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(max(0.0, timeout))

    # -- the actor's side -------------------------------------------------------------------

    def _take(self, request: _Request) -> bool:
        """The actor dequeued `request`: free its mailbox slot; False if it needs no work."""
        with self._cond:
            self._queued -= 1
            self._cond.notify()
            if self._closed and self._status is not AgentStatus.RUNNING:
                return False
        if _start_request(request.future):
            return True
        with self._cond:  # withdrawn by its sender (timeout or Future.cancel())
            self._outstanding.discard(request)
        return False

    def _serve(self, request: _Request) -> None:
        agent = self._agent
        try:
            result = agent.prompt(request.messages)
        except AgentError as err:
            self._failed(request, err)
            return
        except BaseException as err:  # never let anything reach Pykka (it would stop_all)
            self._failed(request, StreamError(err))
            return
        with self._cond:
            self._outstanding.discard(request)
            if self._status is AgentStatus.RUNNING:
                self._last_result = result
                self._consecutive_restarts = 0
        _settle(request.future, result)

    def _failed(self, request: _Request, error: AgentError) -> None:
        if self._ended.is_set():
            _settle(request.future, error=error)
            return
        decision = self._ask_supervisor(error)
        with self._cond:
            self._outstanding.discard(request)
        if (
            self._ended.is_set() or decision.action is SupervisorAction.ESCALATE
        ):  # cancelled or shut down while the supervisor decided
            _settle(request.future, error=error)
        elif decision.action is SupervisorAction.RESTART:
            self._restarts += 1
            self._consecutive_restarts = decision.attempt
            self._bus.emit(AgentRestarted(self._name, decision.attempt))
            _settle(request.future, error=error)
            self._restart(decision)
        else:
            self._end(
                AgentStatus.FAILED,
                PluginError(_ORCHESTRATOR, f"agent '{self._name}' stopped by supervisor"),
            )
            _settle(request.future, error=error)

    def _ask_supervisor(self, error: AgentError) -> Decision:
        failure = AgentFailure(
            self._name, error, self._consecutive_restarts, self._budget, self._policy
        )
        try:
            decision: Decision = self._supervisor.ask(
                failure, block=True, timeout=_SUPERVISOR_TIMEOUT_S
            )
        except pykka.ActorDeadError:  # supervisor already stopped (late in shutdown)
            return supervise(failure, self._bus)
        except pykka.Timeout:
            self._log.error("supervisor gave no decision in {}s; stopping", _SUPERVISOR_TIMEOUT_S)
            return Decision(SupervisorAction.STOP, self._consecutive_restarts)
        return decision

    def _restart(self, decision: Decision) -> None:
        # Only the restart waits: the failed request was answered, other agents run on.
        if decision.delay > 0 and self._ended.wait(decision.delay):
            return
        try:
            self._agent = Agent(build_options(self._name, self._factory))
        except PluginError as err:
            self._log.error("could not restart agent {}: {}", self._name, err)
            self._end(AgentStatus.FAILED, err)
            return
        self._log.debug("agent {} restarted (attempt {})", self._name, decision.attempt)


class _AgentActor(pykka.ThreadingActor):
    """Serves one handle's requests in order on its own (daemon) thread."""

    use_daemon_thread = True

    def __init__(self, handle: OrchestratedHandle) -> None:
        super().__init__()
        self._handle = handle

    def on_start(self) -> None:
        self._handle.thread = threading.current_thread()

    def on_receive(self, message: Any) -> None:
        handle = self._handle
        if message is _DRAIN:
            handle._end(AgentStatus.COMPLETED, None)
        elif isinstance(message, _Request) and handle._take(message):
            handle._serve(message)

    def on_failure(self, *exc_info: Any) -> None:
        error = exc_info[1]
        self._handle._end(
            AgentStatus.FAILED, PluginError(_ORCHESTRATOR, f"agent actor crashed: {error!r}")
        )

    def on_stop(self) -> None:
        # Stopped from outside (e.g. pykka.ActorRegistry.stop_all()): still answer everything.
        self._handle._end(
            AgentStatus.CANCELLED, Aborted(f"agent '{self._handle.name}' actor stopped")
        )


class AgentOrchestrator:
    """A registry of named agents (with parent/child links) and the actors spawned from it.

    Agents are registered with an *options factory*, called on every spawn and every restart
    for a fresh `AgentOptions`. One supervisor actor applies the policy to failures. Use it as a
    context manager, or call `shutdown()`; a script that forgets still exits (daemon threads).

    Example:
        >>> from actor_orch import AgentOptions, DefaultSupervisor, EchoModel
        >>> orch = AgentOrchestrator().with_supervisor(DefaultSupervisor(max_restarts=2))
        >>> orch.add_agent("lead", lambda: AgentOptions(EchoModel()))
        >>> orch.add_child("helper", "lead", lambda: AgentOptions(EchoModel()))
        >>> orch.children_of("lead"), orch.parent_of("helper"), "helper" in orch
        (['helper'], 'lead', True)
        >>> orch.spawn("helper").send_message("hi", timeout=5).text
        'hi'
        >>> orch.shutdown()
    """

    def __init__(
        self,
        *,
        supervisor: SupervisorPolicy | None = None,
        max_restarts: int | None = None,
        channel_buffer: int = 32,
    ) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._policy: SupervisorPolicy | None = None
        self._max_restarts: int | None = None
        self._channel_buffer = 32
        self._bus = EventBus()
        self._handles: dict[int, OrchestratedHandle] = {}  # running, in spawn order
        self._supervisor_ref: pykka.ActorRef[SupervisorActor] | None = None
        self._supervisor_threads: list[threading.Thread] = []
        self._shut_down = False
        if supervisor is not None:
            self.with_supervisor(supervisor)
        if max_restarts is not None:
            self.with_max_restarts(max_restarts)
        self.with_channel_buffer(channel_buffer)

    # -- configuration -------------------------------------------------------------------

    def with_supervisor(self, policy: SupervisorPolicy) -> AgentOrchestrator:
        """Use `policy` for agents spawned from now on; returns `self`."""
        if not callable(getattr(policy, "on_agent_error", None)):
            raise TypeError(f"supervisor must have on_agent_error(name, error), got {policy!r}")
        self._policy = policy
        return self

    def with_channel_buffer(self, size: int) -> AgentOrchestrator:
        """Mailbox capacity of agents spawned from now on (>= 1); returns `self`."""
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"channel_buffer must be an int >= 1, got {size!r}")
        self._channel_buffer = size
        return self

    def with_max_restarts(self, max_restarts: int) -> AgentOrchestrator:
        """Default restart budget for agents without their own; returns `self`."""
        self._max_restarts = _check_budget(max_restarts)
        return self

    @property
    def supervisor(self) -> SupervisorPolicy | None:
        return self._policy

    @property
    def channel_buffer(self) -> int:
        return self._channel_buffer

    # -- registry ------------------------------------------------------------------------

    def add_agent(
        self, name: str, options_factory: OptionsFactory, *, max_restarts: int | None = None
    ) -> None:
        """Register a top-level agent. A duplicate name raises `ValueError` and changes nothing."""
        self._register(name, None, options_factory, max_restarts)

    def add_child(
        self,
        name: str,
        parent: str,
        options_factory: OptionsFactory,
        *,
        max_restarts: int | None = None,
    ) -> None:
        """Register `name` as a child of `parent` (which must be registered)."""
        self._register(name, parent, options_factory, max_restarts)

    def _register(
        self, name: str, parent: str | None, factory: OptionsFactory, max_restarts: int | None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"agent name must be a non-empty str, got {name!r}")
        if not callable(factory):
            raise TypeError(f"options_factory of agent '{name}' must be callable, got {factory!r}")
        budget = None if max_restarts is None else _check_budget(max_restarts)
        with self._lock:
            if parent is not None and parent not in self._entries:
                raise ValueError(f"parent agent '{parent}' not registered")
            if name in self._entries:
                raise ValueError(f"agent '{name}' already registered")
            self._entries[name] = _Entry(factory, parent, [], budget)
            if parent is not None:
                self._entries[parent].children.append(name)

    def parent_of(self, name: str) -> str | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.parent

    def children_of(self, name: str) -> list[str] | None:
        """Direct children in registration order; None when `name` is unknown."""
        entry = self._entries.get(name)
        return None if entry is None else list(entry.children)

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def contains(self, name: str) -> bool:
        return name in self._entries

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def options_factory(self, name: str) -> OptionsFactory | None:
        """The options factory registered for `name`, or None."""
        entry = self._entries.get(name)
        return None if entry is None else entry.factory

    def restart_budget(self, name: str) -> int:
        """The restart budget `name` gets if spawned now (see API precedence)."""
        entry = self._entries.get(name)
        if entry is None:
            raise _not_registered(name)
        return resolve_restart_budget(entry.max_restarts, self._max_restarts, self._policy)

    def descendants_of(self, name: str) -> list[str]:
        """Children, grandchildren, ... of `name` (breadth first)."""
        found: list[str] = []
        frontier = self.children_of(name) or []
        while frontier:
            found.extend(frontier)
            frontier = [c for n in frontier for c in self._entries[n].children]
        return found

    # -- events --------------------------------------------------------------------------

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Deliver lifecycle events to `callback` (synchronously); returns `unsubscribe`."""
        return self._bus.subscribe(callback)

    # -- running agents ------------------------------------------------------------------

    def spawn(self, name: str) -> OrchestratedHandle:
        """Start agent `name` in its own actor; unknown names raise `PluginError`."""
        entry = self._entries.get(name)
        if entry is None:
            raise _not_registered(name)
        options = build_options(name, entry.factory)
        with self._lock:
            if self._shut_down:
                raise PluginError(_ORCHESTRATOR, "orchestrator is shut down")
            if self._supervisor_ref is None:
                self._supervisor_ref = SupervisorActor.start(self._bus, self._supervisor_threads)
            handle = OrchestratedHandle(
                name,
                entry.factory,
                options,
                policy=self._policy,
                budget=resolve_restart_budget(entry.max_restarts, self._max_restarts, self._policy),
                channel_buffer=self._channel_buffer,
                supervisor=self._supervisor_ref,
                bus=self._bus,
                on_cancel=self._cascade_cancel,
            )
            self._handles[id(handle)] = handle
        logger.bind(agent=name).debug("spawned agent {}", name)
        self._bus.emit(AgentSpawned(name))
        return handle

    def running(self) -> list[OrchestratedHandle]:
        """Handles not yet ended, in spawn order."""
        with self._lock:
            self._forget_ended()
            return list(self._handles.values())

    def _forget_ended(self) -> None:
        for key in [k for k, h in self._handles.items() if h.is_done()]:
            del self._handles[key]

    def _cascade_cancel(self, handle: OrchestratedHandle) -> None:
        """Cascade a cancel to the handles of the agent's descendants."""
        family = set(self.descendants_of(handle.name))
        if not family:
            return
        for other in self.running():
            if other.name in family:
                other.cancel()

    def _stop_order(self) -> list[OrchestratedHandle]:
        """Children before parents; reverse spawn order otherwise."""
        with self._lock:
            self._forget_ended()
            pending = list(reversed(self._handles.values()))
        order: list[OrchestratedHandle] = []
        placed: set[int] = set()

        def place(handle: OrchestratedHandle) -> None:
            if id(handle) in placed:
                return
            placed.add(id(handle))
            family = set(self.descendants_of(handle.name))
            for other in pending:
                if other.name in family:
                    place(other)
            order.append(handle)

        for handle in pending:
            place(handle)
        return order

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every agent (children first) and the supervisor; returns by the deadline.

        Queued and in-flight requests may finish until `timeout` seconds have passed; whatever
        is left is then answered with `Aborted`. Idempotent. A model call that is still blocked
        keeps its (daemon) thread until it returns.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._shut_down = True
            supervisor, self._supervisor_ref = self._supervisor_ref, None
        order = self._stop_order()
        for handle in order:
            handle._close()
            try:
                handle._final.result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                handle._end(AgentStatus.CANCELLED, Aborted("orchestrator shut down"))
            except AgentError:
                pass  # it ended failed or cancelled; its own callers were told
        grace = deadline + _SHUTDOWN_GRACE_S
        for handle in order:
            handle._join(grace - time.monotonic())
        if supervisor is not None:
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                supervisor.stop(block=True, timeout=max(0.01, grace - time.monotonic()))
            for thread in self._supervisor_threads:
                thread.join(max(0.0, grace - time.monotonic()))
        with self._lock:
            self._forget_ended()

    def __enter__(self) -> AgentOrchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"<AgentOrchestrator agents={self.names()} supervisor={self._policy!r} "
            f"channel_buffer={self._channel_buffer} running={len(self.running())}"
            f"{' shut down' if self._shut_down else ''}>"
        )


def _check_budget(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"max_restarts must be an int >= 0, got {value!r}")
    return value


def _not_registered(name: str) -> PluginError:
    return PluginError(_ORCHESTRATOR, f"agent not registered: {name}")
