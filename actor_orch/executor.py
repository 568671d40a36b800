"""Running many steps at once: the executor interface, its pool, and `LocalExecutor`.

An [`AgentExecutor`][] turns one [`AgentStepSpec`][] into a [`StepOutcome`][];
[`execute_steps_parallel`][] sends a list of specs to the executor's own bounded pool of actors
(see `actor_orch.pool`) and returns one outcome per spec, in input order, whatever the steps
do: raise, hang past the timeout, or get cancelled. The pool belongs to the executor, so its
limit holds across every thread that calls `execute_steps_parallel` on it.

Example:
    >>> class Shout(AgentExecutor):
    ...     def execute_step(self, spec, events=None):
    ...         return StepOutcome(spec.task_id, f"s-{spec.task_id}", spec.agent,
    ...                            spec.prompt.upper(), True)
    >>> specs = [AgentStepSpec("a", "writer", "d", "hi"), AgentStepSpec("b", "writer", "d", "yo")]
    >>> with Shout() as shout:
    ...     [o.output for o in execute_steps_parallel(shout, specs)]
    ['HI', 'YO']
"""

from __future__ import annotations

import abc
import contextvars
import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from loguru import logger

from actor_orch import _trace
from actor_orch.delegation import with_delegation
from actor_orch.errors import Aborted, RequestTimeout
from actor_orch.events import EventCallback
from actor_orch.pool import ActorPool, Failure
from actor_orch.spec import AgentStepSpec, StepOutcome
from actor_orch.step import run_step

if TYPE_CHECKING:
    from actor_orch.orchestrator import AgentOrchestrator

__all__ = [
    "DEFAULT_MAX_PARALLEL_TASKS",
    "AgentExecutor",
    "AgentStepSpec",
    "LocalExecutor",
    "StepOutcome",
    "current_step_abort",
    "execute_steps_parallel",
    "run_step",
    "to_outcome",
]

DEFAULT_MAX_PARALLEL_TASKS = 8
"""Steps an executor runs at once unless its `concurrency_hint()` says otherwise."""

_pools_lock = threading.Lock()


class AgentExecutor(abc.ABC):
    """Runs one step at a time per call; `execute_steps_parallel` runs many of them.

    Each executor owns a pool of `concurrency_hint()` worker actors, made on first use and
    shared by every caller; `close()` (or leaving a `with` block) stops it. `execute_step` is
    called on those workers, several at once, so an executor must be thread-safe. It should
    return a `StepOutcome` (also for failures it expects); anything it raises becomes a failed
    outcome labelled with the error's type. Long steps should check [`current_step_abort`][]
    between turns and stop when it is set.

    Example:
        >>> class Echo(AgentExecutor):
        ...     def execute_step(self, spec, events=None):
        ...         return StepOutcome(spec.task_id, f"task-run-{spec.task_id}", spec.agent,
        ...                            spec.prompt, True)
        >>> Echo().concurrency_hint()
        8
        >>> Echo().execute_step(AgentStepSpec("t", "a", "d", "hello")).output
        'hello'
    """

    @abc.abstractmethod
    def execute_step(self, spec: AgentStepSpec, events: EventCallback | None = None) -> StepOutcome:
        """Run `spec` to completion and describe how it went."""

    def concurrency_hint(self) -> int:
        """Most steps worth running at once with this executor (>= 1)."""
        return DEFAULT_MAX_PARALLEL_TASKS

    def step_pool(self) -> ActorPool:
        """The executor's pool of `concurrency_hint()` workers, made on first use.

        Raises:
            RuntimeError: the executor was closed.
        """
        pool: ActorPool | None = self.__dict__.get("_actor_orch_pool")
        if pool is not None:
            if pool.closed:
                raise RuntimeError(f"{type(self).__name__} is closed")
            return pool
        limit = self.concurrency_hint()
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(
                f"{type(self).__name__}.concurrency_hint() must be an int >= 1, got {limit!r}"
            )
        with _pools_lock:
            pool = self.__dict__.get("_actor_orch_pool")
            if pool is None:
                pool = ActorPool(limit)
                self.__dict__["_actor_orch_pool"] = pool
                # An executor dropped without close() still releases its idle workers.
                weakref.finalize(self, pool.close, 0.0)
        return pool

    def close(self) -> None:
        """Stop the executor's pool: queued steps come back `Aborted`, running ones finish.

        Idempotent; later calls of `execute_steps_parallel` on it raise `RuntimeError`.
        """
        with _pools_lock:
            pool: ActorPool | None = self.__dict__.get("_actor_orch_pool")
            if pool is None:
                pool = ActorPool(1)
                self.__dict__["_actor_orch_pool"] = pool
        pool.close()

    def __enter__(self) -> AgentExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The worker running a step sets this, so the step (and code it calls) can see its call's abort.
_step_abort: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "actor_orch_step_abort", default=None
)


def current_step_abort() -> threading.Event | None:
    """The abort event of the `execute_steps_parallel` call whose step runs on this thread.

    It is set when that call is cancelled, when its timeout expires, and when it returns (so a
    step it abandoned stops at its next boundary). `None` outside such a step. Threads that a
    step starts itself do not inherit it; pass the event on explicitly.
    """
    return _step_abort.get()


def execute_steps_parallel(
    executor: AgentExecutor,
    specs: Iterable[AgentStepSpec],
    events: EventCallback | None = None,
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
) -> list[StepOutcome]:
    """Run every spec on `executor`'s pool; never more than `concurrency_hint()` at once.

    Returns one outcome per spec, in input order, and every event of a step is delivered
    before the step's outcome is returned. A step that raises, or returns something that is not
    a `StepOutcome`, becomes a failed outcome labelled with its task id and agent. With
    `timeout` (seconds, overall), steps unfinished when it expires come back failed at once.
    Once `cancel` is set, steps not started come back failed with `"cancelled"`, running steps
    see [`current_step_abort`][] set, and the call returns within 0.5 s, every step not
    finished by then a failed outcome, even when a model call blocks.

    The limit belongs to the executor: any number of threads calling this on one executor at
    once share its `concurrency_hint()` workers. A step may itself call this on the same
    executor; the nested steps then run in the place of the waiting step.

    Raises:
        TypeError: an item of `specs` is not an `AgentStepSpec`, or `cancel` is not an Event.
        ValueError: `timeout` is not a finite number > 0, or `concurrency_hint()` < 1.
        RuntimeError: the executor was closed.
    """
    todo = list(specs)
    for index, spec in enumerate(todo):
        if not isinstance(spec, AgentStepSpec):
            raise TypeError(f"specs[{index}] is a {type(spec).__name__}, not an AgentStepSpec")
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise TypeError(f"cancel must be a threading.Event or None, got {cancel!r}")
    if events is not None and not callable(events):
        raise TypeError(f"events must be callable or None, got {events!r}")
    pool = executor.step_pool()
    abort = threading.Event()
    hooks = _trace.HOOKS
    context = None if hooks is None else hooks.capture()  # spans of steps nest under ours

    def run_one(spec: AgentStepSpec) -> StepOutcome:
        token = _step_abort.set(abort)
        trace_token = None if hooks is None else hooks.attach(context)
        try:
            return executor.execute_step(spec, events)
        finally:
            if hooks is not None:
                hooks.detach(trace_token)
            _step_abort.reset(token)

    try:
        results = pool.map(run_one, todo, timeout=timeout, cancel=cancel, on_cancel=abort.set)
    finally:
        abort.set()
    return [to_outcome(spec, result) for spec, result in zip(todo, results, strict=True)]


def to_outcome(spec: AgentStepSpec, result: object) -> StepOutcome:
    """`result` if it is a `StepOutcome`, else a failed outcome labelled with `spec`."""
    if isinstance(result, StepOutcome):
        return result
    if isinstance(result, Failure):
        error = result.error
        if isinstance(error, Aborted | RequestTimeout):
            message = str(error)
        else:
            message = f"{type(error).__name__}: {error}"
    else:
        message = f"executor returned {type(result).__name__}, not a StepOutcome"
    logger.bind(task_id=spec.task_id, agent=spec.agent).warning("step failed: {}", message)
    return StepOutcome.failed(spec.task_id, spec.agent, message)


class LocalExecutor(AgentExecutor):
    """Runs each step on a fresh agent built from the orchestrator's factory for `spec.agent`.

    Steps share nothing (no history leaks between them). Their failures go through the
    orchestrator's supervision, exactly as a spawned agent's: the same policy, budget and
    events, delivered to `orchestrator.subscribe` callbacks as well as to `events`. The
    executor owns a pool of `max_parallel_tasks` worker actors reused across calls; use it as a
    context manager or call `close()`.

    Example:
        >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel
        >>> orch = AgentOrchestrator()
        >>> orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
        >>> specs = [AgentStepSpec(f"t{i}", "echo", "say", f"hello {i}") for i in range(3)]
        >>> with LocalExecutor(orch, max_parallel_tasks=2) as executor:
        ...     [o.output for o in execute_steps_parallel(executor, specs)]
        ['hello 0', 'hello 1', 'hello 2']
        >>> with LocalExecutor(orch) as executor:
        ...     execute_steps_parallel(executor, [AgentStepSpec("x", "nobody", "", "")])[0].output
        'agent not registered: nobody'
    """

    def __init__(
        self,
        orchestrator: AgentOrchestrator,
        *,
        max_parallel_tasks: int = DEFAULT_MAX_PARALLEL_TASKS,
    ) -> None:
        from actor_orch.orchestrator import AgentOrchestrator  # noqa: PLC0415 (import cycle)

        if not isinstance(orchestrator, AgentOrchestrator):
            raise TypeError(f"orchestrator must be an AgentOrchestrator, got {orchestrator!r}")
        if (
            not isinstance(max_parallel_tasks, int)
            or isinstance(max_parallel_tasks, bool)
            or max_parallel_tasks < 1
        ):
            raise ValueError(f"max_parallel_tasks must be an int >= 1, got {max_parallel_tasks!r}")
        self.orchestrator = orchestrator
        self.max_parallel_tasks = max_parallel_tasks

    def concurrency_hint(self) -> int:
        return self.max_parallel_tasks

    def execute_step(self, spec: AgentStepSpec, events: EventCallback | None = None) -> StepOutcome:
        orchestrator = self.orchestrator
        factory = orchestrator.options_factory(spec.agent)
        budget = orchestrator.restart_budget(spec.agent) if factory is not None else 0
        return run_step(
            spec,
            factory,
            supervision=orchestrator.supervision,
            restart_budget=budget,
            events=events,
            abort=current_step_abort(),
            prepare=lambda options: with_delegation(
                orchestrator,
                options,
                spec.agent,
                parent_session_id=f"task-run-{spec.task_id}",
                depth=orchestrator.delegation_depth(spec.task_id),
                task_prefix=spec.task_id,
            ),
        )

    def __enter__(self) -> LocalExecutor:
        return self

    def __repr__(self) -> str:
        pool: Any = self.__dict__.get("_actor_orch_pool")
        state = "" if pool is None else f" {pool!r}"
        return (
            f"LocalExecutor(agents={self.orchestrator.names()}, "
            f"max_parallel_tasks={self.max_parallel_tasks}){state}"
        )
