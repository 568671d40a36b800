"""Workflow combinators (pipeline, loop, resumable runs) and the checkpoint stores."""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import pytest

import actor_orch as ao
from actor_orch import (
    AgentExecutor,
    AgentStepSpec,
    MemoryCheckpointStore,
    SqliteCheckpointStore,
    StepOutcome,
    WorkflowCheckpoint,
    execute_loop,
    execute_pipeline,
    execute_steps_parallel_resumable,
)
from actor_orch.checkpoint import CheckpointedStep


class Recorder(AgentExecutor):
    """Succeeds with the prompt upper-cased, fails agent "fail", raises for agent "boom"."""

    def __init__(self, hint: int = 4) -> None:
        self.hint = hint
        self.ran: list[str] = []
        self.lock = threading.Lock()

    def execute_step(self, spec: AgentStepSpec, events: object = None) -> StepOutcome:
        with self.lock:
            self.ran.append(spec.task_id)
        if spec.agent == "boom":
            raise RuntimeError("exploded")
        return StepOutcome(
            spec.task_id,
            f"task-run-{spec.task_id}",
            spec.agent,
            spec.prompt.upper(),
            spec.agent != "fail",
        )

    def concurrency_hint(self) -> int:
        return self.hint


def spec(task_id: str, prompt: str = "p", agent: str = "a") -> AgentStepSpec:
    return AgentStepSpec(task_id, agent, "d", prompt)


# -- pipeline --------------------------------------------------------------------------------


def test_pipeline_threads_each_item_through_its_stages_in_item_order() -> None:
    def first(prev: StepOutcome | None, item: str) -> AgentStepSpec:
        assert prev is None
        return spec(f"1-{item}", item)

    def second(prev: StepOutcome | None, item: str) -> AgentStepSpec:
        assert prev is not None
        return spec(f"2-{item}", prev.output + "!")

    results = execute_pipeline(Recorder(), ["x", "y", "z"], [first, second])
    assert [r.output if r else None for r in results] == ["X!", "Y!", "Z!"]
    assert [r.task_id if r else None for r in results] == ["2-x", "2-y", "2-z"]


def test_pipeline_has_no_barrier_between_stages() -> None:
    # item "slow" is held in stage 0 until item "fast" has finished stage 1
    fast_done = threading.Event()

    class Gated(Recorder):
        def execute_step(self, spec: AgentStepSpec, events: object = None) -> StepOutcome:
            if spec.task_id == "0-slow":
                assert fast_done.wait(5), "fast item was held back by a barrier"
            outcome = super().execute_step(spec, events)
            if spec.task_id == "1-fast":
                fast_done.set()
            return outcome

    stages = [
        lambda prev, item: spec(f"0-{item}", item),
        lambda prev, item: spec(f"1-{item}", item),
    ]
    results = execute_pipeline(Gated(hint=2), ["slow", "fast"], stages)
    assert [r.task_id if r else None for r in results] == ["1-slow", "1-fast"]


def test_pipeline_chain_stops_at_none_at_a_failure_and_at_a_raising_stage() -> None:
    def first(prev: StepOutcome | None, item: str) -> AgentStepSpec | None:
        if item == "skip":
            return None
        return spec(f"first-{item}", item, agent="fail" if item == "bad" else "a")

    def second(prev: StepOutcome | None, item: str) -> AgentStepSpec | None:
        if item == "raise":
            raise KeyError("no such field")
        if item == "stop":
            return None
        return spec(f"second-{item}", item)

    executor = Recorder()
    results = execute_pipeline(executor, ["ok", "skip", "bad", "raise", "stop"], [first, second])
    ok, skipped, bad, raised, stopped = results
    assert ok is not None and ok.task_id == "second-ok" and ok.success
    assert skipped is None
    assert bad is not None and bad.task_id == "first-bad" and not bad.success
    assert raised is not None and not raised.success
    assert "stage 1" in raised.output and "KeyError" in raised.output
    assert stopped is not None and stopped.task_id == "first-stop" and stopped.success
    assert "second-bad" not in executor.ran


def test_pipeline_step_that_raises_becomes_a_labelled_failed_outcome() -> None:
    [result] = execute_pipeline(Recorder(), ["x"], [lambda prev, item: spec("t", agent="boom")])
    assert result is not None
    assert not result.success
    assert result.agent == "boom"
    assert "exploded" in result.output


def test_pipeline_rejects_a_non_callable_stage() -> None:
    with pytest.raises(TypeError, match=r"stages\[1\]"):
        execute_pipeline(Recorder(), ["x"], [lambda p, i: None, "nope"])  # type: ignore[list-item]


def test_pipeline_with_a_real_local_executor() -> None:
    orch = ao.AgentOrchestrator()
    orch.add_agent("echo", lambda: ao.AgentOptions(ao.EchoModel()))
    results = execute_pipeline(
        ao.LocalExecutor(orch),
        [1, 2],
        [
            lambda prev, n: AgentStepSpec(f"a{n}", "echo", "d", f"n={n}"),
            lambda prev, n: AgentStepSpec(f"b{n}", "echo", "d", f"{prev.output} again"),
        ],
    )
    assert [r.output if r else None for r in results] == ["n=1 again", "n=2 again"]


# -- loop ------------------------------------------------------------------------------------


def test_loop_runs_rounds_until_next_round_returns_none() -> None:
    def next_round(last: list[StepOutcome]) -> list[AgentStepSpec] | None:
        if len(last[0].output) >= 3:
            return None
        return [spec(f"r{len(o.output)}", o.output + "a") for o in last]

    rounds = execute_loop(Recorder(), [spec("r0", "a")], 10, next_round)
    assert [[o.output for o in r] for r in rounds] == [["A"], ["AA"], ["AAA"]]


def test_loop_stops_at_max_iterations_and_clamps_it_to_one() -> None:
    def forever(last: list[StepOutcome]) -> list[AgentStepSpec]:
        return [spec("again")]

    assert len(execute_loop(Recorder(), [spec("x")], 3, forever)) == 3
    assert len(execute_loop(Recorder(), [spec("x")], 0, forever)) == 1
    assert len(execute_loop(Recorder(), [spec("x")], 5, lambda last: [])) == 1


def test_loop_next_round_error_propagates_with_a_note() -> None:
    def broken(last: list[StepOutcome]) -> list[AgentStepSpec]:
        raise ValueError("bad plan")

    with pytest.raises(ValueError, match="bad plan") as info:
        execute_loop(Recorder(), [spec("x")], 3, broken)
    assert any("after round 1" in note for note in info.value.__notes__)


# -- resumable runs --------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ao.CheckpointStore:
    if request.param == "memory":
        return MemoryCheckpointStore()
    return SqliteCheckpointStore(tmp_path / "checkpoints.db")


def test_resumable_run_skips_steps_that_already_succeeded(store: ao.CheckpointStore) -> None:
    specs = [spec("a"), spec("b", agent="fail"), spec("c")]
    first = Recorder()
    outcomes = execute_steps_parallel_resumable(first, specs, "wf", store)
    assert [o.success for o in outcomes] == [True, False, True]
    again = Recorder()
    resumed = execute_steps_parallel_resumable(again, specs, "wf", store)
    assert again.ran == ["b"]  # only the failed step runs again
    assert [o.task_id for o in resumed] == ["a", "b", "c"]
    assert resumed[0] == outcomes[0]


def test_resumable_run_reruns_a_step_whose_spec_changed(store: ao.CheckpointStore) -> None:
    execute_steps_parallel_resumable(Recorder(), [spec("a", "old")], "wf", store)
    again = Recorder()
    [outcome] = execute_steps_parallel_resumable(again, [spec("a", "new")], "wf", store)
    assert again.ran == ["a"]
    assert outcome.output == "NEW"


def test_progress_is_saved_as_each_step_finishes(store: ao.CheckpointStore) -> None:
    class CrashesOnC(Recorder):
        def execute_step(self, spec: AgentStepSpec, events: object = None) -> StepOutcome:
            if spec.task_id == "c":
                checkpoint = store.load("wf")
                assert checkpoint is not None
                assert set(checkpoint.steps) == {"a", "b"}
            return super().execute_step(spec, events)

    execute_steps_parallel_resumable(
        CrashesOnC(hint=1), [spec("a"), spec("b"), spec("c")], "wf", store
    )
    final = store.load("wf")
    assert final is not None and set(final.steps) == {"a", "b", "c"}


def test_resumable_run_rejects_duplicate_task_ids(store: ao.CheckpointStore) -> None:
    with pytest.raises(ValueError, match="duplicate task_id 'a'"):
        execute_steps_parallel_resumable(Recorder(), [spec("a"), spec("a")], "wf", store)


def test_stores_round_trip_and_delete(store: ao.CheckpointStore) -> None:
    outcome = StepOutcome("t", "task-run-t", "a", "o", True, {"k": [1, 2]})
    store.save("wf", WorkflowCheckpoint({"t": CheckpointedStep("d", outcome)}, 12.5))
    loaded = store.load("wf")
    assert loaded == WorkflowCheckpoint({"t": CheckpointedStep("d", outcome)}, 12.5)
    assert store.load("other") is None
    store.delete("wf")
    store.delete("wf")
    assert store.load("wf") is None


def test_sqlite_store_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    SqliteCheckpointStore(path).save("wf", WorkflowCheckpoint())
    assert SqliteCheckpointStore(path).load("wf") is not None


def test_sqlite_store_on_a_bad_file_never_raises_and_acts_empty(tmp_path: Path) -> None:
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a sqlite database" * 100)
    for path in (not_a_db, tmp_path):  # a file of garbage, and a directory
        store = SqliteCheckpointStore(path)
        store.save("wf", WorkflowCheckpoint())
        assert store.load("wf") is None
        store.delete("wf")
    outcomes = execute_steps_parallel_resumable(
        Recorder(), [spec("a")], "wf", SqliteCheckpointStore(not_a_db)
    )
    assert outcomes[0].success


def test_checkpoint_json_is_plain_and_versionable() -> None:
    outcome = StepOutcome("t", "task-run-t", "a", "o", True)
    data = msgspec.json.encode(WorkflowCheckpoint({"t": CheckpointedStep("d", outcome)}, 1.0))
    assert data == (
        b'{"steps":{"t":{"spec_digest":"d","outcome":{"task_id":"t","session_id":"task-run-t",'
        b'"agent":"a","output":"o","success":true}}},"updated_at":1.0}'
    )
