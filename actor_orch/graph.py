"""Workflow graphs: steps that need other steps, each started as soon as its needs succeed.

[`execute_graph`][] runs specs on an executor's bounded pool like `execute_steps_parallel`,
but a step may *need* others: it starts once every step it needs has succeeded (there is no
barrier: an unrelated slow step holds nothing up), and its prompt may use their results through
templates, rendered just before it starts:

- `{{ steps.ID.output }}`: the output text of step `ID`;
- `{{ steps.ID.structured.FIELD }}` (nested fields by dots, list items by index): a field of
  its structured output (a string as it is, anything else as JSON); `{{ steps.ID.structured }}`
  is the whole value as JSON.

A step whose need failed is not run: its outcome is a failure naming that need. The graph is
checked before anything runs ([`check_graph`][]): unknown needs, cycles, and templates that
name a step that is not needed raise a [`GraphError`][] naming the spec and field.

Example:
    >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel, LocalExecutor
    >>> orch = AgentOrchestrator()
    >>> orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
    >>> specs = [
    ...     AgentStepSpec("facts", "echo", "research", "ants farm fungi"),
    ...     AgentStepSpec("draft", "echo", "write", "Draft: {{ steps.facts.output }}"),
    ... ]
    >>> with LocalExecutor(orch) as executor:
    ...     [o.output for o in execute_graph(executor, specs, {"draft": ["facts"]})]
    ['ants farm fungi', 'Draft: ants farm fungi']
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from loguru import logger

from actor_orch.checkpoint import (
    CheckpointedStep,
    CheckpointStore,
    save_step,
    spec_digest,
)
from actor_orch.errors import Aborted, RequestTimeout
from actor_orch.events import EventCallback
from actor_orch.executor import AgentExecutor, to_outcome

# The abort contextvar of executor.py: a step run here must see the same `current_step_abort()`
# as one run by execute_steps_parallel, so it is set by the same variable.
from actor_orch.executor import _step_abort as _STEP_ABORT
from actor_orch.pool import ActorPool, Failure, PoolItem, PoolSlot
from actor_orch.spec import AgentStepSpec, StepOutcome

__all__ = [
    "GraphError",
    "StepReference",
    "check_graph",
    "execute_graph",
    "render_prompt",
    "template_references",
]

# After a cancel, how long running steps get to notice their abort before they are abandoned
# (the same grace as execute_steps_parallel's, so a cancel returns within 0.5 s).
DEFAULT_CANCEL_GRACE_S = 0.35
# How often the scheduling thread looks at `cancel` and the deadline while it waits.
_POLL_S = 0.05

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NAME = r"[^\s.{}]+"
_REFERENCE = re.compile(rf"\s*steps\.({_NAME})\.(output|structured)((?:\.{_NAME})*)\s*")


@dataclass(frozen=True, slots=True)
class StepReference:
    """One `{{ steps.ID.output }}` / `{{ steps.ID.structured.FIELD }}` in a prompt.

    `text` is the template as written, `task_id` the step it reads, `field` `"output"` or
    `"structured"`, and `path` the fields below `structured` (empty for the whole value).

    Example:
        >>> template_references("Use {{ steps.facts.structured.city.name }}")
        [StepReference(text='{{ steps.facts.structured.city.name }}', task_id='facts', \
field='structured', path=('city', 'name'))]
    """

    text: str
    task_id: str
    field: str
    path: tuple[str, ...] = ()


def template_references(prompt: str) -> list[StepReference]:
    """Every template of `prompt`, in order.

    Raises:
        ValueError: a `{{ ... }}` that is not a step reference (the message quotes it).
    """
    found = []
    for match in _TEMPLATE.finditer(prompt):
        reference = _REFERENCE.fullmatch(match.group(1))
        if reference is None:
            raise ValueError(
                f"{match.group(0)} is not a template this format knows; use "
                "{{ steps.ID.output }} or {{ steps.ID.structured.FIELD }}"
            )
        task_id, field, path = reference.groups()
        found.append(StepReference(match.group(0), task_id, field, tuple(path.split(".")[1:])))
    return found


def render_prompt(prompt: str, outcomes: Mapping[str, StepOutcome]) -> str:
    """`prompt` with each template replaced by the value it names in `outcomes` (by task id).

    Raises:
        ValueError: a malformed template, a step missing from `outcomes`, or a structured
            field its outcome does not have.

    Example:
        >>> done = StepOutcome("r", "task-run-r", "a", '{"n": 3}', True, structured={"n": 3})
        >>> render_prompt("n={{ steps.r.structured.n }} raw={{steps.r.output}}", {"r": done})
        'n=3 raw={"n": 3}'
    """
    references = {ref.text: ref for ref in template_references(prompt)}
    if not references:
        return prompt
    return _TEMPLATE.sub(lambda m: _value(references[m.group(0)], outcomes), prompt)


def _value(reference: StepReference, outcomes: Mapping[str, StepOutcome]) -> str:
    outcome = outcomes.get(reference.task_id)
    if outcome is None:
        raise ValueError(f"{reference.text}: no outcome of step {reference.task_id!r}")
    if reference.field == "output":
        return outcome.output
    value: Any = outcome.structured
    if value is None:
        raise ValueError(f"{reference.text}: step {reference.task_id!r} has no structured output")
    for depth, name in enumerate(reference.path):
        if isinstance(value, dict) and name in value:
            value = value[name]
        elif isinstance(value, list) and name.isdigit() and int(name) < len(value):
            value = value[int(name)]
        else:
            missing = ".".join(reference.path[: depth + 1])
            raise ValueError(
                f"{reference.text}: the structured output of step {reference.task_id!r} "
                f"has no field {missing!r}"
            )
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


class GraphError(ValueError):
    """A graph that cannot run: an unknown need, a cycle, or a template naming a step not needed.

    `index` is the position of the offending spec, `field` the place inside it (such as
    `".needs[1]"` or `".prompt"`), `problem` the explanation. `str()` reads
    `specs[2].needs[0]: ...`; [`at`][] puts another prefix in front (the CLI uses `$.steps`).

    Example:
        >>> specs = [AgentStepSpec("a", "x", "", "p"), AgentStepSpec("b", "x", "", "q")]
        >>> check_graph(specs, {"a": ["b"], "b": ["a"]})
        Traceback (most recent call last):
        ...
        actor_orch.graph.GraphError: specs[0].needs[0]: dependency cycle: a -> b -> a
    """

    def __init__(self, index: int, field: str, problem: str) -> None:
        self.index = index
        self.field = field
        self.problem = problem
        super().__init__(self.at("specs"))

    def at(self, prefix: str) -> str:
        """The message with `prefix` naming the list of specs (`"$.steps"` -> `$.steps[2]...`)."""
        return f"{prefix}[{self.index}]{self.field}: {self.problem}"


@dataclass(slots=True)
class _Graph:
    """A checked graph, by spec index."""

    needs: list[list[int]]
    dependents: list[list[int]]
    templated: list[bool]  # whether the prompt has templates (to skip rendering otherwise)


def check_graph(specs: Sequence[AgentStepSpec], needs: Mapping[str, Iterable[str]]) -> None:
    """Check that `specs` with `needs` (task id -> task ids it needs) can run as a graph.

    Raises:
        TypeError: an item of `specs` is not an `AgentStepSpec`, or a needs entry is not a
            list of str.
        ValueError: a key of `needs` is not a task id of `specs`.
        GraphError: duplicate task ids, an unknown need, a need listed twice, a cycle, a
            malformed template, a template naming a step that is not needed, or one reading
            the structured output of a step without an `output_schema`.

    Example:
        >>> check_graph([AgentStepSpec("a", "x", "", "{{ steps.b.output }}")], {})
        Traceback (most recent call last):
        ...
        actor_orch.graph.GraphError: specs[0].prompt: {{ steps.b.output }} refers to step 'b', \
which is not in this step's needs
    """
    _compile(specs, needs)


def _compile(specs: Sequence[AgentStepSpec], needs: Mapping[str, Iterable[str]]) -> _Graph:
    index_of: dict[str, int] = {}
    for index, spec in enumerate(specs):
        if not isinstance(spec, AgentStepSpec):
            raise TypeError(f"specs[{index}] is a {type(spec).__name__}, not an AgentStepSpec")
        if spec.task_id in index_of:
            first = index_of[spec.task_id]
            raise GraphError(
                index, ".task_id", f"duplicate task id {spec.task_id!r} (first used at [{first}])"
            )
        index_of[spec.task_id] = index
    if not isinstance(needs, Mapping):
        raise TypeError(f"needs must be a mapping of task id to task ids, got {needs!r}")
    for key in needs:
        if key not in index_of:
            raise ValueError(f"needs[{key!r}]: {key!r} is not the task id of any spec")
    graph = _Graph([[] for _ in specs], [[] for _ in specs], [False] * len(specs))
    for index, spec in enumerate(specs):
        wanted = needs.get(spec.task_id, ())
        if isinstance(wanted, str | bytes) or not isinstance(wanted, Iterable):
            raise TypeError(f"needs[{spec.task_id!r}] must be a list of task ids, got {wanted!r}")
        listed: set[str] = set()
        for position, need in enumerate(wanted):
            where = f".needs[{position}]"
            if not isinstance(need, str):
                raise TypeError(f"needs[{spec.task_id!r}][{position}] must be a str, got {need!r}")
            if need not in index_of:
                raise GraphError(index, where, f"unknown step {need!r}: no step has this task id")
            if need in listed:
                raise GraphError(index, where, f"{need!r} is listed twice")
            listed.add(need)
            graph.needs[index].append(index_of[need])
            graph.dependents[index_of[need]].append(index)
        try:
            references = template_references(spec.prompt)
        except ValueError as err:
            raise GraphError(index, ".prompt", str(err)) from None
        graph.templated[index] = bool(references)
        for reference in references:
            if reference.task_id not in listed:
                raise GraphError(
                    index,
                    ".prompt",
                    f"{reference.text} refers to step {reference.task_id!r}, which is not in "
                    "this step's needs",
                )
            if reference.field == "structured":
                source = specs[index_of[reference.task_id]]
                if source.output_schema is None:
                    raise GraphError(
                        index,
                        ".prompt",
                        f"{reference.text}: step {reference.task_id!r} has no output_schema, "
                        "so it has no structured output",
                    )
    _check_acyclic(specs, graph)
    return graph


def _check_acyclic(specs: Sequence[AgentStepSpec], graph: _Graph) -> None:
    """Raise a GraphError naming a cycle, if there is one (Kahn's algorithm, then a walk)."""
    waiting = [len(needs) for needs in graph.needs]
    ready = deque(i for i, count in enumerate(waiting) if count == 0)
    while ready:
        for dependent in graph.dependents[ready.popleft()]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    stuck = [i for i, count in enumerate(waiting) if count > 0]
    if not stuck:
        return
    # Every stuck step needs some stuck step, so walking such needs must come back on itself.
    path, seen = [stuck[0]], {stuck[0]: 0}
    while True:
        step = next(n for n in graph.needs[path[-1]] if waiting[n] > 0)
        if step in seen:
            cycle = [*path[seen[step] :], step]
            break
        seen[step] = len(path)
        path.append(step)
    start = min(range(len(cycle) - 1), key=lambda k: cycle[k])  # report at the earliest spec
    cycle = [*cycle[start:-1], *cycle[:start], cycle[start]]
    names = " -> ".join(specs[i].task_id for i in cycle)
    position = graph.needs[cycle[0]].index(cycle[1])
    raise GraphError(cycle[0], f".needs[{position}]", f"dependency cycle: {names}")


def execute_graph(
    executor: AgentExecutor,
    specs: Sequence[AgentStepSpec],
    needs: Mapping[str, Iterable[str]] | None = None,
    events: EventCallback | None = None,
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    on_outcome: Callable[[int, StepOutcome], None] | None = None,
    store: CheckpointStore | None = None,
    workflow_id: str | None = None,
    step_key: Callable[[AgentStepSpec], str] | None = None,
    cancel_grace: float = DEFAULT_CANCEL_GRACE_S,
) -> list[StepOutcome]:
    """Run `specs` as a graph on `executor`'s pool; one outcome per spec, in input order.

    `needs` maps a task id to the task ids it needs (steps not in it need nothing). A step
    starts as soon as all it needs has succeeded, never more than `concurrency_hint()` steps
    of the executor at once; its prompt's templates are rendered just before (a template
    whose value is missing fails the step without running it). A step whose need failed is
    not run and fails naming that need.

    `timeout`, `cancel` and `events` behave as in `execute_steps_parallel`: once `cancel` is
    set (or the timeout expires) no step starts, steps not started come back failed with
    `"cancelled"` (or the timeout message), running steps see `current_step_abort()` set and
    get `cancel_grace` seconds (default 0.35; `math.inf` waits for them) to end before they
    are abandoned and answered failed; the call returns every outcome.

    `on_outcome(index, outcome)` is called on the calling thread as each outcome is known,
    in the order they become known (a callback that raises is logged, the run goes on).

    With `store` and `workflow_id`, the run resumes: each successful outcome is saved as its
    step ends, keyed by task id with `step_key(spec)` (default: a digest of the spec, its
    prompt as rendered); a step whose saved key matches is not run, its saved outcome is
    returned. A step therefore runs again when it failed, when its spec changed, or when a
    step it reads templates from produced different text.

    Called from a step running on the same executor, the graph runs its steps one at a time
    in the caller's place (so nesting cannot deadlock the pool).

    Raises:
        TypeError, ValueError, GraphError: bad arguments or a graph that cannot run (see
            [`check_graph`][]); nothing has run then.
        RuntimeError: the executor was closed.
    """
    todo = list(specs)
    graph = _compile(todo, needs or {})
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise TypeError(f"cancel must be a threading.Event or None, got {cancel!r}")
    for name, function in (("events", events), ("on_outcome", on_outcome)):
        if function is not None and not callable(function):
            raise TypeError(f"{name} must be callable or None, got {function!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 1e12
    ):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if isinstance(cancel_grace, bool) or not isinstance(cancel_grace, int | float):
        raise TypeError(f"cancel_grace must be a number of seconds, got {cancel_grace!r}")
    if not cancel_grace >= 0:
        raise ValueError(f"cancel_grace must be >= 0 (math.inf: no limit), got {cancel_grace!r}")
    if (store is None) != (workflow_id is None):
        raise ValueError("store and workflow_id go together: give both or neither")
    if workflow_id is not None and not isinstance(workflow_id, str):
        raise TypeError(f"workflow_id must be a str, got {workflow_id!r}")
    pool = executor.step_pool()
    run = _GraphRun(executor, pool, todo, graph, events, on_outcome, cancel_grace)
    if store is not None and workflow_id is not None:
        run.resume_from(store, workflow_id, step_key or spec_digest)
    return run.run(timeout, cancel)


class _GraphRun:
    """One `execute_graph` call. Its state is touched only by the calling thread; workers
    report finished steps through `finished`, a queue."""

    def __init__(  # noqa: PLR0917 (private; called once, below)
        self,
        executor: AgentExecutor,
        pool: ActorPool,
        specs: list[AgentStepSpec],
        graph: _Graph,
        events: EventCallback | None,
        on_outcome: Callable[[int, StepOutcome], None] | None,
        cancel_grace: float,
    ) -> None:
        self.executor = executor
        self.pool = pool
        self.specs = specs
        self.graph = graph
        self.events = events
        self.on_outcome = on_outcome
        self.cancel_grace = cancel_grace
        self.outcomes: list[StepOutcome | None] = [None] * len(specs)
        self.rendered: list[AgentStepSpec | None] = [None] * len(specs)
        self.waiting = [len(needs) for needs in graph.needs]
        self.left = len(specs)
        self.ready: deque[int] = deque(i for i, count in enumerate(self.waiting) if count == 0)
        self.launched: set[int] = set()  # submitted to the pool, not answered yet
        self.started = [False] * len(specs)  # written by workers when a step really starts
        self.finished: queue.SimpleQueue[tuple[int, object]] = queue.SimpleQueue()
        self.abort = threading.Event()
        # A graph run from inside one of the pool's items holds a place of the pool: while it
        # waits, it runs its own queued steps in that place (free workers take the others),
        # so it never waits for the place it holds.
        self.slot = pool.lent_slot()
        self.lendable: deque[PoolItem[int, object]] = deque()  # submitted, in order, maybe queued
        self.store: CheckpointStore | None = None
        self.workflow_id = ""
        self.step_key: Callable[[AgentStepSpec], str] = spec_digest
        self.saved: dict[str, CheckpointedStep] = {}
        self.keys: list[str | None] = [None] * len(specs)

    def resume_from(
        self, store: CheckpointStore, workflow_id: str, step_key: Callable[[AgentStepSpec], str]
    ) -> None:
        self.store, self.workflow_id, self.step_key = store, workflow_id, step_key
        try:
            checkpoint = store.load(workflow_id)
        except Exception as err:  # a third-party store must not break the run
            logger.opt(exception=err).warning("checkpoint store {!r} failed to load", store)
            checkpoint = None
        self.saved = {} if checkpoint is None else dict(checkpoint.steps)
        logger.debug("workflow {}: {} steps in the checkpoint", workflow_id, len(self.saved))

    # -- the scheduling loop (calling thread) ----------------------------------------------

    def run(self, timeout: float | None, cancel: threading.Event | None) -> list[StepOutcome]:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._start_ready(cancel)
            while self.left:
                if cancel is not None and cancel.is_set():
                    self._stop(Aborted("cancelled"), deadline, timeout)
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    self._stop(self._timeout_error(timeout), None, timeout)
                    break
                if self.slot is not None and self.finished.empty() and self._lend(self.slot):
                    continue
                polling = cancel is not None or deadline is not None or self.slot is not None
                wait = _POLL_S if polling else None
                if deadline is not None:
                    wait = max(0.0, min(wait or _POLL_S, deadline - time.monotonic()))
                try:
                    index, result = self.finished.get(timeout=wait)
                except queue.Empty:
                    continue
                self._finished(index, result)
                self._start_ready(cancel)
        finally:
            self.abort.set()  # steps abandoned by a cancel or a timeout stop at a boundary
        return [outcome for outcome in self.outcomes if outcome is not None]

    def _start_ready(self, cancel: threading.Event | None) -> None:
        while self.ready and not (cancel is not None and cancel.is_set()):
            self._start(self.ready.popleft())

    def _start(self, index: int) -> None:
        spec = self.specs[index]
        if self.graph.templated[index]:
            needed = {self.specs[n].task_id: self.outcomes[n] for n in self.graph.needs[index]}
            try:
                prompt = render_prompt(spec.prompt, {k: v for k, v in needed.items() if v})
            except ValueError as err:
                self._resolve(
                    index, StepOutcome.failed(spec.task_id, spec.agent, f"not run: {err}")
                )
                return
            spec = msgspec.structs.replace(spec, prompt=prompt)
        self.rendered[index] = spec
        if self.store is not None:
            key = self.keys[index] = self.step_key(spec)
            saved = self.saved.get(spec.task_id)
            if saved is not None and saved.spec_digest == key and saved.outcome.success:
                self._resolve(index, saved.outcome)
                return
        self.launched.add(index)
        item = self.pool.submit_item(self._run_one, index)
        assert item.future is not None
        item.future.add_done_callback(lambda done: self.finished.put((index, done.result())))
        if self.slot is not None:
            self.lendable.append(item)

    def _lend(self, slot: PoolSlot) -> bool:
        """Run the first of our steps no worker has taken, in our place; False if there is
        none, or another borrower uses the place."""
        while self.lendable:
            item = self.lendable[0]
            if item.claim.locked():  # a worker took it, or we ran it
                self.lendable.popleft()
                continue
            return self.pool.run_lent(slot, item)
        return False

    def _finished(self, index: int, result: object) -> None:
        self.launched.discard(index)
        if self.outcomes[index] is not None:
            return  # answered already (cancelled or timed out while it ran)
        spec = self.rendered[index] or self.specs[index]
        self._resolve(index, to_outcome(spec, result))

    def _resolve(self, index: int, outcome: StepOutcome) -> None:
        """Record `outcome`; dependents become ready, or fail when it failed."""
        work = [(index, outcome)]
        while work:
            current, result = work.pop()
            if self.outcomes[current] is not None:
                continue
            self.outcomes[current] = result
            self.left -= 1
            self._notify(current, result)
            for dependent in self.graph.dependents[current]:
                if self.outcomes[dependent] is not None:
                    continue
                if result.success:
                    self.waiting[dependent] -= 1
                    if self.waiting[dependent] == 0:
                        self.ready.append(dependent)
                else:
                    spec = self.specs[dependent]
                    message = f"not run: needed step {self.specs[current].task_id!r} failed"
                    work.append((dependent, StepOutcome.failed(spec.task_id, spec.agent, message)))

    def _notify(self, index: int, outcome: StepOutcome) -> None:
        if self.on_outcome is None:
            return
        try:
            self.on_outcome(index, outcome)
        except Exception as err:
            logger.opt(exception=err).error("on_outcome callback raised")

    def _stop(
        self, error: Aborted | RequestTimeout, deadline: float | None, timeout: float | None
    ) -> None:
        """Cancel or time out: nothing starts any more; running steps get the grace to end."""
        self.abort.set()
        for index in range(len(self.specs)):
            if self.outcomes[index] is None and not (
                index in self.launched and self.started[index]
            ):
                self._answer(index, error)
        if isinstance(error, Aborted):
            grace_end = time.monotonic() + self.cancel_grace
            if deadline is not None:
                grace_end = min(grace_end, deadline)
            while self.left:
                remaining = grace_end - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    index, result = self.finished.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    continue
                self._finished(index, result)
            if self.left and deadline is not None and time.monotonic() >= deadline:
                error = self._timeout_error(timeout)
        for index in range(len(self.specs)):
            if self.outcomes[index] is None:
                self._answer(index, error)

    def _answer(self, index: int, error: Aborted | RequestTimeout) -> None:
        spec = self.rendered[index] or self.specs[index]
        self._resolve(index, to_outcome(spec, Failure(error)))

    @staticmethod
    def _timeout_error(timeout: float | None) -> RequestTimeout:
        return RequestTimeout(f"step did not finish within {timeout or 0:g}s")

    # -- the worker side -------------------------------------------------------------------

    def _run_one(self, index: int) -> object:
        """Run step `index` on this (worker) thread; its answer for `_finished`."""
        if self.abort.is_set():
            return Failure(Aborted("cancelled"))
        self.started[index] = True
        spec = self.rendered[index] or self.specs[index]
        token = _STEP_ABORT.set(self.abort)
        try:
            outcome = self.executor.execute_step(spec, self.events)
        except BaseException as err:  # anything a step raises is its answer
            return Failure(err)
        finally:
            _STEP_ABORT.reset(token)
        key, store = self.keys[index], self.store
        # Saved here, before the step gives up its place: once a step has ended, its success
        # is in the store, whatever happens to the run afterwards.
        if store and key and isinstance(outcome, StepOutcome) and outcome.success:
            save_step(store, self.workflow_id, spec.task_id, CheckpointedStep(key, outcome))
        return outcome
