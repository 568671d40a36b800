"""Steps, their outcomes, and running many steps at once behind one barrier.

An [`AgentStepSpec`][] says which agent runs which prompt; an [`AgentExecutor`][] turns one
spec into a [`StepOutcome`][]; [`execute_steps_parallel`][] runs a list of specs on a
bounded pool of actors (see `actor_orch.pool`) and returns one outcome per spec, in input
order, whatever the steps do: raise, hang past the timeout, or get cancelled.

Example:
    >>> class Shout(AgentExecutor):
    ...     def execute_step(self, spec, events=None):
    ...         return StepOutcome(spec.task_id, f"s-{spec.task_id}", spec.agent,
    ...                            spec.prompt.upper(), True)
    >>> specs = [AgentStepSpec("a", "writer", "d", "hi"), AgentStepSpec("b", "writer", "d", "yo")]
    >>> [o.output for o in execute_steps_parallel(Shout(), specs)]
    ['HI', 'YO']
"""

from __future__ import annotations

import abc
import contextvars
import threading
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import msgspec
from loguru import logger

from actor_orch.errors import Aborted, RequestTimeout
from actor_orch.pool import Failure, run_ordered

__all__ = [
    "DEFAULT_MAX_PARALLEL_TASKS",
    "AgentExecutor",
    "AgentStepSpec",
    "EventCallback",
    "StepOutcome",
    "current_step_abort",
    "execute_steps_parallel",
]

DEFAULT_MAX_PARALLEL_TASKS = 8
"""Steps an executor runs at once unless its `concurrency_hint()` says otherwise."""

EventCallback = Callable[[Any], None]
"""Receives the events of a step (see `actor_orch.events`), synchronously."""


class AgentStepSpec(msgspec.Struct, omit_defaults=True, frozen=True):
    """One step: run `prompt` on the agent registered as `agent`.

    Optional fields left `None` are omitted from JSON, and payloads written before they
    existed still decode. Decoding checks types and `max_steps >= 1`, and a
    `msgspec.ValidationError` names the offending path (`$.agent`). Specs are immutable;
    the `with_*` builders return a new spec.

    Example:
        >>> spec = AgentStepSpec("t1", "explore", "scan", "list files")
        >>> capped = spec.with_max_steps(3)
        >>> spec.max_steps, capped.max_steps
        (None, 3)
        >>> msgspec.json.encode(spec)
        b'{"task_id":"t1","agent":"explore","description":"scan","prompt":"list files"}'
        >>> msgspec.json.decode(msgspec.json.encode(capped), type=AgentStepSpec) == capped
        True
        >>> msgspec.json.decode(b'{"task_id":"t","agent":1,"description":"d","prompt":"p"}',
        ...                     type=AgentStepSpec)
        Traceback (most recent call last):
        ...
        msgspec.ValidationError: Expected `str`, got `int` - at `$.agent`
    """

    task_id: str
    agent: str
    description: str
    prompt: str
    max_steps: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Most agent turns for this step; `None` leaves the agent's own limit."""
    parent_session_id: str | None = None
    output_schema: dict[str, Any] | None = None
    """JSON schema the step's output must satisfy; then `StepOutcome.structured` holds it."""

    def with_max_steps(self, max_steps: int) -> AgentStepSpec:
        """A copy whose step stops after `max_steps` (>= 1) agent turns."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        return msgspec.structs.replace(self, max_steps=max_steps)

    def with_parent_session_id(self, parent_session_id: str) -> AgentStepSpec:
        """A copy that records the session this step was spawned from."""
        return msgspec.structs.replace(self, parent_session_id=parent_session_id)

    def with_output_schema(self, schema: dict[str, Any]) -> AgentStepSpec:
        """A copy whose output must be JSON valid against `schema`."""
        return msgspec.structs.replace(self, output_schema=schema)


class StepOutcome(msgspec.Struct, omit_defaults=True):
    """What one step produced; `success=False` outcomes carry the reason in `output`.

    Example:
        >>> failed = StepOutcome.failed("t1", "explore", "boom")
        >>> failed.session_id, failed.success, failed.output
        ('task-run-t1', False, 'boom')
        >>> msgspec.json.encode(failed)
        b'{"task_id":"t1","session_id":"task-run-t1","agent":"explore","output":"boom","success":false}'
    """

    task_id: str
    session_id: str
    agent: str
    output: str
    success: bool
    structured: Any | None = None
    """The parsed output when the spec had an `output_schema` and it validated."""

    @classmethod
    def failed(cls, task_id: str, agent: str, message: str) -> StepOutcome:
        """A failed outcome for `task_id`, with the conventional `task-run-{task_id}` session."""
        return cls(
            task_id=task_id,
            session_id=f"task-run-{task_id}",
            agent=agent,
            output=message,
            success=False,
        )


class AgentExecutor(abc.ABC):
    """Runs one step at a time per call; `execute_steps_parallel` runs many of them.

    `execute_step` is called on pool worker threads, possibly several at once, so an
    executor must be thread-safe. It should return a `StepOutcome` (also for failures it
    expects); anything it raises becomes a failed outcome labelled with the error's type.
    Long steps should check [`current_step_abort`][] between turns and stop when it is set.

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


# Each pool worker thread runs in its own context, so this is per running step.
_step_abort: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "actor_orch_step_abort", default=None
)


def current_step_abort() -> threading.Event | None:
    """The abort event of the `execute_steps_parallel` call whose step runs on this thread.

    It is set when that call is cancelled, and when the call returns (so a step abandoned
    by a timeout can stop at its next boundary). `None` outside such a step. Threads that a
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
    """Run every spec with `executor`, at most `executor.concurrency_hint()` at once.

    Returns one outcome per spec, in input order. A step that raises, or returns something
    that is not a `StepOutcome`, becomes a failed outcome labelled with its task id and
    agent. With `timeout` (seconds, overall), steps unfinished when it expires come back
    failed and the call returns at once. Once `cancel` is set, steps not started come back
    failed with `"cancelled"` and running steps see [`current_step_abort`][] set.

    Raises:
        TypeError: an item of `specs` is not an `AgentStepSpec`.
        ValueError: `timeout` <= 0, or `concurrency_hint()` < 1.
    """
    todo = list(specs)
    for index, spec in enumerate(todo):
        if not isinstance(spec, AgentStepSpec):
            raise TypeError(f"specs[{index}] is a {type(spec).__name__}, not an AgentStepSpec")
    limit = executor.concurrency_hint()
    if limit < 1:
        raise ValueError(f"{type(executor).__name__}.concurrency_hint() must be >= 1, got {limit}")
    abort = threading.Event()

    def run_step(spec: AgentStepSpec) -> StepOutcome:
        token = _step_abort.set(abort)
        try:
            return executor.execute_step(spec, events)
        finally:
            _step_abort.reset(token)

    try:
        results = run_ordered(
            run_step, todo, limit, timeout=timeout, cancel=cancel, on_cancel=abort.set
        )
    finally:
        abort.set()
    return [_to_outcome(spec, result) for spec, result in zip(todo, results, strict=True)]


def _to_outcome(spec: AgentStepSpec, result: StepOutcome | Failure) -> StepOutcome:
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


# LocalExecutor lives below.
