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
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from loguru import logger

from actor_orch.agent import Agent
from actor_orch.errors import (
    Aborted,
    AgentError,
    RequestTimeout,
    StructuredOutputFailed,
)
from actor_orch.events import (
    AgentFailed,
    AgentRestarted,
    EventCallback,
    StepFinished,
    StepStarted,
    deliver,
)
from actor_orch.orchestrator import OptionsFactory, build_options
from actor_orch.pool import Failure, run_ordered
from actor_orch.structured import InvalidOutput, check_schema, parse_structured, repair_prompt
from actor_orch.supervisor import SupervisorPolicy, decide
from actor_orch.types import AgentResult, StopReason, SupervisorAction

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


class AgentStepSpec(msgspec.Struct, omit_defaults=True, frozen=True):
    """One step: run `prompt` on the agent registered as `agent`.

    Optional fields left `None` are omitted from JSON, and payloads written before they
    existed still decode. Decoding checks types and `max_steps >= 1`, and a
    `msgspec.ValidationError` names the offending path (`$.agent`). Specs are immutable
    (hashable too, unless they carry an `output_schema` dict); the `with_*` builders return
    a new spec.

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


# Repair re-prompts after the first structured answer, so at most 3 answers in all.
MAX_STRUCTURED_REPAIRS = 2


def run_step(
    spec: AgentStepSpec,
    factory: OptionsFactory | None,
    *,
    policy: SupervisorPolicy | None,
    restart_budget: int,
    events: EventCallback | None = None,
    abort: threading.Event | None = None,
) -> StepOutcome:
    """Run one step on a fresh agent from `factory`; the step logic of every executor.

    Self-contained (no orchestrator, no actor), so a remote worker can run it with a pickled
    factory and policy. Emits `StepStarted`, then `AgentFailed`/`AgentRestarted` per failure,
    then `StepFinished` to `events`. Retryable failures rebuild the agent and run the step
    again as `policy` and `restart_budget` allow; `abort` (set by cancel) stops it at the next
    boundary. Never raises: every problem is a failed outcome that names it.
    """
    deliver(events, StepStarted(spec.task_id, spec.agent))
    started = time.monotonic()
    try:
        outcome = _run_step(
            spec, factory, policy=policy, restart_budget=restart_budget, events=events, abort=abort
        )
    except Exception as err:  # a bug or a hostile factory must still give an outcome
        logger.opt(exception=True).error("step {} crashed", spec.task_id)
        outcome = StepOutcome.failed(spec.task_id, spec.agent, f"{type(err).__name__}: {err}")
    deliver(
        events,
        StepFinished(spec.task_id, spec.agent, outcome.success, time.monotonic() - started),
    )
    return outcome


def _run_step(
    spec: AgentStepSpec,
    factory: OptionsFactory | None,
    *,
    policy: SupervisorPolicy | None,
    restart_budget: int,
    events: EventCallback | None,
    abort: threading.Event | None,
) -> StepOutcome:
    if factory is None:
        return StepOutcome.failed(spec.task_id, spec.agent, f"agent not registered: {spec.agent}")
    # One event for the whole step: it aborts the agent and cuts a restart backoff short.
    abort = abort if abort is not None else threading.Event()
    if spec.output_schema is not None:
        try:
            check_schema(spec.output_schema)
        except InvalidOutput as err:
            return StepOutcome.failed(spec.task_id, spec.agent, str(err))
    restarts = 0
    while True:
        try:
            options = build_options(spec.agent, factory)
            if spec.max_steps is not None:
                options = options.replace(max_turns=spec.max_steps)
            return _prompt(Agent(options, abort_event=abort), spec)
        except Aborted as err:
            return StepOutcome.failed(spec.task_id, spec.agent, f"cancelled: {err}")
        except AgentError as err:
            decision = decide(policy, spec.agent, err, restarts=restarts, budget=restart_budget)
            deliver(events, AgentFailed(spec.agent, str(err), decision.action))
            if decision.action is not SupervisorAction.RESTART:
                message = f"{type(err).__name__}: {err}"
                return StepOutcome.failed(spec.task_id, spec.agent, message)
            restarts = decision.attempt
            deliver(events, AgentRestarted(spec.agent, restarts))
            if decision.delay > 0 and abort.wait(decision.delay):
                return StepOutcome.failed(spec.task_id, spec.agent, "cancelled during backoff")


def _prompt(agent: Agent, spec: AgentStepSpec) -> StepOutcome:
    schema = spec.output_schema
    result = agent.prompt_text(spec.prompt, output_schema=schema)
    for attempt in range(1, MAX_STRUCTURED_REPAIRS + 2):
        if result.stop_reason is not StopReason.STOP:
            return StepOutcome.failed(spec.task_id, spec.agent, _why_not_stopped(result, spec))
        if schema is None:
            return StepOutcome(
                spec.task_id, f"task-run-{spec.task_id}", spec.agent, result.text, True
            )
        try:
            value = parse_structured(result.text, schema)
        except InvalidOutput as err:
            if attempt > MAX_STRUCTURED_REPAIRS:
                failure = StructuredOutputFailed(attempt, str(err))
                return StepOutcome.failed(spec.task_id, spec.agent, str(failure))
            result = agent.prompt_text(repair_prompt(str(err)), output_schema=schema)
            continue
        return StepOutcome(
            spec.task_id, f"task-run-{spec.task_id}", spec.agent, result.text, True, value
        )
    raise AssertionError("unreachable: the loop returns on its last attempt")


def _why_not_stopped(result: AgentResult, spec: AgentStepSpec) -> str:
    if result.stop_reason is StopReason.LENGTH:
        limit = "" if spec.max_steps is None else f" (max_steps={spec.max_steps})"
        return f"step stopped at the turn limit{limit} before a final answer"
    return f"step ended with stop_reason={result.stop_reason.value}"


class LocalExecutor(AgentExecutor):
    """Runs each step on a fresh agent built from the orchestrator's factory for `spec.agent`.

    Steps share nothing (no history leaks between them); failures follow the orchestrator's
    supervisor policy and restart budget. At most `max_parallel_tasks` run at once under
    `execute_steps_parallel`.

    Example:
        >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel
        >>> orch = AgentOrchestrator()
        >>> orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
        >>> specs = [AgentStepSpec(f"t{i}", "echo", "say", f"hello {i}") for i in range(3)]
        >>> [o.output for o in execute_steps_parallel(LocalExecutor(orch), specs)]
        ['hello 0', 'hello 1', 'hello 2']
        >>> unknown = AgentStepSpec("x", "nobody", "", "")
        >>> [lost] = execute_steps_parallel(LocalExecutor(orch), [unknown])
        >>> lost.output
        'agent not registered: nobody'
    """

    def __init__(
        self,
        orchestrator: AgentOrchestrator,
        *,
        max_parallel_tasks: int = DEFAULT_MAX_PARALLEL_TASKS,
    ) -> None:
        if not isinstance(max_parallel_tasks, int) or max_parallel_tasks < 1:
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
            policy=orchestrator.supervisor,
            restart_budget=budget,
            events=events,
            abort=current_step_abort(),
        )

    def __repr__(self) -> str:
        return (
            f"LocalExecutor(agents={self.orchestrator.names()}, "
            f"max_parallel_tasks={self.max_parallel_tasks})"
        )
