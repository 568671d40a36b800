"""The logic of one step, shared by every executor (local pool workers and Ray actors).

[`run_step`][] builds a fresh agent from the options factory, prompts it with the spec's
prompt, validates structured output (with repair re-prompts), and turns every failure into a
failed [`StepOutcome`][]. Failures go through the given [`Supervision`][]: the same policy
calls, budget and events as a spawned agent; a RESTART rebuilds the agent and runs the step
again.

Example:
    >>> from actor_orch import AgentOptions, EchoModel
    >>> from actor_orch.events import EventBus
    >>> spec = AgentStepSpec("t1", "echo", "say", "hello")
    >>> outcome = run_step(spec, lambda: AgentOptions(EchoModel()),
    ...                    supervision=Supervision(None, EventBus()), restart_budget=0)
    >>> outcome.output, outcome.success, outcome.stop_reason
    ('hello', True, 'stop')
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from loguru import logger

from actor_orch import _trace
from actor_orch.agent import Agent, AgentOptions
from actor_orch.errors import Aborted, AgentError, StreamError, StructuredOutputFailed
from actor_orch.events import EventCallback, StepFinished, StepStarted
from actor_orch.orchestrator import OptionsFactory, build_options
from actor_orch.spec import AgentStepSpec, StepOutcome
from actor_orch.structured import InvalidOutput, check_schema
from actor_orch.supervisor import Supervision, SupervisorAction
from actor_orch.types import AgentResult, StopReason, Usage

__all__ = ["run_step"]


def run_step(
    spec: AgentStepSpec,
    factory: OptionsFactory | None,
    *,
    supervision: Supervision,
    restart_budget: int,
    events: EventCallback | None = None,
    abort: threading.Event | None = None,
    prepare: Callable[[AgentOptions], AgentOptions] | None = None,
) -> StepOutcome:
    """Run one step on a fresh agent from `factory`; never raises.

    Publishes `StepStarted`, then `AgentFailed`/`AgentRestarted` per failure, then
    `StepFinished`, to `events` and to the supervision's subscribers. `abort` (set by a cancel
    or a timeout) stops the step at its next model or tool boundary and cuts a restart backoff
    short. `prepare` adds to the options what the executor gives agents (the delegate tool).
    The outcome carries the final stop reason, the usage summed over every prompt of the
    step (restarts and repairs included) and the step's wall time.
    """
    supervision.publish(StepStarted(spec.task_id, spec.agent, spec.parent_session_id), events)
    started = time.monotonic()
    usage = Usage()
    child = object()  # this step's identity for the supervisor
    hooks = _trace.HOOKS
    scope = None if hooks is None else hooks.start_agent(spec.agent, task_id=spec.task_id)
    try:
        outcome, usage = _run(
            spec,
            factory=factory,
            supervision=supervision,
            budget=restart_budget,
            events=events,
            abort=abort,
            child=child,
            prepare=prepare,
        )
    except BaseException as err:  # a bug or hostile user code must still give an outcome
        logger.opt(exception=True).error("step {} crashed", spec.task_id)
        outcome = StepOutcome.failed(spec.task_id, spec.agent, f"{type(err).__name__}: {err}")
    finally:
        supervision.forget(child)
    if hooks is not None:
        hooks.end(scope, None if outcome.success else "step_failed")
    duration = time.monotonic() - started
    outcome.usage = usage
    outcome.duration_s = duration
    if not outcome.success:
        logger.bind(task_id=spec.task_id, agent=spec.agent).warning(
            "step {} failed: {}", spec.task_id, outcome.output
        )
    finished = StepFinished(
        spec.task_id, spec.agent, outcome.success, duration, spec.parent_session_id
    )
    supervision.publish(finished, events)
    return outcome


def _run(
    spec: AgentStepSpec,
    *,
    factory: OptionsFactory | None,
    supervision: Supervision,
    budget: int,
    events: EventCallback | None,
    abort: threading.Event | None,
    child: object,
    prepare: Callable[[AgentOptions], AgentOptions] | None,
) -> tuple[StepOutcome, Usage]:
    usage = Usage()
    if factory is None:
        return StepOutcome.failed(
            spec.task_id, spec.agent, f"agent not registered: {spec.agent}"
        ), usage
    # One event for the whole step: it aborts the agent and cuts a restart backoff short.
    abort = abort if abort is not None else threading.Event()
    if spec.output_schema is not None:
        try:
            check_schema(spec.output_schema)
        except InvalidOutput as err:
            return StepOutcome.failed(spec.task_id, spec.agent, str(err)), usage
    while True:
        attempt = _Attempt(spec, abort)
        try:
            options = build_options(spec.agent, factory)
            if spec.max_steps is not None:
                options = options.replace(max_turns=spec.max_steps)
            if prepare is not None:
                options = prepare(options)
            agent = Agent(
                options,
                abort_event=abort,
                on_event=lambda event: supervision.publish(event, events),
                task_id=spec.task_id,
            )
            outcome = attempt.run(agent)
            return outcome, usage + attempt.usage
        except Aborted as err:
            return StepOutcome.failed(spec.task_id, spec.agent, f"cancelled: {err}"), usage
        except BaseException as caught:
            error = caught if isinstance(caught, AgentError) else StreamError(caught)
            usage += attempt.usage
            decision = supervision.on_failure(child, spec.agent, error, budget, events)
            if decision.action is not SupervisorAction.RESTART:
                message = f"{type(error).__name__}: {error}"
                return StepOutcome.failed(spec.task_id, spec.agent, message), usage
            if decision.delay > 0 and abort.wait(decision.delay):
                return StepOutcome.failed(
                    spec.task_id, spec.agent, "cancelled during backoff"
                ), usage


class _Attempt:
    """One try of a step on one agent; its usage is kept even when it fails."""

    def __init__(self, spec: AgentStepSpec, abort: threading.Event) -> None:
        self.spec = spec
        self.abort = abort
        self.usage = Usage()

    def run(self, agent: Agent) -> StepOutcome:
        spec = self.spec
        try:
            # With an output_schema the agent validates and repairs (the same machinery as
            # `send_message(output_type=...)`); a reply that never validates is a failed step.
            result = agent.prompt_text(spec.prompt, output_type=spec.output_schema)
        except StructuredOutputFailed as failure:
            return StepOutcome.failed(spec.task_id, spec.agent, str(failure))
        self.usage += result.usage
        why = _why_unfinished(result, spec)
        if why is not None:
            return _outcome(spec, result, why, success=False)
        outcome = _outcome(spec, result, result.text, success=True)
        if spec.output_schema is not None:
            outcome.structured = result.output
        return outcome


def _outcome(
    spec: AgentStepSpec, result: AgentResult, output: str, *, success: bool
) -> StepOutcome:
    return StepOutcome(
        spec.task_id,
        f"task-run-{spec.task_id}",
        spec.agent,
        output,
        success,
        stop_reason=result.stop_reason.value,
    )


def _why_unfinished(result: AgentResult, spec: AgentStepSpec) -> str | None:
    """Why `result` is not a finished answer, or None: a final reply, or one truncated at the
    model's token limit (kept: it is text the model produced, not a failure)."""
    if result.stop_reason is StopReason.STOP:
        return None
    if result.turn_limit_reached:
        limit = "" if spec.max_steps is None else f" (max_steps={spec.max_steps})"
        return f"step stopped at the turn limit{limit} before a final answer"
    if result.truncated:
        return None
    return f"step ended with stop_reason={result.stop_reason.value}"
