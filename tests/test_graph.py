"""execute_graph: steps start as soon as their needs succeed, templates, failed needs,
validation, cancel/timeout, nesting and resuming."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import actor_orch as ao
from actor_orch import (
    AgentExecutor,
    AgentStepSpec,
    GraphError,
    MemoryCheckpointStore,
    StepOutcome,
    check_graph,
    execute_graph,
)
from actor_orch.executor import current_step_abort

WAIT_S = 10.0


class Recorder(AgentExecutor):
    """Output = prompt; agent "fail" fails, "boom" raises; `gates[task_id]` holds a step;
    `peak` is the most steps that ran at once (what `work` does, for subclasses)."""

    def __init__(self, hint: int = 4) -> None:
        self.hint = hint
        self.ran: list[str] = []
        self.prompts: dict[str, str] = {}
        self.lock = threading.Lock()
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self.running = 0
        self.peak = 0

    def execute_step(self, spec: AgentStepSpec, events: object = None) -> StepOutcome:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            return self.work(spec)
        finally:
            with self.lock:
                self.running -= 1

    def work(self, spec: AgentStepSpec) -> StepOutcome:
        with self.lock:
            self.ran.append(spec.task_id)
            self.prompts[spec.task_id] = spec.prompt
        self.started.setdefault(spec.task_id, threading.Event()).set()
        gate = self.gates.get(spec.task_id)
        if gate is not None:
            assert gate.wait(WAIT_S), f"{spec.task_id} was never released"
        if spec.agent == "boom":
            raise RuntimeError("exploded")
        structured = {"city": {"name": "Lisbon"}, "tags": ["a", "b"], "n": 3}
        return StepOutcome(
            spec.task_id,
            f"task-run-{spec.task_id}",
            spec.agent,
            spec.prompt,
            spec.agent != "fail",
            structured=structured if spec.output_schema is not None else None,
        )

    def concurrency_hint(self) -> int:
        return self.hint


def spec(task_id: str, prompt: str = "p", agent: str = "a", schema: bool = False) -> AgentStepSpec:
    return AgentStepSpec(task_id, agent, "d", prompt, output_schema={} if schema else None)


def test_a_step_starts_before_an_unrelated_slow_step_finishes() -> None:
    # slow never finishes until "after" (which needs "first") has run: a barrier would hang.
    executor = Recorder(hint=3)
    after_ran = threading.Event()
    executor.gates["slow"] = after_ran

    def on_outcome(index: int, outcome: StepOutcome) -> None:
        if outcome.task_id == "after":
            after_ran.set()

    specs = [spec("slow"), spec("first"), spec("after", "{{ steps.first.output }}!")]
    outcomes = execute_graph(executor, specs, {"after": ["first"]}, on_outcome=on_outcome)
    # slow succeeded, so its gate opened: "after" finished while slow was still running.
    assert [o.success for o in outcomes] == [True, True, True]
    assert outcomes[2].output == "p!"


def test_needs_run_first_and_outcomes_come_in_input_order() -> None:
    executor = Recorder(hint=8)
    specs = [spec("c", "{{ steps.b.output }}c"), spec("b", "{{ steps.a.output }}b"), spec("a", "a")]
    outcomes = execute_graph(executor, specs, {"c": ["b"], "b": ["a"]})
    assert executor.ran == ["a", "b", "c"]
    assert [o.task_id for o in outcomes] == ["c", "b", "a"]
    assert [o.output for o in outcomes] == ["abc", "ab", "a"]


def test_never_more_than_the_executor_limit_at_once() -> None:
    specs = [spec(f"t{i}") for i in range(40)]
    needs = {f"t{i}": [f"t{i - 20}"] for i in range(20, 40)}
    executor = Recorder(hint=3)
    outcomes = execute_graph(executor, specs, needs)
    assert all(o.success for o in outcomes)
    assert 1 <= executor.peak <= 3


def test_a_step_whose_need_failed_is_not_run_and_names_it() -> None:
    executor = Recorder()
    specs = [
        spec("bad", agent="fail"),
        spec("raises", agent="boom"),
        spec("child", "{{ steps.bad.output }}"),
        spec("grandchild", "{{ steps.child.output }}"),
        spec("other", "{{ steps.raises.output }}"),
        spec("fine"),
    ]
    needs = {"child": ["bad"], "grandchild": ["child"], "other": ["raises"]}
    outcomes = {o.task_id: o for o in execute_graph(executor, specs, needs)}
    assert sorted(executor.ran) == ["bad", "fine", "raises"]
    assert outcomes["child"].output == "not run: needed step 'bad' failed"
    assert outcomes["grandchild"].output == "not run: needed step 'child' failed"
    assert outcomes["other"].output == "not run: needed step 'raises' failed"
    assert "exploded" in outcomes["raises"].output
    assert outcomes["fine"].success
    assert outcomes["child"].session_id == "task-run-child"


def test_templates_read_output_and_nested_structured_fields() -> None:
    executor = Recorder()
    prompt = (
        "out={{ steps.r.output }} city={{steps.r.structured.city.name}} "
        "tag={{ steps.r.structured.tags.1 }} n={{ steps.r.structured.n }} "
        "all={{ steps.r.structured.city }}"
    )
    specs = [spec("r", "R", schema=True), spec("w", prompt)]
    outcomes = execute_graph(executor, specs, {"w": ["r"]})
    assert outcomes[1].output == 'out=R city=Lisbon tag=b n=3 all={"name":"Lisbon"}'


def test_a_missing_structured_field_fails_the_step_without_running_it() -> None:
    executor = Recorder()
    specs = [spec("r", schema=True), spec("w", "{{ steps.r.structured.country }}")]
    outcomes = execute_graph(executor, specs, {"w": ["r"]})
    assert "w" not in executor.ran
    assert not outcomes[1].success
    assert "has no field 'country'" in outcomes[1].output


INVALID: dict[str, tuple[list[AgentStepSpec], dict[str, Any], str]] = {
    "unknown-need": ([spec("a"), spec("b")], {"b": ["zz"]}, "specs[1].needs[0]: unknown step 'zz'"),
    "need-twice": (
        [spec("a"), spec("b")],
        {"b": ["a", "a"]},
        "specs[1].needs[1]: 'a' is listed twice",
    ),
    "self-cycle": ([spec("a")], {"a": ["a"]}, "specs[0].needs[0]: dependency cycle: a -> a"),
    "cycle": (
        [spec("x"), spec("a"), spec("b"), spec("c")],
        {"a": ["c"], "b": ["a"], "c": ["x", "b"]},
        "specs[1].needs[0]: dependency cycle: a -> c -> b -> a",
    ),
    "template-not-needed": (
        [spec("a"), spec("b", "{{ steps.a.output }}")],
        {},
        "specs[1].prompt: {{ steps.a.output }} refers to step 'a', which is not in this step's",
    ),
    "malformed-template": (
        [spec("a", "{{ step.a.output }}")],
        {},
        "specs[0].prompt: {{ step.a.output }} is not a template",
    ),
    "structured-without-schema": (
        [spec("a"), spec("b", "{{ steps.a.structured.x }}")],
        {"b": ["a"]},
        "step 'a' has no output_schema",
    ),
    "duplicate-task-id": ([spec("a"), spec("a")], {}, "specs[1].task_id: duplicate task id 'a'"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_an_invalid_graph_raises_before_anything_runs(case: str) -> None:
    specs, needs, message = INVALID[case]
    executor = Recorder()
    with pytest.raises(GraphError) as info:
        execute_graph(executor, specs, needs)
    assert message in str(info.value)
    assert executor.ran == []
    with pytest.raises(GraphError):
        check_graph(specs, needs)


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match=r"needs\['nope'\]"):
        execute_graph(Recorder(), [spec("a")], {"nope": []})
    with pytest.raises(TypeError, match="list of task ids"):
        execute_graph(Recorder(), [spec("a"), spec("b")], {"b": "a"})
    with pytest.raises(ValueError, match="timeout"):
        execute_graph(Recorder(), [spec("a")], timeout=-1)
    with pytest.raises(ValueError, match="store and workflow_id"):
        execute_graph(Recorder(), [spec("a")], store=MemoryCheckpointStore())
    with pytest.raises(TypeError, match="AgentStepSpec"):
        execute_graph(Recorder(), ["a"])  # type: ignore[list-item]


def test_cancel_returns_every_outcome_promptly_and_aborts_running_steps() -> None:
    executor = Recorder(hint=2)
    held = threading.Event()
    executor.gates["running"] = held
    cancel = threading.Event()
    saw_abort: list[bool] = []

    class Aborting(Recorder):
        def execute_step(self, spec: AgentStepSpec, events: object = None) -> StepOutcome:
            if spec.task_id == "running":
                cancel.set()
                abort = current_step_abort()
                assert abort is not None
                saw_abort.append(abort.wait(WAIT_S))
            return super().execute_step(spec, events)

    specs = [spec("running"), spec("after", "{{ steps.running.output }}"), spec("queued")]
    aborting = Aborting(hint=1)
    outcomes = execute_graph(aborting, specs, {"after": ["running"]}, cancel=cancel)
    assert [o.task_id for o in outcomes] == ["running", "after", "queued"]
    assert outcomes[1].output == "cancelled"
    assert outcomes[2].output == "cancelled"
    assert saw_abort == [True]
    assert "after" not in aborting.ran and "queued" not in aborting.ran


def test_timeout_fails_unfinished_steps() -> None:
    executor = Recorder(hint=1)
    release = threading.Event()
    executor.gates["slow"] = release
    try:
        outcomes = execute_graph(
            executor, [spec("slow"), spec("next", "{{ steps.slow.output }}")],
            {"next": ["slow"]}, timeout=0.2,
        )  # fmt: skip
    finally:
        release.set()
    assert [o.output for o in outcomes] == ["step did not finish within 0.2s"] * 2


def test_on_outcome_sees_every_outcome_once_on_the_calling_thread() -> None:
    seen: list[tuple[int, str, bool]] = []
    caller = threading.current_thread()

    def on_outcome(index: int, outcome: StepOutcome) -> None:
        assert threading.current_thread() is caller
        seen.append((index, outcome.task_id, outcome.success))
        raise RuntimeError("a broken callback does not break the run")

    specs = [spec("a"), spec("b", agent="fail"), spec("c", "{{ steps.b.output }}")]
    outcomes = execute_graph(Recorder(), specs, {"c": ["b"]}, on_outcome=on_outcome)
    assert sorted(seen) == [(0, "a", True), (1, "b", False), (2, "c", False)]
    assert len(outcomes) == 3


def test_a_graph_run_from_inside_a_step_of_the_same_executor_cannot_deadlock() -> None:
    class Nesting(Recorder):
        def execute_step(self, spec: AgentStepSpec, events: object = None) -> StepOutcome:
            if spec.task_id == "outer":
                inner = [AgentStepSpec(f"in{i}", "a", "", f"i{i}") for i in range(3)]
                results = execute_graph(self, inner, {"in2": ["in0", "in1"]})
                prompt = ",".join(o.output for o in results)
                return StepOutcome("outer", "s", "a", prompt, True)
            return super().execute_step(spec, events)

    [outcome] = execute_graph(Nesting(hint=1), [spec("outer")])
    assert outcome.output == "i0,i1,i2"


def test_a_graph_run_from_inside_a_step_uses_the_free_workers_too() -> None:
    # "x" and "y" each wait until the other has started: run one after the other (in the
    # outer step's place only) they would never finish; with free workers they run together.
    started = {name: threading.Event() for name in ("x", "y")}

    class Nesting(Recorder):
        def work(self, spec: AgentStepSpec) -> StepOutcome:
            if spec.task_id == "outer":
                results = execute_graph(self, [spec_of("x"), spec_of("y")])
                prompt = ",".join(o.output for o in results if o.success)
                return StepOutcome("outer", "s", "a", prompt, True)
            started[spec.task_id].set()
            other = started["y" if spec.task_id == "x" else "x"]
            if not other.wait(WAIT_S):
                return StepOutcome.failed(spec.task_id, "a", "ran alone")
            return super().work(spec)

    def spec_of(task_id: str) -> AgentStepSpec:
        return AgentStepSpec(task_id, "a", "", task_id)

    executor = Nesting(hint=3)
    [outcome] = execute_graph(executor, [spec("outer")])
    assert outcome.output == "x,y"
    assert executor.peak <= 3


def test_resume_reruns_dependents_only_when_the_text_they_read_changed() -> None:
    store = MemoryCheckpointStore()
    specs = [
        spec("r", "facts"),
        spec("w", "write {{ steps.r.output }}"),
        spec("c", "check {{ steps.w.output }}"),
    ]
    needs = {"w": ["r"], "c": ["w"]}
    first = Recorder()
    execute_graph(first, specs, needs, store=store, workflow_id="wf")
    assert first.ran == ["r", "w", "c"]
    again = Recorder()
    outcomes = execute_graph(again, specs, needs, store=store, workflow_id="wf")
    assert again.ran == []
    assert [o.output for o in outcomes] == ["facts", "write facts", "check write facts"]
    changed = [spec("r", "new facts"), *specs[1:]]
    third = Recorder()
    execute_graph(third, changed, needs, store=store, workflow_id="wf")
    assert third.ran == ["r", "w", "c"]  # r changed, so the text w and c read changed too
    changed_last = [*changed[:2], spec("c", "verify {{ steps.w.output }}")]
    fourth = Recorder()
    execute_graph(fourth, changed_last, needs, store=store, workflow_id="wf")
    assert fourth.ran == ["c"]


def test_a_long_chain_of_failures_does_not_recurse() -> None:
    specs = [spec("s0", agent="fail")] + [spec(f"s{i}") for i in range(1, 3000)]
    needs = {f"s{i}": [f"s{i - 1}"] for i in range(1, 3000)}
    outcomes = execute_graph(Recorder(), specs, needs)
    assert sum(o.success for o in outcomes) == 0


def test_works_with_a_real_local_executor_and_exports() -> None:
    orch = ao.AgentOrchestrator()
    orch.add_agent("echo", lambda: ao.AgentOptions(ao.EchoModel()))
    specs = [
        AgentStepSpec("a", "echo", "", "alpha"),
        AgentStepSpec("b", "echo", "", "{{ steps.a.output }} beta"),
    ]
    with ao.LocalExecutor(orch, max_parallel_tasks=2) as executor:
        outcomes = ao.execute_graph(executor, specs, {"b": ["a"]})
    assert [o.output for o in outcomes] == ["alpha", "alpha beta"]
