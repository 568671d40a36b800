"""Supervision: the policy (what to do with a failed agent) and the supervisor actor.

One path serves spawned agents and parallel steps alike ([`Supervision.on_failure`][]):

1. the policy's `on_agent_error(name, error)` is called **on the failing child's own thread**
   (the agent's actor, or the step's pool worker), contained: it raising anything, or answering
   something that is not a `SupervisorAction`, counts as STOP. A policy that blocks therefore
   delays only the agent that failed, never another one, and the supervisor actor never runs
   user code;
2. the supervisor actor, which owns every child's supervision state (consecutive restarts,
   sliding window, pending restart timer), applies the restart budget and answers the
   decision (a fast `ask`);
3. the failure and the decision are logged and published (`AgentFailed`, `AgentRestarted`) on
   the child's thread, to the orchestrator's subscribers and to the step's `events=`;
4. a spawned agent is restarted by a message: the supervisor tells it `restart` after the
   backoff delay (a timer), so the agent's thread never sleeps through a backoff.

Policies may be called from several threads at once, for different agents; never twice at once
for the same agent. `DefaultSupervisor` keeps no state and is thread-safe and picklable.

Example:
    >>> from actor_orch.errors import NetworkError, AuthError
    >>> sup = DefaultSupervisor(max_restarts=2)
    >>> sup.on_agent_error("a", NetworkError("reset"))
    <SupervisorAction.RESTART: 'restart'>
    >>> sup.on_agent_error("a", AuthError("bad key"))
    <SupervisorAction.STOP: 'stop'>
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import pykka
from loguru import logger

from actor_orch import events as _events
from actor_orch._latch import OneShot
from actor_orch.errors import AgentError
from actor_orch.retry import Backoff

__all__ = [
    "DEFAULT_MAX_RESTARTS",
    "Backoff",
    "Decision",
    "DefaultSupervisor",
    "Supervision",
    "SupervisorAction",
    "SupervisorPolicy",
    "resolve_restart_budget",
]

DEFAULT_MAX_RESTARTS = 3


class SupervisorAction(enum.Enum):
    """What the supervisor does with an agent whose request failed."""

    RESTART = "restart"
    STOP = "stop"
    ESCALATE = "escalate"


# The supervisor actor runs no user code, so it answers in microseconds; this only guards
# against a supervisor that was stopped from outside mid-ask.
_ASK_TIMEOUT_S = 10.0


@runtime_checkable
class SupervisorPolicy(Protocol):
    """Decides what happens to agent `name` after `error`.

    A policy may also define `restart_delay(name, attempt, error) -> float` (seconds to wait
    before the restart number `attempt`), a `max_restarts` attribute (the restart budget when
    neither the agent nor the orchestrator sets one) and a `within` attribute (seconds of a
    sliding window: more than the budget of restarts inside it stop the agent). It is called
    on the failing agent's thread, possibly for several agents at once.
    """

    def on_agent_error(self, name: str, error: AgentError) -> SupervisorAction: ...


class DefaultSupervisor:
    """Restart on retryable errors, stop on the rest.

    `max_restarts` is the budget of consecutive restarts (a success resets it). `within`
    (seconds) adds a sliding window: more than `max_restarts` restarts of one agent inside it
    stop that agent even when successes came between (the supervisor keeps the window per
    running agent, so steps never count against a spawned agent of the same name). `backoff`
    delays each restart, honouring `ModelThrottled.retry_after`. Stateless, so thread-safe and
    picklable.

    Example:
        >>> DefaultSupervisor(5, within=60.0, backoff=Backoff(jitter=False))
        DefaultSupervisor(max_restarts=5, within=60.0, backoff=Backoff(base_delay=0.1, \
max_delay=10.0, multiplier=2.0, jitter=False))
    """

    def __init__(
        self,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        *,
        within: float | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.max_restarts = check_restart_budget(max_restarts)
        if within is not None and (
            isinstance(within, bool)
            or not isinstance(within, int | float)
            or not math.isfinite(within)
            or within <= 0
        ):
            raise ValueError(f"within must be a finite number of seconds > 0, got {within!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None, got {backoff!r}")
        self.within = within
        self.backoff = backoff

    def on_agent_error(self, name: str, error: AgentError) -> SupervisorAction:
        return SupervisorAction.RESTART if error.is_retryable() else SupervisorAction.STOP

    def restart_delay(self, name: str, attempt: int, error: AgentError) -> float:
        return 0.0 if self.backoff is None else self.backoff.delay(attempt, error)

    def __repr__(self) -> str:
        return (
            f"DefaultSupervisor(max_restarts={self.max_restarts}, within={self.within!r}, "
            f"backoff={self.backoff!r})"
        )


def check_restart_budget(value: object, name: str = "max_restarts") -> int:
    """`value` if it is an int >= 0, else a `ValueError` naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def resolve_restart_budget(
    agent_max: int | None, orchestrator_max: int | None, policy: object | None
) -> int:
    """The agent's own budget, else the orchestrator's, else the policy's, else 3."""
    for candidate in (agent_max, orchestrator_max, getattr(policy, "max_restarts", None)):
        if isinstance(candidate, int) and not isinstance(candidate, bool) and candidate >= 0:
            return candidate
    return DEFAULT_MAX_RESTARTS


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What the supervisor decided: the action after the budget, the consecutive restart
    count it leads to (`attempt`, from 1 on RESTART) and the seconds to wait before it."""

    action: SupervisorAction
    attempt: int = 0
    delay: float = 0.0


# -- calls into user code, contained ---------------------------------------------------------


def call_policy(policy: SupervisorPolicy | None, name: str, error: AgentError) -> SupervisorAction:
    """The policy's action for `error`; no policy means ESCALATE; a broken policy means STOP."""
    if policy is None:
        return SupervisorAction.ESCALATE
    try:
        action = policy.on_agent_error(name, error)
    except BaseException:  # user code: contained whatever it raises
        logger.opt(exception=True).error("supervisor policy {!r} raised; stopping {}", policy, name)
        return SupervisorAction.STOP
    if not isinstance(action, SupervisorAction):
        logger.error("supervisor policy {!r} returned {!r}; stopping {}", policy, action, name)
        return SupervisorAction.STOP
    return action


def restart_delay(
    policy: SupervisorPolicy | None, name: str, attempt: int, error: AgentError
) -> float:
    """Seconds before restart `attempt`, from the policy's optional `restart_delay`; 0 if none
    or if it fails."""
    method = getattr(policy, "restart_delay", None)
    if not callable(method):
        return 0.0
    try:
        delay = float(method(name, attempt, error))
    except BaseException:  # user code: contained whatever it raises
        logger.opt(exception=True).error("restart_delay of {!r} raised; no delay", policy)
        return 0.0
    return delay if math.isfinite(delay) and delay > 0 else 0.0


# -- the supervisor actor ----------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _ChildRecord:
    """What the supervisor keeps about one child that has failed at least once."""

    consecutive: int = 0
    window: deque[float] = dataclasses.field(default_factory=deque)
    timer: threading.Timer | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Failed:
    child: object
    action: SupervisorAction
    budget: int
    within: float | None
    recovered: bool  # the child served a request since its last failure
    reply: OneShot[Decision]  # the child waits on it (a tenth of the cost of Pykka's ask)


@dataclasses.dataclass(frozen=True, slots=True)
class _Schedule:
    child: object
    delay: float
    deliver: Callable[[], object]


@dataclasses.dataclass(frozen=True, slots=True)
class _Forget:
    child: object


class SupervisorActor(pykka.ThreadingActor):
    """Owns the supervision state of every child of one orchestrator; runs no user code.

    Children are keys (any hashable object unique to one running agent or one step), so the
    budget and the window of one child never touch another with the same name.
    """

    use_daemon_thread = True

    def __init__(self, threads: list[threading.Thread]) -> None:
        super().__init__()
        self._threads = threads
        self._children: dict[object, _ChildRecord] = {}

    def on_start(self) -> None:
        # Reported so shutdown can join it: Pykka does not expose an actor's thread.
        self._threads.append(threading.current_thread())

    def on_receive(self, message: Any) -> None:
        if isinstance(message, _Failed):
            message.reply.set(self._decide(message))
        elif isinstance(message, _Schedule):
            self._schedule(message)
        elif isinstance(message, _Forget):
            record = self._children.pop(message.child, None)
            if record is not None and record.timer is not None:
                record.timer.cancel()

    def _decide(self, failure: _Failed) -> Decision:
        record = self._children.setdefault(failure.child, _ChildRecord())
        if failure.recovered:
            record.consecutive = 0
        if failure.action is not SupervisorAction.RESTART:
            return Decision(failure.action, record.consecutive)
        if record.consecutive >= failure.budget:
            return Decision(SupervisorAction.STOP, record.consecutive)
        if failure.within is not None:
            now = time.monotonic()
            window = record.window
            while window and window[0] <= now - failure.within:
                window.popleft()
            if len(window) >= failure.budget:
                return Decision(SupervisorAction.STOP, record.consecutive)
            window.append(now)
        record.consecutive += 1
        return Decision(SupervisorAction.RESTART, record.consecutive)

    def _schedule(self, message: _Schedule) -> None:
        if message.delay <= 0:
            _call_quietly(message.deliver)
            return
        record = self._children.setdefault(message.child, _ChildRecord())
        if record.timer is not None:
            record.timer.cancel()
        timer = threading.Timer(message.delay, _call_quietly, args=(message.deliver,))
        timer.daemon = True
        timer.name = "actor-orch-restart-timer"
        record.timer = timer
        timer.start()

    def on_stop(self) -> None:
        for record in self._children.values():
            if record.timer is not None:
                record.timer.cancel()
        self._children.clear()


def _call_quietly(deliver: Callable[[], object]) -> None:
    try:
        deliver()
    except Exception:  # the child ended meanwhile; nothing left to restart
        logger.opt(exception=True).debug("scheduled restart not delivered")


class Supervision:
    """The orchestrator's supervision: its policy, its event bus and its supervisor actor.

    Children (agent actors and steps) call [`on_failure`][] on their own thread; it returns the
    decision after publishing `AgentFailed` (and `AgentRestarted`). Thread-safe.
    """

    def __init__(self, policy: SupervisorPolicy | None, bus: _events.EventBus) -> None:
        self.policy = policy
        self.bus = bus
        self._lock = threading.Lock()
        self._actor: pykka.ActorRef[SupervisorActor] | None = None
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def _ref(self) -> pykka.ActorRef[SupervisorActor] | None:
        with self._lock:
            if self._actor is None and not self._stopped:
                self._actor = SupervisorActor.start(self._threads)
            return self._actor

    def start(self) -> None:
        """Start the supervisor actor now (it otherwise starts at the first failure)."""
        self._ref()

    def on_failure(
        self,
        child: object,
        name: str,
        error: AgentError,
        budget: int,
        events: _events.EventCallback | None = None,
        *,
        recovered: bool = False,
    ) -> Decision:
        """Decide on a failure of `child` (called on the child's thread) and publish it.

        `recovered`: the child served a request since its last failure, so its consecutive
        restarts start again from 0 (told here rather than on every success, which keeps
        messages off the success path).
        """
        policy = self.policy
        action = call_policy(policy, name, error)
        decision = self._budget(child, action, budget, getattr(policy, "within", None), recovered)
        if decision.action is SupervisorAction.RESTART:
            delay = restart_delay(policy, name, decision.attempt, error)
            decision = Decision(decision.action, decision.attempt, delay)
        log = logger.bind(agent=name)
        if decision.action is SupervisorAction.RESTART:
            log.warning(
                "agent {} failed ({}); restart {}/{} in {:.3f}s",
                name,
                error,
                decision.attempt,
                budget,
                decision.delay,
            )
        elif decision.action is SupervisorAction.STOP:
            log.warning("agent {} failed ({}); stopping it", name, error)
        else:
            log.debug("agent {} failed ({}); escalated to the caller", name, error)
        if events is not None or self.bus.live:
            self.publish(_events.AgentFailed(name, str(error), decision.action), events)
            if decision.action is SupervisorAction.RESTART:
                self.publish(_events.AgentRestarted(name, decision.attempt), events)
        return decision

    def _budget(
        self, child: object, action: SupervisorAction, budget: int, within: object, recovered: bool
    ) -> Decision:
        if action is not SupervisorAction.RESTART:
            return Decision(action)
        window = within if isinstance(within, int | float) and within > 0 else None
        ref = self._ref()
        if ref is None:  # shut down: no more restarts
            return Decision(SupervisorAction.STOP)
        reply: OneShot[Decision] = OneShot()
        try:
            ref.tell(_Failed(child, action, budget, window, recovered, reply))
        except pykka.ActorDeadError:
            return Decision(SupervisorAction.STOP)
        if not reply.wait(_ASK_TIMEOUT_S) or reply.value is None:
            return Decision(SupervisorAction.STOP)
        return reply.value

    def publish(self, event: _events.Event, events: _events.EventCallback | None = None) -> None:
        """Deliver `event` to the step's `events` callable (if any) and to the subscribers."""
        _events.deliver(events, event)
        self.bus.emit(event)

    def schedule_restart(self, child: object, delay: float, deliver: Callable[[], object]) -> None:
        """Have the supervisor call `deliver` (which tells the child to restart) after `delay`."""
        ref = self._ref()
        if ref is None:
            return
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(_Schedule(child, delay, deliver))

    def forget(self, child: object) -> None:
        """`child` ended: drop its state and cancel a pending restart."""
        self._tell(_Forget(child))

    def _tell(self, message: object) -> None:
        ref = self._actor
        if ref is None:
            return
        with contextlib.suppress(pykka.ActorDeadError):
            ref.tell(message)

    def stop(self, timeout: float) -> None:
        """Stop the supervisor actor (pending restarts are cancelled); bounded by `timeout`."""
        with self._lock:
            self._stopped = True
            ref, self._actor = self._actor, None
        if ref is None:
            return
        deadline = time.monotonic() + timeout
        with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
            ref.stop(block=True, timeout=max(0.01, timeout))
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))

    def __repr__(self) -> str:
        return f"<Supervision policy={self.policy!r} running={self._actor is not None}>"
