"""Run steps on Ray workers when one machine is not enough (`pip install 'actor_orch[ray]'`).

`RayExecutor` is an `AgentExecutor`: `execute_steps_parallel` drives it exactly as it drives
`LocalExecutor`, and each step runs the same `run_step` logic, on a Ray actor. The options
factory and the supervisor policy travel to the worker with the step (Ray pickles them with
cloudpickle), so they must be picklable: plain functions, `functools.partial`, lambdas and
closures over picklable values all are; a function is sent by reference to its module, so
that module must be importable on the workers (pass `runtime_env`, e.g. `{"working_dir": "."}`
or `{"env_vars": {"PYTHONPATH": ...}}`, when it is not installed there). Supervision state
that a policy keeps (the sliding window of `DefaultSupervisor`) lives per step on the worker.

A step whose agent delegates (API §10) takes with it the agents it may reach (a
`DelegationRegistry`); on the worker they are registered in an orchestrator of that process,
whose `LocalExecutor` runs the delegated steps there, and their events come back with the
step's. Which agents an agent delegates to is read once per executor from options built on
the driver.

Example (needs Ray; starts a local instance when none is running):

    from actor_orch import AgentOptions, AgentOrchestrator, AgentStepSpec, EchoModel
    from actor_orch import execute_steps_parallel
    from actor_orch.ray_executor import RayExecutor

    orch = AgentOrchestrator()
    orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
    with RayExecutor(orch, num_workers=2) as executor:
        outcomes = execute_steps_parallel(executor, [AgentStepSpec("t", "echo", "", "hi")])
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections import deque
from typing import Any

from loguru import logger

from actor_orch.errors import PluginError
from actor_orch.events import Event, EventBus, EventCallback, StepStarted
from actor_orch.executor import (
    AgentExecutor,
    AgentStepSpec,
    LocalExecutor,
    StepOutcome,
    current_step_abort,
    run_step,
)
from actor_orch.orchestrator import AgentOrchestrator, OptionsFactory, build_options
from actor_orch.supervisor import Supervision, SupervisorPolicy

try:
    import ray
    import ray.exceptions
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("actor_orch.ray_executor needs Ray: pip install 'actor_orch[ray]'") from err

__all__ = ["RayExecutor", "StepWorker"]

# How often a step waiting on Ray looks at its abort event (ray.wait returns early when done).
_ABORT_POLL_S = 0.05
# Longest wait for a free worker slot; execute_steps_parallel never asks for more slots than
# concurrency_hint(), so this only runs out when steps are started around it.
_SLOT_TIMEOUT_S = 600.0


@dataclasses.dataclass(frozen=True)
class DelegationRegistry:
    """What a worker needs to give a step its `delegate` tool: the agents it may reach by
    delegation (name, parent or None, options factory, restart budget), in registration order
    (a parent before its children), the depth limit and the step's own depth."""

    agents: tuple[tuple[str, str | None, OptionsFactory, int], ...]
    max_depth: int
    depth: int


class StepWorker:
    """The remote side: runs one step with `run_step` and returns its outcome and events."""

    def run(
        self,
        spec: AgentStepSpec,
        factory: OptionsFactory,
        policy: SupervisorPolicy | None,
        restart_budget: int,
        delegation: DelegationRegistry | None = None,
    ) -> tuple[StepOutcome, list[Event]]:
        if delegation is not None:
            return _run_delegating(spec, policy, delegation)
        events: list[Event] = []
        # The same supervision path as a local step; its state lives for this step only.
        supervision = Supervision(policy, EventBus())
        try:
            outcome = run_step(
                spec,
                factory,
                supervision=supervision,
                restart_budget=restart_budget,
                events=events.append,
            )
        finally:
            supervision.stop(1.0)
        return outcome, events

    def ping(self) -> bool:
        return True


def _run_delegating(
    spec: AgentStepSpec, policy: SupervisorPolicy | None, delegation: DelegationRegistry
) -> tuple[StepOutcome, list[Event]]:
    """Run a step whose agent delegates on this worker: the agents it may reach are registered
    in an orchestrator of this process, whose `LocalExecutor` runs the delegated steps here."""
    events: list[Event] = []
    orchestrator = AgentOrchestrator(supervisor=policy, max_delegation_depth=delegation.max_depth)
    orchestrator.subscribe(events.append)  # the step's events and its delegates', once each
    for name, parent, factory, budget in delegation.agents:
        if parent is not None and parent in orchestrator:
            orchestrator.add_child(name, parent, factory, max_restarts=budget)
        else:
            orchestrator.add_agent(name, factory, max_restarts=budget)
    orchestrator._set_delegation_depth(spec.task_id, delegation.depth)
    executor = LocalExecutor(orchestrator)
    orchestrator.with_executor(executor)
    try:
        outcome = executor.execute_step(spec)
    finally:
        executor.close()
        orchestrator.shutdown(timeout=1.0)
    return outcome, events


class RayExecutor(AgentExecutor):
    """Runs steps on `num_workers` Ray actors, each serving `max_concurrency_per_worker` steps.

    Connects to the Ray cluster at `address` (or starts a local instance when Ray is not
    initialised yet) with `runtime_env`; `close()` (or leaving the `with` block) kills the
    workers, and shuts Ray down only if this executor started it. `num_workers` defaults to
    the cluster's CPU count. Cancelling a step (the `cancel` of `execute_steps_parallel`)
    withdraws it from Ray and reports it cancelled; a step already running on a worker runs
    to its end there and its result is discarded.
    """

    def __init__(
        self,
        orchestrator: AgentOrchestrator,
        *,
        num_workers: int | None = None,
        address: str | None = None,
        max_concurrency_per_worker: int = 1,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
            raise ValueError(f"num_workers must be an int >= 1 or None, got {num_workers!r}")
        if not isinstance(max_concurrency_per_worker, int) or max_concurrency_per_worker < 1:
            raise ValueError(
                "max_concurrency_per_worker must be an int >= 1, "
                f"got {max_concurrency_per_worker!r}"
            )
        self.orchestrator = orchestrator
        self.max_concurrency_per_worker = max_concurrency_per_worker
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(
                address=address,
                runtime_env=runtime_env,
                include_dashboard=False,
                log_to_driver=False,
            )
        if num_workers is None:
            num_workers = max(1, int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
        self.num_workers = num_workers
        # Workers take no CPU reservation: steps mostly wait on model servers, and spreading
        # them lets a cluster use every node.
        self._worker_class = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(StepWorker)
        self._lock = threading.Lock()
        self._closed = False
        self._delegates: dict[str, tuple[str, ...]] = {}  # per agent, read once
        self._workers = [self._new_worker() for _ in range(num_workers)]
        self._slots: queue.Queue[int] = queue.Queue()
        for _ in range(max_concurrency_per_worker):
            for index in range(num_workers):
                self._slots.put(index)

    def _new_worker(self) -> Any:
        return self._worker_class.options(max_concurrency=self.max_concurrency_per_worker).remote()

    def concurrency_hint(self) -> int:
        return self.num_workers * self.max_concurrency_per_worker

    def execute_step(self, spec: AgentStepSpec, events: EventCallback | None = None) -> StepOutcome:
        orchestrator = self.orchestrator
        if self._closed:
            return StepOutcome.failed(spec.task_id, spec.agent, "RayExecutor is closed")
        factory = orchestrator.options_factory(spec.agent)
        if factory is None:  # the shared step logic reports the unknown agent, with its events
            return run_step(
                spec, None, supervision=orchestrator.supervision, restart_budget=0, events=events
            )
        budget = orchestrator.restart_budget(spec.agent)
        publish = orchestrator.supervision.publish
        publish(StepStarted(spec.task_id, spec.agent, spec.parent_session_id), events)
        try:
            slot = self._slots.get(timeout=_SLOT_TIMEOUT_S)
        except queue.Empty:
            return StepOutcome.failed(spec.task_id, spec.agent, "no Ray worker became free")
        try:
            outcome, remote_events = self._run_remote(slot, spec, factory, budget)
        finally:
            self._slots.put(slot)
        for event in remote_events:
            if isinstance(event, StepStarted) and event.task_id == spec.task_id:
                continue  # already delivered when the step began
            publish(event, events)
        return outcome

    def _delegates_of(self, name: str) -> tuple[str, ...]:
        """The agents `name` may delegate to, read once from its options (built here)."""
        known = self._delegates.get(name)
        if known is not None:
            return known
        orchestrator = self.orchestrator
        factory = orchestrator.options_factory(name)
        wanted: object = False
        if factory is not None:
            try:
                wanted = build_options(name, factory).delegates
            except PluginError:
                wanted = False  # the step itself reports the failing factory
        if wanted is True:
            found = tuple(orchestrator.children_of(name) or ())
        elif wanted:
            found = tuple(str(agent) for agent in wanted)  # type: ignore[attr-defined]
        else:
            found = ()
        with self._lock:
            self._delegates[name] = found
        return found

    def _delegation(self, spec: AgentStepSpec) -> DelegationRegistry | None:
        """The registry a worker needs for `spec`'s delegate tool; None if it delegates to
        nobody."""
        orchestrator = self.orchestrator
        depth = orchestrator.delegation_depth(spec.task_id)
        reach = {spec.agent: depth}
        todo = deque([spec.agent])
        while todo:
            name = todo.popleft()
            if reach[name] >= orchestrator.max_delegation_depth:
                continue
            for delegate in self._delegates_of(name):
                if delegate not in reach and delegate in orchestrator:
                    reach[delegate] = reach[name] + 1
                    todo.append(delegate)
        if len(reach) == 1 and not self._delegates_of(spec.agent):
            return None
        agents = []
        for name in orchestrator.names():  # registration order: parents first
            factory = orchestrator.options_factory(name)
            if name in reach and factory is not None:
                budget = orchestrator.restart_budget(name)
                agents.append((name, orchestrator.parent_of(name), factory, budget))
        return DelegationRegistry(tuple(agents), orchestrator.max_delegation_depth, depth)

    def _run_remote(
        self, slot: int, spec: AgentStepSpec, factory: OptionsFactory, budget: int
    ) -> tuple[StepOutcome, list[Event]]:
        def failed(message: str) -> tuple[StepOutcome, list[Event]]:
            return StepOutcome.failed(spec.task_id, spec.agent, message), []

        worker = self._workers[slot]
        try:
            delegation = self._delegation(spec)
            ref = worker.run.remote(spec, factory, self.orchestrator.supervisor, budget, delegation)
        except Exception as err:  # e.g. a factory Ray cannot pickle
            return failed(f"cannot send step to Ray: {type(err).__name__}: {err}")
        abort = current_step_abort()
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=_ABORT_POLL_S)
                if ready:
                    result: tuple[StepOutcome, list[Event]] = ray.get(ref)
                    return result
                if abort is not None and abort.is_set():
                    ray.cancel(ref)
                    return failed("cancelled")
        except ray.exceptions.RayActorError as err:
            logger.warning("Ray worker {} died ({}); replacing it", slot, err)
            with self._lock:
                if not self._closed:
                    self._workers[slot] = self._new_worker()
            return failed(f"Ray worker died: {err}")
        except ray.exceptions.RayError as err:
            return failed(f"Ray error: {type(err).__name__}: {err}")

    def close(self) -> None:
        """Kill the workers; shut Ray down if this executor started it. Idempotent."""
        super().close()  # the local pool that waits on Ray
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = self._workers, []
        for worker in workers:
            try:
                ray.kill(worker)
            except Exception as err:  # already gone: nothing left to free
                logger.debug("killing a Ray worker failed: {}", err)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RayExecutor(num_workers={self.num_workers}, "
            f"max_concurrency_per_worker={self.max_concurrency_per_worker}, "
            f"{'closed' if self._closed else 'open'})"
        )
