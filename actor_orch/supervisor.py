"""Supervision: the policy (what to do with a failed agent) and the supervisor actor.

An agent that fails a request tells the supervisor; the supervisor asks the policy, applies the
restart budget and answers with a `Decision`. Successes never reach it: the agent keeps its own
count of consecutive restarts and resets it on success.

Example:
    >>> from actor_orch.errors import NetworkError, AuthError
    >>> sup = DefaultSupervisor(max_restarts=2)
    >>> sup.on_agent_error("a", NetworkError("reset"))
    <SupervisorAction.RESTART: 'restart'>
    >>> sup.on_agent_error("a", AuthError("bad key"))
    <SupervisorAction.STOP: 'stop'>
    >>> decide(sup, "a", NetworkError("reset"), restarts=2, budget=2).action
    <SupervisorAction.STOP: 'stop'>
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from typing import Protocol, runtime_checkable

import pykka
from loguru import logger

from actor_orch.errors import AgentError
from actor_orch.events import AgentFailed, EventBus
from actor_orch.retry import Backoff
from actor_orch.types import SupervisorAction

__all__ = [
    "DEFAULT_MAX_RESTARTS",
    "Backoff",
    "Decision",
    "DefaultSupervisor",
    "SupervisorAction",
    "SupervisorPolicy",
    "decide",
    "resolve_restart_budget",
]

DEFAULT_MAX_RESTARTS = 3


@runtime_checkable
class SupervisorPolicy(Protocol):
    """Decides what happens to agent `name` after `error`.

    A policy may also define `restart_delay(name, attempt, error) -> float` (seconds to wait
    before the restart number `attempt`) and a `max_restarts` attribute (the restart budget
    when neither the agent nor the orchestrator sets one).
    """

    def on_agent_error(self, name: str, error: AgentError) -> SupervisorAction: ...


class DefaultSupervisor:
    """Restart on retryable errors, stop on the rest.

    `max_restarts` is the budget of consecutive restarts (a success resets it). `within`
    (seconds) adds a sliding window per agent name: more than `max_restarts` restarts inside it
    stop the agent even when successes came between. `backoff` delays each restart (honouring
    `ModelThrottled.retry_after`). Thread-safe.

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
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        if within is not None and not within > 0:
            raise ValueError(f"within must be > 0 seconds or None, got {within!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None, got {backoff!r}")
        self._max_restarts = max_restarts
        self.within = within
        self.backoff = backoff
        self._lock = threading.Lock()
        self._recent: dict[str, deque[float]] = {}

    @property
    def max_restarts(self) -> int:
        return self._max_restarts

    def on_agent_error(self, name: str, error: AgentError) -> SupervisorAction:
        if not error.is_retryable():
            return SupervisorAction.STOP
        if self.within is None:
            return SupervisorAction.RESTART
        now = time.monotonic()
        with self._lock:
            recent = self._recent.setdefault(name, deque())
            while recent and recent[0] <= now - self.within:
                recent.popleft()
            if len(recent) >= self._max_restarts:
                return SupervisorAction.STOP
            recent.append(now)
        return SupervisorAction.RESTART

    def __getstate__(self) -> dict[str, object]:
        # Picklable for remote executors: the lock is per process; the window travels along.
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def restart_delay(self, name: str, attempt: int, error: AgentError) -> float:
        return 0.0 if self.backoff is None else self.backoff.delay(attempt, error)

    def __repr__(self) -> str:
        return (
            f"DefaultSupervisor(max_restarts={self._max_restarts}, within={self.within!r}, "
            f"backoff={self.backoff!r})"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What the supervisor decided: the action after the budget, the consecutive restart
    count it leads to (`attempt`, from 1 on RESTART) and the seconds to wait before it."""

    action: SupervisorAction
    attempt: int = 0
    delay: float = 0.0


def resolve_restart_budget(
    agent_max: int | None, orchestrator_max: int | None, policy: object | None
) -> int:
    """The agent's own budget, else the orchestrator's, else the policy's, else 3."""
    for candidate in (agent_max, orchestrator_max, getattr(policy, "max_restarts", None)):
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            return candidate
    return DEFAULT_MAX_RESTARTS


def decide(
    policy: SupervisorPolicy | None, name: str, error: AgentError, *, restarts: int, budget: int
) -> Decision:
    """Apply `policy` and the budget to a failure; `restarts` = consecutive restarts so far.

    No policy means ESCALATE. A RESTART beyond the budget becomes STOP. A policy that raises or
    answers something that is not a `SupervisorAction` stops the agent (and is logged).
    """
    if policy is None:
        return Decision(SupervisorAction.ESCALATE, restarts)
    try:
        action = policy.on_agent_error(name, error)
    except Exception:
        logger.opt(exception=True).error("supervisor policy {!r} raised; stopping {}", policy, name)
        return Decision(SupervisorAction.STOP, restarts)
    if not isinstance(action, SupervisorAction):
        logger.error("supervisor policy {!r} returned {!r}; stopping {}", policy, action, name)
        return Decision(SupervisorAction.STOP, restarts)
    if action is not SupervisorAction.RESTART:
        return Decision(action, restarts)
    if restarts >= budget:
        return Decision(SupervisorAction.STOP, restarts)
    attempt = restarts + 1
    delay = 0.0
    restart_delay = getattr(policy, "restart_delay", None)
    if callable(restart_delay):
        try:
            delay = max(0.0, float(restart_delay(name, attempt, error)))
        except Exception:
            logger.opt(exception=True).error("restart_delay of {!r} raised; no delay", policy)
    return Decision(SupervisorAction.RESTART, attempt, delay)


@dataclasses.dataclass(frozen=True, slots=True)
class AgentFailure:
    """The notification an agent actor sends its supervisor."""

    name: str
    error: AgentError
    restarts: int
    budget: int
    policy: SupervisorPolicy | None


def supervise(failure: AgentFailure, bus: EventBus) -> Decision:
    """Decide on `failure`, log it and publish `AgentFailed`."""
    decision = decide(
        failure.policy,
        failure.name,
        failure.error,
        restarts=failure.restarts,
        budget=failure.budget,
    )
    log = logger.bind(agent=failure.name)
    if decision.action is SupervisorAction.RESTART:
        log.warning(
            "agent {} failed ({}); restart {}/{} in {:.3f}s",
            failure.name,
            failure.error,
            decision.attempt,
            failure.budget,
            decision.delay,
        )
    elif decision.action is SupervisorAction.STOP:
        log.warning("agent {} failed ({}); stopping it", failure.name, failure.error)
    else:
        log.debug("agent {} failed ({}); escalated to the caller", failure.name, failure.error)
    bus.emit(AgentFailed(failure.name, str(failure.error), decision.action))
    return decision


class SupervisorActor(pykka.ThreadingActor):
    """One per orchestrator: serialises policy calls and failure events on its own thread."""

    use_daemon_thread = True

    def __init__(self, bus: EventBus, threads: list[threading.Thread]) -> None:
        super().__init__()
        self._bus = bus
        self._threads = threads

    def on_start(self) -> None:
        # Reported so shutdown can join it: Pykka does not expose an actor's thread.
        self._threads.append(threading.current_thread())

    def on_receive(self, message: object) -> Decision:
        if not isinstance(message, AgentFailure):
            raise TypeError(f"supervisor got an unexpected message: {message!r}")
        return supervise(message, self._bus)
