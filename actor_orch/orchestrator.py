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
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import pykka
from loguru import logger

from actor_orch import _trace
from actor_orch._latch import OneShot
from actor_orch.agent import Agent, AgentOptions, OptionsFactory, build_options
from actor_orch.delegation import with_delegation
from actor_orch.errors import (
    Aborted,
    AgentError,
    PluginError,
    RequestTimeout,
    StreamError,
    StructuredOutputFailed,
)
from actor_orch.events import AgentSpawned, AgentStopped, EventBus, EventCallback
from actor_orch.sessions import MemorySessionStore, SessionStore
from actor_orch.spec import AgentStepSpec, StepOutcome
from actor_orch.structured import OutputSpec
from actor_orch.supervisor import (
    Supervision,
    SupervisorAction,
    SupervisorPolicy,
    check_restart_budget,
    resolve_restart_budget,
)
from actor_orch.types import (
    AgentMessage,
    AgentResult,
    AgentStatus,
    StopReason,
    check_messages,
    user_message,
)

if TYPE_CHECKING:
    from actor_orch.executor import AgentExecutor

__all__ = [
    "AgentOrchestrator",
    "AgentStream",
    "OptionsFactory",
    "OrchestratedHandle",
    "build_options",
]

_ORCHESTRATOR = "orchestrator"
# Slack after a shutdown deadline for threads to notice they were told to end.
_SHUTDOWN_GRACE_S = 0.5
# Named sessions an agent keeps loaded; others are read from the session store when used.
_SESSION_CACHE_SIZE = 64


def _channel_closed() -> PluginError:
    return PluginError(_ORCHESTRATOR, "agent channel closed")


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


def check_timeout(value: object, name: str = "timeout") -> float | None:
    """`value` as seconds: None or a finite number >= 0; otherwise an error naming `name`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


# The life of a `_Reply`; it changes only under its handle's gate.
_QUEUED, _RUNNING, _DONE = 0, 1, 2


class _Reply:
    """The answer to one accepted message, recorded once under its handle's gate.

    A synchronous sender waits on a `OneShot`; an asynchronous one, or a stream, gets a
    `concurrent.futures.Future`.
    """

    __slots__ = ("_latch", "error", "future", "state", "value")

    def __init__(self, future: bool) -> None:
        self.state = _QUEUED
        self.value: AgentResult | None = None
        self.error: BaseException | None = None
        self.future: concurrent.futures.Future[AgentResult] | None = None
        self._latch: OneShot[None] | None = None
        if future:
            self.future = concurrent.futures.Future()
        else:
            self._latch = OneShot()

    def deliver(self) -> None:
        """Hand the recorded answer to the sender (once, after the gate recorded it)."""
        if self._latch is not None:
            self._latch.set(None)
        elif self.future is not None:
            _settle(self.future, self.value, self.error)

    def wait(self, timeout: float | None) -> bool:
        """Wait (synchronous senders only) up to `timeout` seconds; True once answered."""
        latch = self._latch
        assert latch is not None
        return latch.wait(timeout)

    def outcome(self) -> AgentResult:
        """The recorded answer: the result, or its error raised."""
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class _Request(_Reply):
    """One accepted request: its messages, where they go, and its answer."""

    __slots__ = ("abortable", "aborted", "messages", "on_delta", "output", "session", "trace")

    def __init__(
        self,
        messages: list[AgentMessage],
        session: str | None = None,
        output: OutputSpec | None = None,
        *,
        future: bool = True,
        abortable: bool = False,
    ) -> None:
        super().__init__(future)
        self.messages = messages
        self.session = session
        self.output = output
        self.on_delta: Callable[[str], None] | None = None
        # Its own sender gave up (a send that timed out, a cancelled stream): the prompt stops
        # at its next boundary, and the failure is the caller's business, not the supervisor's.
        self.abortable = abortable
        self.aborted = False
        hooks = _trace.HOOKS
        self.trace = None if hooks is None else hooks.capture()  # the sender's span context

    def is_set(self) -> bool:
        """Whether its sender gave up (read by the agent loop as this prompt's abort)."""
        return self.aborted


class _ClearHistory(_Reply):
    """Told by `clear_history`: forget one conversation, in mailbox order."""

    __slots__ = ("session",)

    def __init__(self, session: str | None) -> None:
        super().__init__(future=False)
        self.session = session


# Told to the actor by await_result() and shutdown(): what is queued before it is served, then
# the agent ends COMPLETED.
_DRAIN = object()


@dataclasses.dataclass(frozen=True, slots=True)
class _Restart:
    """Told by the supervisor when a restart's backoff is over; stale generations are ignored."""

    generation: int


@dataclasses.dataclass
class _Entry:
    factory: OptionsFactory
    parent: str | None
    children: list[str]
    max_restarts: int | None


class _Published:
    """What the agent actor publishes for its handle to read (written on the actor's thread)."""

    __slots__ = ("agent", "history_limit", "ident", "restarts", "thread")

    def __init__(self) -> None:
        self.restarts = 0
        self.thread: threading.Thread | None = None
        self.ident: int | None = None  # the actor thread's ident
        self.agent: Agent | None = None  # the agent of the session-less conversation
        self.history_limit: int | None = None


class OrchestratedHandle:
    """A running agent: send it messages, await its end, cancel it.

    Created by `AgentOrchestrator.spawn`. A thin client of the agent's actor: it holds the
    actor's reference, the bounded mailbox gate and the answer of every accepted request not
    yet answered. The agent itself (its history, its restart count) lives in the actor and
    changes only on the actor's thread. Thread-safe: any number of threads may send at once;
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
        budget: int,
        channel_buffer: int,
        supervision: Supervision,
        sessions: SessionStore,
        on_end: Callable[[OrchestratedHandle], None],
        prepare: Callable[[AgentOptions, str], AgentOptions] = lambda options, _: options,
    ) -> None:
        self._name = name
        self._sessions = sessions
        self._buffer = channel_buffer
        self._on_end = on_end
        self._bus = supervision.bus
        # The gate: guards the mailbox fill, the open requests, every answer and the one end
        # transition. A plain lock; senders waiting for mailbox space wait on `_space`, a
        # condition on it made when first needed.
        self._gate = threading.Lock()
        self._space: threading.Condition | None = None
        self._space_waiters = 0
        self._queued = 0  # accepted requests the actor has not taken yet: the mailbox fill
        self._outstanding: set[_Reply] = set()  # accepted, not answered
        self._failing: tuple[_Request, AgentError] | None = None  # failed, being supervised
        self._closed = False  # no new requests (await_result, shutdown, or ended)
        self._status = AgentStatus.RUNNING
        self._abort = threading.Event()  # set when the handle ends: aborts the running prompt
        # How the handle ended (result, error), and the future `await_result` waits on, made
        # only when somebody waits.
        self._ended_with: tuple[AgentResult, AgentError | None] | None = None
        self._final: concurrent.futures.Future[AgentResult] | None = None
        self._published = _Published()
        self._actor = _AgentActor.start(
            self,
            factory,
            options,
            supervision=supervision,
            budget=budget,
            sessions=sessions,
            prepare=prepare,
        )

    # -- public API ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def restarts(self) -> int:
        """Total restarts since spawn (counted before the failed request is answered)."""
        return self._published.restarts

    def status(self) -> AgentStatus:
        return self._status

    def is_done(self) -> bool:
        return self._status is not AgentStatus.RUNNING

    def send_message(
        self,
        text: str,
        *,
        timeout: float | None = None,
        session: str | None = None,
        output_type: object = None,
    ) -> AgentResult:
        """Send one user message and wait for the result.

        `timeout` (seconds) bounds the whole call, mailbox wait included; past it
        `RequestTimeout` is raised and the request is withdrawn (not started yet) or aborted
        at its next boundary. Errors of the agent are raised as the `AgentError` it failed
        with. `session` names the conversation (None: the agent's own). `output_type` (a
        msgspec Struct, dataclass, TypedDict or JSON-schema dict) asks for a typed reply in
        `AgentResult.output`; one that never validates raises `StructuredOutputFailed`,
        which fails the request without involving the supervisor.

        Raises:
            TypeError: `text` is not a `str`, `session` is not a `str`, `output_type` is not a
                supported type, or `timeout` is not a number.
            ValueError: `timeout` is negative, NaN or infinite, or `session` is empty.
        """
        return self._send([_user_text(text)], timeout, session, output_type)

    def send_messages(
        self,
        messages: Sequence[AgentMessage],
        *,
        timeout: float | None = None,
        session: str | None = None,
        output_type: object = None,
    ) -> AgentResult:
        """Like `send_message`, with a list of messages."""
        return self._send(check_messages(messages), timeout, session, output_type)

    def send_message_async(
        self,
        text: str,
        *,
        timeout: float | None = None,
        session: str | None = None,
        output_type: object = None,
    ) -> concurrent.futures.Future[AgentResult]:
        """Queue one user message; returns its `Future`. `timeout` bounds only the wait for
        mailbox space (then `RequestTimeout`). Cancelling the future withdraws the request
        if the agent has not started it."""
        return self.send_messages_async(
            [_user_text(text)], timeout=timeout, session=session, output_type=output_type
        )

    def send_messages_async(
        self,
        messages: Sequence[AgentMessage],
        *,
        timeout: float | None = None,
        session: str | None = None,
        output_type: object = None,
    ) -> concurrent.futures.Future[AgentResult]:
        """Queue messages as one request; returns its `Future`. See `send_message_async`."""
        limit = check_timeout(timeout)
        request = _Request(
            check_messages(messages), _check_session(session), _output_spec(output_type)
        )
        self._submit(request, limit, None if limit is None else time.monotonic() + limit)
        assert request.future is not None
        return request.future

    def stream_message(
        self,
        text: str,
        *,
        timeout: float | None = None,
        session: str | None = None,
        output_type: object = None,
    ) -> AgentStream:
        """Send one user message; iterate the returned `AgentStream` for the reply's text as
        the model produces it, then call its `result()`.

        A request like `send_message` (same mailbox, supervision, answered exactly once);
        `timeout` bounds the whole request, iteration included. See `AgentStream`.
        """
        limit = check_timeout(timeout)
        self._refuse_own_thread("stream_message")
        request = _Request(
            [_user_text(text)],
            _check_session(session),
            _output_spec(output_type),
            abortable=True,
        )
        stream = AgentStream(self, request, limit)
        request.on_delta = stream._push
        self._submit(request, limit, None if limit is None else time.monotonic() + limit)
        return stream

    def history(self, session: str | None = None) -> list[AgentMessage]:
        """The messages of a conversation (a copy), as of its last finished request.

        `session=None` is the agent's own conversation (a supervisor restart starts it
        afresh); a named session is read from the orchestrator's session store.
        """
        session = _check_session(session)
        if session is not None:
            return self._sessions.load(self._name, session, self._published.history_limit)
        agent = self._published.agent
        return [] if agent is None else list(agent.history_snapshot())

    def clear_history(self, session: str | None = None, *, timeout: float | None = None) -> None:
        """Forget a conversation, in order with the requests already queued (it waits for
        them, up to `timeout`). A named session is removed from the session store."""
        session = _check_session(session)
        limit = check_timeout(timeout)
        control = _ClearHistory(session)
        with self._gate:
            closed = self._closed
            if not closed:
                self._tell_locked(control)
                self._outstanding.add(control)
        if closed:
            if session is None:
                raise _channel_closed()
            self._sessions.clear(self._name, session)
            return
        if not control.wait(limit):
            raise RequestTimeout(
                f"agent '{self._name}' did not clear its history within {limit:g}s"
            )
        control.outcome()

    def await_result(self, timeout: float | None = None) -> AgentResult:
        """Close the handle to new requests, let queued ones finish, return the last result.

        Returns the last successful result (an empty `STOP` result if there was none). Raises
        `PluginError` when the supervisor stopped the agent, `Aborted` after `cancel()`, and
        `RequestTimeout` when `timeout` seconds pass first (the agent keeps draining).
        """
        limit = check_timeout(timeout)
        self._close()
        try:
            return self._final_future().result(limit)
        except TimeoutError:
            raise RequestTimeout(f"agent '{self._name}' did not finish within {limit:g}s") from None

    def cancel(self) -> None:
        """Answer the in-flight and every queued request with `Aborted` now, end as CANCELLED.

        Cascades to the handles of this agent's children (and theirs) from the same
        orchestrator. A model call already running is asked to abort and its result is
        discarded.
        """
        self._end(AgentStatus.CANCELLED, Aborted(f"agent '{self._name}' cancelled"))

    def __repr__(self) -> str:
        return (
            f"<OrchestratedHandle {self._name!r} status={self._status.name} "
            f"restarts={self.restarts} queued={self._queued}>"
        )

    # -- sending ---------------------------------------------------------------------------

    def _send(
        self,
        messages: list[AgentMessage],
        timeout: object,
        session: object,
        output_type: object,
    ) -> AgentResult:
        """A synchronous request: accept it, wait for its answer up to `timeout`."""
        limit = check_timeout(timeout)
        if self._published.ident == threading.get_ident():
            self._refuse_own_thread("send_messages")
        request = _Request(
            messages,
            None if session is None else _check_session(session),
            None if output_type is None else OutputSpec(output_type),
            future=False,
            abortable=limit is not None,
        )
        if limit is None:
            self._submit(request, None, None)
            request.wait(None)
            return request.outcome()
        deadline = time.monotonic() + limit
        self._submit(request, limit, deadline)
        if request.wait(max(0.0, deadline - time.monotonic())):
            return request.outcome()
        error = RequestTimeout(f"agent '{self._name}' did not answer within {limit:g}s")
        self._abandon(request, error)  # withdrawn if not started, else aborted
        return request.outcome()  # its answer, if it came first; else raises `error`

    def _refuse_own_thread(self, what: str) -> None:
        thread = self._published.thread
        if thread is not None and thread is threading.current_thread():
            raise PluginError(
                _ORCHESTRATOR,
                f"{what} to agent '{self._name}' from its own thread would wait for itself; "
                "use send_messages_async",
            )

    def _submit(self, request: _Request, limit: float | None, deadline: float | None) -> None:
        """Accept `request` into the mailbox, waiting until `deadline` for space."""
        with self._gate:
            if self._queued >= self._buffer and not self._closed:
                self._wait_for_space(limit, deadline)
            if self._closed:
                raise _channel_closed()
            # Told under the gate, so a request can never land behind the drain marker.
            try:
                self._actor.tell(request)
            except pykka.ActorDeadError:  # the actor died and is still reporting it
                raise _channel_closed() from None
            self._queued += 1
            self._outstanding.add(request)

    def _wait_for_space(self, limit: float | None, deadline: float | None) -> None:
        """Wait (gate held) until the mailbox has room or the handle closes."""
        space = self._space
        if space is None:
            space = self._space = threading.Condition(self._gate)
        self._space_waiters += 1
        try:
            while not self._closed and self._queued >= self._buffer:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RequestTimeout(
                        f"mailbox of agent '{self._name}' stayed full for {limit:g}s"
                    )
                space.wait(remaining)
        finally:
            self._space_waiters -= 1

    def _wake_senders(self, everyone: bool) -> None:
        """Wake senders waiting for mailbox space (gate held)."""
        if self._space_waiters and self._space is not None:
            if everyone:
                self._space.notify_all()
            else:
                self._space.notify()

    def _tell_locked(self, message: _Reply) -> None:
        try:
            self._actor.tell(message)
        except pykka.ActorDeadError:  # the actor died and is still reporting it
            raise _channel_closed() from None

    # -- the gate, used by the actor and the orchestrator ---------------------------------

    def _close(self) -> None:
        with self._gate:
            if self._closed:
                return
            self._closed = True
            self._wake_senders(everyone=True)  # they now get "channel closed"
            with contextlib.suppress(pykka.ActorDeadError):
                self._actor.tell(_DRAIN)

    def _take(self, request: _Request) -> bool:
        """The actor dequeued `request`: free its mailbox slot; False if it needs no work
        (answered already: withdrawn by its sender, or by the end)."""
        with self._gate:
            self._queued -= 1
            if self._space_waiters:
                self._wake_senders(everyone=False)
            if request.state != _QUEUED:
                return False
            future = request.future
            if future is not None and not future.set_running_or_notify_cancel():
                request.state = _DONE  # its future was cancelled by its sender
                self._outstanding.discard(request)
                return False
            request.state = _RUNNING
            return True

    def _answer(
        self,
        request: _Reply,
        result: AgentResult | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Answer `request` unless it was answered already (the first answer wins)."""
        with self._gate:
            if request.state == _DONE:
                return
            request.state = _DONE
            request.value = result
            request.error = error
            self._outstanding.discard(request)
            if self._failing is not None and self._failing[0] is request:
                self._failing = None
        request.deliver()

    def _abandon(self, request: _Request, error: AgentError) -> None:
        """Its sender gives up on `request` (timeout, stream cancel): answer it with `error`
        unless answered already. Not started: the actor skips it; running: the prompt stops
        at its next boundary and its failure is not supervised."""
        with self._gate:
            if request.state == _DONE:
                return
            request.aborted = True
            request.state = _DONE
            request.error = error
            self._outstanding.discard(request)
            if self._failing is not None and self._failing[0] is request:
                self._failing = None
        request.deliver()

    def _supervising(self, failing: tuple[_Request, AgentError] | None) -> None:
        """Mark the request whose failure is being supervised: if the handle ends meanwhile,
        that request still gets its own error, not `Aborted`."""
        with self._gate:
            self._failing = failing

    def _end(
        self, status: AgentStatus, error: AgentError | None, last: AgentResult | None = None
    ) -> bool:
        """End the handle once: answer what is left, settle the end, stop the actor."""
        leftover_error = error if error is not None else _channel_closed()
        with self._gate:
            if self._status is not AgentStatus.RUNNING:
                return False
            self._status = status
            self._closed = True
            leftovers = list(self._outstanding)
            self._outstanding.clear()
            failing, self._failing = self._failing, None
            for request in leftovers:
                request.state = _DONE
                own = failing is not None and failing[0] is request
                request.error = failing[1] if failing is not None and own else leftover_error
            self._wake_senders(everyone=True)
            self._ended_with = (last or _empty_result(), error)
            final = self._final
        self._abort.set()
        for request in leftovers:
            request.deliver()
        if final is not None:
            _settle(final, *self._ended_with)
        log = logger.bind(agent=self._name)
        (log.warning if status is AgentStatus.FAILED else log.debug)(
            "agent {} ended: {}", self._name, status.name
        )
        with contextlib.suppress(pykka.ActorDeadError):
            self._actor.stop(block=False)
        self._on_end(self)
        if self._bus.live:
            self._bus.emit(AgentStopped(self._name, status))
        return True

    def _final_future(self) -> concurrent.futures.Future[AgentResult]:
        """The future of the handle's end (made on first use)."""
        with self._gate:
            final = self._final
            if final is None:
                final = self._final = concurrent.futures.Future()
                if self._ended_with is not None:
                    _settle(final, *self._ended_with)
            return final

    def _join(self, timeout: float) -> None:
        thread = self._published.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout))

    def _on_own_thread(self) -> bool:
        return self._published.ident == threading.get_ident()


def _output_spec(output_type: object) -> OutputSpec | None:
    return None if output_type is None else OutputSpec(output_type)


def _user_text(text: object) -> AgentMessage:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return user_message(text)


def _check_session(session: object) -> str | None:
    if session is None:
        return None
    if not isinstance(session, str):
        raise TypeError(f"session must be a str or None, got {type(session).__name__}")
    if not session:
        raise ValueError("session must be a non-empty str or None")
    return session


_STREAM_END = object()


class AgentStream:
    """The reply of `OrchestratedHandle.stream_message`, as it is produced.

    Iterating yields the text deltas (`str`) of every assistant message of the request, in
    order, through tool rounds; it ends when the request does and raises the request's error,
    if any. `result(timeout)` returns the `AgentResult` (or raises like `send_message`);
    `cancel()` aborts the request (withdrawn if not started, else stopped at its next model,
    tool or text boundary) and it is answered `Aborted`. The whole request, iteration
    included, is bounded by the `timeout` given to `stream_message`.

    Example:
        >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel
        >>> with AgentOrchestrator() as orch:
        ...     orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
        ...     stream = orch.spawn("echo").stream_message("one two three", timeout=5)
        ...     pieces = list(stream)
        ...     pieces, stream.result().text == "".join(pieces)
        (['one ', 'two ', 'three'], True)
    """

    def __init__(self, handle: OrchestratedHandle, request: _Request, timeout: float | None):
        self._handle = handle
        self._request = request
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self._deltas: queue.SimpleQueue[object] = queue.SimpleQueue()
        assert request.future is not None
        self._future = request.future
        self._future.add_done_callback(lambda _: self._deltas.put(_STREAM_END))

    def _push(self, delta: str) -> None:
        self._deltas.put(delta)

    def __iter__(self) -> Iterator[str]:
        while True:
            remaining = None
            if self._deadline is not None:
                remaining = max(0.0, self._deadline - time.monotonic())
            try:
                item = self._deltas.get(timeout=remaining)
            except queue.Empty:
                self.cancel()
                raise RequestTimeout(
                    f"agent '{self._handle.name}' did not finish within {self._timeout:g}s"
                ) from None
            if item is _STREAM_END:
                break
            yield cast("str", item)
        self.result(0)  # raises the request's error, if it failed

    def result(self, timeout: float | None = None) -> AgentResult:
        """The request's result, waiting up to `timeout` seconds (`RequestTimeout` after)."""
        limit = check_timeout(timeout)
        if self._deadline is not None:
            left = max(0.0, self._deadline - time.monotonic())
            limit = left if limit is None else min(limit, left)
        try:
            return self._future.result(limit)
        except TimeoutError:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self.cancel()
            raise RequestTimeout(
                f"agent '{self._handle.name}' did not answer within {limit:g}s"
            ) from None

    def cancel(self) -> None:
        """Abort the request; it is answered `Aborted` (unless it had finished already)."""
        # Not started: withdrawn; running: it stops at its next boundary. Answered now, unless
        # it was answered already (the first answer wins).
        self._handle._abandon(self._request, Aborted("request cancelled"))

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "running"
        return f"<AgentStream agent={self._handle.name!r} {state}>"


class _AgentActor(pykka.ThreadingActor):
    """Owns one spawned agent: its `Agent` (history), restart count and deferred requests.

    Everything here runs on the actor's own (daemon) thread. While a failure is supervised or
    a restart is pending, requests and the drain marker wait in `_deferred`, in order.
    """

    use_daemon_thread = True

    def __init__(
        self,
        handle: OrchestratedHandle,
        factory: OptionsFactory,
        options: AgentOptions,
        *,
        supervision: Supervision,
        budget: int,
        sessions: SessionStore,
        prepare: Callable[[AgentOptions, str], AgentOptions],
    ) -> None:
        super().__init__()
        self._handle = handle
        self._prepare = prepare  # adds what the orchestrator gives agents (the delegate tool)
        self._sessions = sessions
        # Named sessions being served, most recently used last, each with the store's version
        # of it as this agent last saw it; the store has them all.
        self._session_agents: OrderedDict[str, tuple[Agent, object]] = OrderedDict()
        version = getattr(sessions, "version", None)
        self._session_version: Callable[[str, str], object] | None = (
            version if callable(version) else None
        )
        self._name = handle.name
        self._factory = factory
        self._supervision = supervision
        self._budget = budget
        self._key = object()  # this agent's identity for the supervisor
        self._options = options
        self._agent = self._new_agent(options)
        self._last_result: AgentResult | None = None
        self._deferred: deque[object] | None = None  # made when first needed
        self._awaiting: int | None = None  # generation of the restart we wait for
        self._generation = 0
        self._recovering = False  # restarted, and no request served since
        self._supervised = False  # the supervisor holds state about us

    def on_start(self) -> None:
        published = self._handle._published
        published.thread = threading.current_thread()
        published.ident = threading.get_ident()

    def _new_agent(self, options: AgentOptions) -> Agent:
        """A fresh agent for the session-less conversation, published to the handle."""
        options = self._prepare(options, f"agent:{self._name}")
        agent = Agent(options, abort_event=self._handle._abort, on_event=self._supervision.bus)
        published = self._handle._published
        published.agent = agent
        published.history_limit = options.history_limit
        return agent

    def _agent_for(self, session: str | None) -> Agent:
        if session is None:
            return self._agent
        agents = self._session_agents
        known = agents.get(session)
        # A store with versions tells whether another handle or process added to the session
        # since this agent last saw it: then the session is loaded again.
        version = self._version(session)
        if known is not None and (self._session_version is None or known[1] == version):
            agents.move_to_end(session)
            return known[0]
        options = self._prepare(self._options, f"agent:{self._name}:{session}")
        history = self._sessions.load(self._name, session, options.history_limit)
        agent = Agent(
            options,
            abort_event=self._handle._abort,
            history=history,
            on_event=self._supervision.bus,
        )
        agents[session] = (agent, version)
        agents.move_to_end(session)
        if len(agents) > _SESSION_CACHE_SIZE:
            agents.popitem(last=False)  # the store keeps it; it is loaded again when needed
        return agent

    def _version(self, session: str) -> object:
        """The store's version of `session`; one that never matches when it cannot be had."""
        version_of = self._session_version
        if version_of is None:
            return None
        try:
            return version_of(self._name, session)
        except BaseException:  # a user's store: contained, and the session is read again
            logger.opt(exception=True).warning("session store version() failed")
            return object()

    def on_receive(self, message: Any) -> None:
        try:
            if type(message) is _Request and self._awaiting is None:
                self._serve(message)  # the common case, first
            else:
                self._dispatch(message)
        except BaseException as err:  # a bug must not reach Pykka (it would stop_all)
            logger.opt(exception=True).error("agent actor {} crashed", self._name)
            self._end(
                AgentStatus.FAILED, PluginError(_ORCHESTRATOR, f"agent actor crashed: {err!r}")
            )

    def _dispatch(self, message: object) -> None:
        if isinstance(message, _Restart):
            if message.generation == self._awaiting:
                self._resume()
        elif self._awaiting is not None:
            if self._deferred is None:
                self._deferred = deque()
            self._deferred.append(message)
            if message is _DRAIN:
                self._resume()  # ending: restart now, serve what is queued, never wait it out
        elif message is _DRAIN:
            self._end(AgentStatus.COMPLETED, None)
        elif isinstance(message, _Request):
            self._serve(message)
        elif isinstance(message, _ClearHistory):
            self._clear(message)

    def _clear(self, message: _ClearHistory) -> None:
        if message.session is None:
            self._agent = self._new_agent(self._options)
        else:
            self._session_agents.pop(message.session, None)
            self._sessions.clear(self._name, message.session)
        self._handle._answer(message, _empty_result())

    def _resume(self) -> None:
        """The restart is due: rebuild the agent, then handle what waited for it."""
        self._awaiting = None
        try:
            options = build_options(self._name, self._factory)
        except PluginError as err:
            logger.bind(agent=self._name).error("could not restart agent {}: {}", self._name, err)
            self._end(AgentStatus.FAILED, err)
            return
        self._options = options
        self._agent = self._new_agent(options)
        self._session_agents.clear()  # named sessions continue from the store
        logger.bind(agent=self._name).debug("agent {} restarted", self._name)
        while self._deferred and self._awaiting is None and not self._handle.is_done():
            self._dispatch(self._deferred.popleft())

    def _serve(self, request: _Request) -> None:
        if not self._handle._take(request):
            return
        hooks = _trace.HOOKS
        if hooks is None:
            result, error = self._prompt(request)
        else:  # the span ends before the answer: a caller sees it finished
            scope = hooks.start_agent(self._name, session=request.session, parent=request.trace)
            result, error = self._prompt(request)
            hooks.end(scope, error)
        if error is None:
            assert result is not None
            self._served(request, result)
        elif isinstance(error, StructuredOutputFailed) or (
            isinstance(error, Aborted) and request.aborted
        ):
            # The caller's business (a reply that never validated, a cancelled stream, a send
            # that timed out), not a failure of the agent: no supervision.
            self._handle._answer(request, error=error)
        else:
            self._failed(request, error if isinstance(error, AgentError) else StreamError(error))

    def _prompt(self, request: _Request) -> tuple[AgentResult | None, BaseException | None]:
        """Run the request's prompt; whatever it raises is returned, never raised."""
        session = request.session
        try:
            agent = self._agent if session is None else self._agent_for(session)
            result = agent.run_checked(
                request.messages,
                request.output,
                request.on_delta,
                request if request.abortable else None,
            )
        except BaseException as err:  # contained: never let anything reach Pykka
            return None, err
        return result, None

    def _served(self, request: _Request, result: AgentResult) -> None:
        session = request.session
        if session is not None:
            self._sessions.append(self._name, session, result.messages)
            known = self._session_agents.get(session)
            if self._session_version is not None and known is not None:  # our turn: no reload
                self._session_agents[session] = (known[0], self._version(session))
        self._last_result = result
        self._recovering = False
        self._handle._answer(request, result)

    def _failed(self, request: _Request, error: AgentError) -> None:
        handle = self._handle
        if handle.is_done():
            handle._answer(request, error=error)
            return
        handle._supervising((request, error))
        self._supervised = True
        decision = self._supervision.on_failure(
            self._key, self._name, error, self._budget, recovered=not self._recovering
        )
        if handle.is_done():  # cancelled or shut down while the supervisor decided
            handle._answer(request, error=error)
            return
        if decision.action is SupervisorAction.RESTART:
            self._handle._published.restarts += 1
            self._recovering = True
            handle._answer(request, error=error)
            self._generation += 1
            self._awaiting = generation = self._generation
            ref = self.actor_ref
            if decision.delay > 0:  # the supervisor's timer tells us when the backoff is over
                self._supervision.schedule_restart(
                    self._key, decision.delay, lambda: ref.tell(_Restart(generation))
                )
            else:  # restart as our next message, behind nothing already queued
                self._resume()
        elif decision.action is SupervisorAction.ESCALATE:
            handle._answer(request, error=error)
        else:  # stopped: the end answers the failed request with its own error
            self._end(
                AgentStatus.FAILED,
                PluginError(_ORCHESTRATOR, f"agent '{self._name}' stopped by supervisor"),
            )

    def _end(self, status: AgentStatus, error: AgentError | None) -> None:
        self._handle._end(status, error, self._last_result)

    def on_failure(self, *exc_info: Any) -> None:
        self._end(
            AgentStatus.FAILED, PluginError(_ORCHESTRATOR, f"agent actor crashed: {exc_info[1]!r}")
        )

    def on_stop(self) -> None:
        # Also reached when stopped from outside (pykka.ActorRegistry.stop_all()): still
        # answer everything.
        if self._supervised:
            self._supervision.forget(self._key)
        self._end(AgentStatus.CANCELLED, Aborted(f"agent '{self._name}' actor stopped"))


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
        sessions: SessionStore | None = None,
        max_delegation_depth: int = 3,
    ) -> None:
        if sessions is not None and not all(
            callable(getattr(sessions, method, None)) for method in ("load", "append", "clear")
        ):
            raise TypeError(f"sessions must be a SessionStore or None, got {sessions!r}")
        if (
            not isinstance(max_delegation_depth, int)
            or isinstance(max_delegation_depth, bool)
            or max_delegation_depth < 0
        ):
            raise ValueError(
                f"max_delegation_depth must be an int >= 0, got {max_delegation_depth!r}"
            )
        self._sessions: SessionStore = MemorySessionStore() if sessions is None else sessions
        self.max_delegation_depth = max_delegation_depth
        self._delegation_depths: dict[str, int] = {}
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._max_restarts: int | None = None
        self._channel_buffer = 32
        self._bus = EventBus()
        self._supervision = Supervision(None, self._bus)
        self._handles: dict[int, OrchestratedHandle] = {}  # running, in spawn order
        self._executor: AgentExecutor | None = None
        self._owns_executor = False
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
        self._supervision.policy = policy
        return self

    def with_channel_buffer(self, size: int) -> AgentOrchestrator:
        """Mailbox capacity of agents spawned from now on (>= 1); returns `self`."""
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"channel_buffer must be an int >= 1, got {size!r}")
        self._channel_buffer = size
        return self

    def with_max_restarts(self, max_restarts: int) -> AgentOrchestrator:
        """Default restart budget for agents without their own; returns `self`."""
        self._max_restarts = check_restart_budget(max_restarts)
        return self

    def with_executor(self, executor: AgentExecutor) -> AgentOrchestrator:
        """Use `executor` for the steps this orchestrator runs itself; returns `self`."""
        from actor_orch.executor import AgentExecutor  # noqa: PLC0415 (executor imports us)

        if not isinstance(executor, AgentExecutor):
            raise TypeError(f"executor must be an AgentExecutor, got {executor!r}")
        with self._lock:
            previous, owned = self._executor, self._owns_executor
            self._executor, self._owns_executor = executor, False
        if owned and previous is not None and previous is not executor:
            previous.close()
        return self

    @property
    def executor(self) -> AgentExecutor:
        """The executor set with `with_executor`, else a `LocalExecutor` made on first use
        (closed by `shutdown`)."""
        from actor_orch.executor import LocalExecutor  # noqa: PLC0415 (executor imports us)

        with self._lock:
            if self._executor is None:
                self._executor, self._owns_executor = LocalExecutor(self), True
            return self._executor

    @property
    def supervisor(self) -> SupervisorPolicy | None:
        return self._supervision.policy

    def delegation_depth(self, task_id: str) -> int:
        """How deep in delegation the step `task_id` runs (0 unless it was delegated)."""
        return self._delegation_depths.get(task_id, 0)

    def _set_delegation_depth(self, task_id: str, depth: int) -> None:
        """Record how deep the step `task_id` runs (a registry rebuilt on a remote worker)."""
        with self._lock:
            self._delegation_depths[task_id] = depth

    def _run_delegated(
        self, specs: list[AgentStepSpec], depth: int, cancel: object
    ) -> list[StepOutcome]:
        """Run delegated steps on this orchestrator's executor (the `delegate` tool's work)."""
        from actor_orch.executor import execute_steps_parallel  # noqa: PLC0415 (import cycle)

        with self._lock:
            for spec in specs:
                self._delegation_depths[spec.task_id] = depth
        try:
            return execute_steps_parallel(
                self.executor, specs, cancel=cast("threading.Event", cancel)
            )
        finally:
            with self._lock:
                for spec in specs:
                    self._delegation_depths.pop(spec.task_id, None)

    @property
    def sessions(self) -> SessionStore:
        """Where named sessions are kept (a `MemorySessionStore` unless given)."""
        return self._sessions

    @property
    def supervision(self) -> Supervision:
        """The one supervision path of this orchestrator, for agents and steps alike."""
        return self._supervision

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
        if not isinstance(parent, str) or not parent:
            raise TypeError(f"parent of agent {name!r} must be a non-empty str, got {parent!r}")
        self._register(name, parent, options_factory, max_restarts)

    def _register(
        self, name: str, parent: str | None, factory: OptionsFactory, max_restarts: int | None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"agent name must be a non-empty str, got {name!r}")
        if not callable(factory):
            raise TypeError(f"options_factory of agent '{name}' must be callable, got {factory!r}")
        budget = None if max_restarts is None else check_restart_budget(max_restarts)
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
        return resolve_restart_budget(entry.max_restarts, self._max_restarts, self.supervisor)

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
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise _not_registered(name)
        if self._shut_down:
            raise PluginError(_ORCHESTRATOR, "orchestrator is shut down")
        options = build_options(name, entry.factory)
        with self._lock:
            if self._shut_down:
                raise PluginError(_ORCHESTRATOR, "orchestrator is shut down")
            handle = OrchestratedHandle(
                name,
                entry.factory,
                options,
                budget=self.restart_budget(name),
                channel_buffer=self._channel_buffer,
                supervision=self._supervision,
                sessions=self._sessions,
                on_end=self._ended,
                prepare=lambda options, conversation: with_delegation(
                    self, options, name, parent_session_id=conversation, depth=0
                ),
            )
            self._handles[id(handle)] = handle
        logger.bind(agent=name).debug("spawned agent {}", name)
        if self._bus.live:
            self._bus.emit(AgentSpawned(name))
        return handle

    def running(self) -> list[OrchestratedHandle]:
        """Handles not yet ended, in spawn order."""
        with self._lock:
            return list(self._handles.values())

    def _ended(self, handle: OrchestratedHandle) -> None:
        """A handle ended: release it at once; a cancel cascades to its descendants."""
        with self._lock:
            self._handles.pop(id(handle), None)
        if handle.status() is AgentStatus.CANCELLED:
            self._cascade_cancel(handle)

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
        is left is then answered with `Aborted`. Idempotent. Called from inside an agent (a
        callback, tool or model on its thread), it does not wait for that agent, which ends
        once the call returns. A model call that is still blocked keeps its (daemon) thread
        until it returns; its request was answered.

        Raises:
            TypeError, ValueError: `timeout` is not a finite number >= 0 (nothing is done).
        """
        limit = check_timeout(timeout)
        deadline = time.monotonic() + (limit or 0.0)
        with self._lock:
            self._shut_down = True
            executor = self._executor if self._owns_executor else None
        order = self._stop_order()
        for handle in order:
            handle._close()
            if handle._on_own_thread():
                continue
            try:
                handle._final_future().result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                handle._end(AgentStatus.CANCELLED, Aborted("orchestrator shut down"))
            except AgentError:
                pass  # it ended failed or cancelled; its own callers were told
        grace = deadline + _SHUTDOWN_GRACE_S
        for handle in order:
            handle._join(grace - time.monotonic())
        self._supervision.stop(max(0.0, grace - time.monotonic()))
        if executor is not None:
            executor.close()

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
            f"<AgentOrchestrator agents={self.names()} supervisor={self.supervisor!r} "
            f"channel_buffer={self._channel_buffer} running={len(self.running())}"
            f"{' shut down' if self._shut_down else ''}>"
        )


def _not_registered(name: object) -> PluginError:
    return PluginError(_ORCHESTRATOR, f"agent not registered: {name}")
