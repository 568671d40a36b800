"""Workflow combinators on any `AgentExecutor`: pipelines, loops and resumable runs.

All three reuse the bounded pool of `execute_steps_parallel`, so they never run more than the
executor's `concurrency_hint()` steps at once, and return results in input order.

Example:
    >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel, LocalExecutor
    >>> orch = AgentOrchestrator()
    >>> orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
    >>> def draft(prev, item):
    ...     return AgentStepSpec(f"draft-{item}", "echo", "draft", f"draft {item}")
    >>> def polish(prev, item):
    ...     return AgentStepSpec(f"polish-{item}", "echo", "polish", prev.output.upper())
    >>> [o.output for o in execute_pipeline(LocalExecutor(orch), ["a", "b"], [draft, polish])]
    ['DRAFT A', 'DRAFT B']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from loguru import logger

from actor_orch.checkpoint import CheckpointStore, spec_digest
from actor_orch.events import EventCallback
from actor_orch.executor import (
    AgentExecutor,
    AgentStepSpec,
    StepOutcome,
    execute_steps_parallel,
    to_outcome,
)
from actor_orch.graph import execute_graph
from actor_orch.pool import Failure, run_ordered

__all__ = [
    "Stage",
    "execute_loop",
    "execute_pipeline",
    "execute_steps_parallel_resumable",
    "spec_digest",
]

T = TypeVar("T")
Stage = Callable[[StepOutcome | None, T], AgentStepSpec | None]
"""`stage(previous outcome or None, item) -> the next spec, or None to end the chain`."""


def execute_pipeline(
    executor: AgentExecutor,
    items: Sequence[T],
    stages: Sequence[Stage[T]],
    events: EventCallback | None = None,
) -> list[StepOutcome | None]:
    """Run each item through `stages`, with no barrier between stages.

    Each item's chain moves on as soon as its own step finishes, while other items are still
    in earlier stages. A chain stops at a stage that returns None, at a failed step, or at a
    stage that raises (the item then gets a failed outcome naming the stage index and the
    error). Returns, in item order, the last outcome of each chain, or None when its first
    stage returned None.
    """
    stage_list = list(stages)
    for index, stage in enumerate(stage_list):
        if not callable(stage):
            raise TypeError(f"stages[{index}] must be callable, got {stage!r}")
    todo = list(enumerate(items))

    def run_chain(entry: tuple[int, T]) -> StepOutcome | None:
        item_index, item = entry
        previous: StepOutcome | None = None
        for stage_index, stage in enumerate(stage_list):
            try:
                spec = stage(previous, item)
            except Exception as err:
                message = f"pipeline stage {stage_index} raised {type(err).__name__}: {err}"
                logger.warning("item {}: {}", item_index, message)
                task_id = previous.task_id if previous else f"item-{item_index}"
                agent = previous.agent if previous else "pipeline"
                return StepOutcome.failed(task_id, agent, message)
            if spec is None:
                return previous
            if not isinstance(spec, AgentStepSpec):
                message = (
                    f"pipeline stage {stage_index} returned {type(spec).__name__}, "
                    "not an AgentStepSpec or None"
                )
                return StepOutcome.failed(f"item-{item_index}", "pipeline", message)
            previous = _execute_one(executor, spec, events)
            if not previous.success:
                return previous
        return previous

    results = run_ordered(run_chain, todo, executor.concurrency_hint())
    return [_chain_result(index, result) for (index, _), result in zip(todo, results, strict=True)]


def _execute_one(
    executor: AgentExecutor, spec: AgentStepSpec, events: EventCallback | None
) -> StepOutcome:
    """One step, with the same failure labelling as `execute_steps_parallel`."""
    try:
        return to_outcome(spec, executor.execute_step(spec, events))
    except Exception as err:
        return to_outcome(spec, Failure(err))


def _chain_result(index: int, result: object) -> StepOutcome | None:
    if result is None or isinstance(result, StepOutcome):
        return result
    # run_chain never raises, so only a dead worker gets here.
    return StepOutcome.failed(f"item-{index}", "pipeline", f"pipeline chain failed: {result}")


def execute_loop(
    executor: AgentExecutor,
    initial: Sequence[AgentStepSpec],
    max_iterations: int,
    next_round: Callable[[list[StepOutcome]], Sequence[AgentStepSpec] | None],
    events: EventCallback | None = None,
) -> list[list[StepOutcome]]:
    """Run rounds of parallel steps: `initial`, then whatever `next_round` asks for.

    Stops when `next_round` returns None or an empty list, or after `max_iterations` rounds
    (clamped to at least 1). Returns the outcomes of every round that ran, in order. An
    exception from `next_round` propagates, with a note naming the round it followed.
    """
    rounds = [execute_steps_parallel(executor, initial, events)]
    while len(rounds) < max(1, max_iterations):
        try:
            specs = next_round(rounds[-1])
        except Exception as err:
            err.add_note(f"execute_loop: next_round raised after round {len(rounds)}")
            raise
        if not specs:
            break
        rounds.append(execute_steps_parallel(executor, specs, events))
    return rounds


def execute_steps_parallel_resumable(
    executor: AgentExecutor,
    specs: Sequence[AgentStepSpec],
    workflow_id: str,
    store: CheckpointStore,
    events: EventCallback | None = None,
) -> list[StepOutcome]:
    """`execute_steps_parallel` that survives being stopped: finished steps are not re-run.

    Each successful outcome is saved to `store` under `workflow_id` as soon as its step ends
    (one step at a time, at a cost that does not grow with the steps saved before it). A later
    call with the same id returns the saved outcome of every step whose spec is unchanged and
    runs only the others (failed steps run again). A completed workflow keeps its checkpoint
    until `store.delete(workflow_id)`. Task ids must be unique. This is
    [`execute_graph`][actor_orch.execute_graph] without needs.
    """
    todo = list(specs)
    seen: set[str] = set()
    for index, spec in enumerate(todo):
        if not isinstance(spec, AgentStepSpec):
            raise TypeError(f"specs[{index}] is a {type(spec).__name__}, not an AgentStepSpec")
        if spec.task_id in seen:
            raise ValueError(f"specs[{index}]: duplicate task_id {spec.task_id!r}")
        seen.add(spec.task_id)
    return execute_graph(executor, todo, None, events, store=store, workflow_id=workflow_id)
