"""RayExecutor against a real local Ray instance (started once for this module)."""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

ray = pytest.importorskip("ray")

import actor_orch as ao  # noqa: E402
from actor_orch import (  # noqa: E402
    AgentOptions,
    AgentOrchestrator,
    AgentStepSpec,
    DefaultSupervisor,
    EchoModel,
    FunctionModel,
    ScriptedModel,
    execute_steps_parallel,
)
from actor_orch.ray_executor import RayExecutor  # noqa: E402

SCHEMA = {"type": "object", "properties": {"v": {"type": "string"}}, "required": ["v"]}


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    # Factories defined here are pickled by reference, so workers must import this module.
    tests_dir = str(Path(__file__).parent)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests_dir}},
    )
    yield
    ray.shutdown()


def echo_options() -> AgentOptions:
    return AgentOptions(EchoModel())


def shout(request: ao.ModelRequest) -> str:
    return ao.types.text_of(request.messages[-1].content).upper()  # type: ignore[union-attr]


@pytest.fixture
def orch() -> AgentOrchestrator:
    orchestrator = AgentOrchestrator(supervisor=DefaultSupervisor())
    orchestrator.add_agent("echo", echo_options)
    orchestrator.add_agent("shout", lambda: AgentOptions(FunctionModel(shout)))
    return orchestrator


def spec(task_id: str, agent: str = "echo", prompt: str = "p") -> AgentStepSpec:
    return AgentStepSpec(task_id, agent, "d", prompt)


def test_steps_run_on_ray_workers_and_come_back_in_input_order(orch: AgentOrchestrator) -> None:
    with RayExecutor(orch, num_workers=2) as executor:
        assert executor.concurrency_hint() == 2
        specs = [spec(str(i), "shout" if i % 2 else "echo", f"item {i}") for i in range(10)]
        outcomes = execute_steps_parallel(executor, specs)
    assert [o.task_id for o in outcomes] == [str(i) for i in range(10)]
    assert [o.output for o in outcomes] == [
        f"ITEM {i}" if i % 2 else f"item {i}" for i in range(10)
    ]
    assert all(o.success and o.session_id == f"task-run-{o.task_id}" for o in outcomes)


def test_unknown_agent_structured_output_and_turn_limit_match_the_local_executor(
    orch: AgentOrchestrator,
) -> None:
    orch.add_agent("json", lambda: AgentOptions(ScriptedModel(['{"v": "x"}'])))
    specs = [spec("ghost", "nobody"), spec("s", "json").with_output_schema(SCHEMA)]
    with RayExecutor(orch, num_workers=1) as executor:
        remote = execute_steps_parallel(executor, specs)
    local = execute_steps_parallel(ao.LocalExecutor(orch), specs)
    assert [_timeless(o) for o in remote] == [_timeless(o) for o in local]
    assert remote[1].structured == {"v": "x"}
    assert "nobody" in remote[0].output


def test_retryable_failures_restart_on_the_worker_with_events_delivered_locally(
    orch: AgentOrchestrator,
) -> None:
    # the model travels with the factory: a fresh copy per step, replaying from the start
    flaky = ScriptedModel([ao.NetworkError("reset"), "recovered"])
    orch.add_agent("flaky", lambda: AgentOptions(flaky, retry=None))
    seen: list[ao.Event] = []
    with RayExecutor(orch, num_workers=1) as executor:
        [outcome] = execute_steps_parallel(executor, [spec("t", "flaky")], seen.append)
    assert outcome.success
    assert outcome.output == "recovered"
    assert [type(e).__name__ for e in seen if not isinstance(e, _CALL_EVENTS)] == [
        "StepStarted",
        "AgentFailed",
        "AgentRestarted",
        "StepFinished",
    ]


def test_a_factory_ray_cannot_send_is_a_failed_outcome(orch: AgentOrchestrator) -> None:
    lock = threading.Lock()  # not picklable, captured by the factory
    orch.add_agent("unsendable", functools.partial(lambda lk: echo_options(), lock))
    with RayExecutor(orch, num_workers=1) as executor:
        [outcome] = execute_steps_parallel(executor, [spec("t", "unsendable")])
    assert not outcome.success
    assert "cannot send step to Ray" in outcome.output


def test_cancel_withdraws_queued_steps_and_reports_every_outcome(orch: AgentOrchestrator) -> None:
    def slow(request: ao.ModelRequest) -> str:
        import time

        time.sleep(0.5)
        return "slow"

    orch.add_agent("slow", lambda: AgentOptions(FunctionModel(slow)))
    cancel = threading.Event()
    seen: list[ao.Event] = []

    def cancel_on_first_start(event: ao.Event) -> None:
        seen.append(event)
        if isinstance(event, ao.StepStarted):
            cancel.set()

    with RayExecutor(orch, num_workers=1) as executor:
        outcomes = execute_steps_parallel(
            executor, [spec(str(i), "slow") for i in range(4)], cancel_on_first_start, cancel=cancel
        )
    assert [o.task_id for o in outcomes] == ["0", "1", "2", "3"]
    assert outcomes[0].output == "cancelled"
    assert [o.output for o in outcomes[1:]] == ["cancelled"] * 3


def test_closed_executor_refuses_steps_and_close_is_idempotent(orch: AgentOrchestrator) -> None:
    executor = RayExecutor(orch, num_workers=1)
    executor.close()
    executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        execute_steps_parallel(executor, [spec("t")])
    assert "closed" in repr(executor)
    assert ray.is_initialized()  # it did not start Ray, so it does not stop it


def test_bad_settings_raise_value_error_naming_them(orch: AgentOrchestrator) -> None:
    with pytest.raises(ValueError, match="num_workers"):
        RayExecutor(orch, num_workers=0)
    with pytest.raises(ValueError, match="max_concurrency_per_worker"):
        RayExecutor(orch, max_concurrency_per_worker=0)


def test_supervisor_and_scripted_model_pickle_for_remote_workers() -> None:
    policy = pickle.loads(pickle.dumps(DefaultSupervisor(2, within=5.0)))
    assert policy.on_agent_error("a", ao.NetworkError("x")) is ao.SupervisorAction.RESTART
    model = pickle.loads(pickle.dumps(ScriptedModel(["a", "b"])))
    assert model.complete(ao.ModelRequest([ao.user_message("x")])).text == "a"


def test_importing_actor_orch_never_imports_ray() -> None:
    code = "import sys, actor_orch; print('ray' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def _timeless(outcome: ao.StepOutcome) -> ao.StepOutcome:
    """`outcome` without its wall time, which differs between any two runs."""
    return msgspec.structs.replace(outcome, duration_s=None)


# Per-call events (API §6) are checked in their own tests; these follow the lifecycle.
_CALL_EVENTS = (ao.ModelCallFinished, ao.ToolCallFinished)


def lead_options() -> AgentOptions:
    tasks = [{"agent": "shout", "description": "d", "prompt": p} for p in ("hi", "yo")]
    asks = ao.AssistantMessage(
        [ao.ToolCall("c1", "delegate", {"tasks": tasks})], ao.StopReason.TOOL_USE
    )
    return AgentOptions(ao.ScriptedModel([asks, "done"]), delegates=("shout",), retry=None)


def test_a_step_on_a_ray_worker_delegates_there_and_the_events_come_back(
    orch: AgentOrchestrator,
) -> None:
    orch.add_agent("lead", lead_options)
    seen: list[ao.Event] = []
    orch.subscribe(seen.append)
    with RayExecutor(orch, num_workers=1) as executor:
        [outcome, plain] = ao.execute_steps_parallel(
            executor, [spec("t1", "lead", "go"), spec("t2", "echo", "x")]
        )
    assert outcome.success and outcome.output == "done"
    assert plain.success and plain.output == "x"
    finished = {e.task_id: e for e in seen if isinstance(e, ao.StepFinished)}
    delegated = sorted(task for task in finished if task.startswith("t1/"))
    assert len(delegated) == 2
    assert all(finished[task].success for task in delegated)
    assert all(finished[task].parent_session_id == "task-run-t1" for task in delegated)
    started = [e.task_id for e in seen if isinstance(e, ao.StepStarted)]
    assert sorted(started) == sorted(["t1", "t2", *delegated])  # each exactly once
