"""Step specs, outcomes and `execute_steps_parallel` (port of the Rust seed 002 tests, and more)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import msgspec
import pykka
import pytest

from actor_orch.executor import (
    DEFAULT_MAX_PARALLEL_TASKS,
    AgentExecutor,
    AgentStepSpec,
    EventCallback,
    StepOutcome,
    current_step_abort,
    execute_steps_parallel,
)

WAIT_S = 5.0  # generous bound for any synchronisation wait in these tests


class MockExecutor(AgentExecutor):
    """The seed's mock: counts concurrent steps; agent "fail" fails, agent "boom" raises."""

    def __init__(self, hint: int = 8, delay_s: float = 0.02) -> None:
        self.hint = hint
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def execute_step(self, spec: AgentStepSpec, events: EventCallback | None = None) -> StepOutcome:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay_s)
        finally:
            with self._lock:
                self.active -= 1
        if spec.agent == "boom":
            raise RuntimeError("boom")
        return StepOutcome(
            task_id=spec.task_id,
            session_id=f"task-run-{spec.task_id}",
            agent=spec.agent,
            output=f"ran: {spec.prompt}",
            success=spec.agent != "fail",
        )

    def concurrency_hint(self) -> int:
        return self.hint


class FunctionExecutor(AgentExecutor):
    """Runs `fn(spec)` as the step; lets a test script each step's behaviour."""

    def __init__(self, fn: Any, hint: int = DEFAULT_MAX_PARALLEL_TASKS) -> None:
        self.fn = fn
        self.hint = hint

    def execute_step(self, spec: AgentStepSpec, events: EventCallback | None = None) -> StepOutcome:
        result: StepOutcome = self.fn(spec)
        return result

    def concurrency_hint(self) -> int:
        return self.hint


def spec(task_id: str, agent: str = "explore") -> AgentStepSpec:
    return AgentStepSpec(task_id, agent, "d", f"prompt-{task_id}")


def ok(spec: AgentStepSpec, output: str = "ok") -> StepOutcome:
    return StepOutcome(spec.task_id, f"task-run-{spec.task_id}", spec.agent, output, True)


# --- ported from the Rust seed -------------------------------------------------------------


def test_fans_out_in_input_order() -> None:
    out = execute_steps_parallel(
        MockExecutor(8), [spec("a", "explore"), spec("b", "review"), spec("c", "plan")]
    )
    assert [o.task_id for o in out] == ["a", "b", "c"], "results preserve input order"
    assert all(o.success for o in out)
    assert out[0].output == "ran: prompt-a"


def test_respects_concurrency_hint() -> None:
    mock = MockExecutor(2)
    execute_steps_parallel(mock, [spec(str(i)) for i in range(6)])
    assert mock.max_active == 2, "never more than concurrency_hint steps run at once"


def test_isolates_failed_and_panicked_steps() -> None:
    out = execute_steps_parallel(
        MockExecutor(8),
        [spec("ok", "explore"), spec("bad", "fail"), spec("crash", "boom"), spec("ok2", "review")],
    )
    assert len(out) == 4, "every step yields a result"
    assert out[0].success
    assert not out[1].success, "explicit failure surfaces as success=false"
    assert not out[2].success
    assert (out[2].task_id, out[2].agent) == ("crash", "boom"), "a crash is a labelled outcome"
    assert out[2].session_id == "task-run-crash"
    assert out[2].output == "RuntimeError: boom"
    assert out[3].success, "later steps unaffected by an earlier crash"


def test_default_concurrency_hint_is_the_framework_default() -> None:
    class Bare(AgentExecutor):
        def execute_step(
            self, spec: AgentStepSpec, events: EventCallback | None = None
        ) -> StepOutcome:
            return StepOutcome.failed(spec.task_id, spec.agent, "unused")

    assert Bare().concurrency_hint() == DEFAULT_MAX_PARALLEL_TASKS == 8


def test_spec_and_outcome_round_trip_including_new_optional_fields() -> None:
    schema = {"type": "object", "properties": {"v": {"type": "string"}}, "required": ["v"]}
    full = (
        AgentStepSpec("t1", "explore", "d", "p")
        .with_max_steps(3)
        .with_parent_session_id("parent")
        .with_output_schema(schema)
    )
    back = msgspec.json.decode(msgspec.json.encode(full), type=AgentStepSpec)
    assert back == full
    assert back.output_schema == schema

    outcome = StepOutcome("t1", "task-run-t1", "explore", "ok", True, structured={"v": "x"})
    assert msgspec.json.decode(msgspec.json.encode(outcome), type=StepOutcome) == outcome

    old_spec = msgspec.json.decode(
        b'{"task_id":"t","agent":"a","description":"d","prompt":"p"}', type=AgentStepSpec
    )
    assert old_spec.output_schema is None
    assert old_spec.max_steps is None
    assert old_spec.parent_session_id is None
    old_outcome = msgspec.json.decode(
        b'{"task_id":"t","session_id":"s","agent":"a","output":"o","success":true}',
        type=StepOutcome,
    )
    assert old_outcome.structured is None


# --- specs and outcomes as data ------------------------------------------------------------


def test_json_omits_none_fields() -> None:
    assert msgspec.json.decode(msgspec.json.encode(spec("t"))) == {
        "task_id": "t",
        "agent": "explore",
        "description": "d",
        "prompt": "prompt-t",
    }
    assert "structured" not in msgspec.json.decode(msgspec.json.encode(ok(spec("t"))))


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (b'{"task_id":"t","agent":7,"description":"d","prompt":"p"}', "$.agent"),
        (b'{"task_id":"t","description":"d","prompt":"p"}', "agent"),
        (
            b'{"task_id":"t","agent":"a","description":"d","prompt":"p","max_steps":0}',
            "$.max_steps",
        ),
        (
            b'{"task_id":"t","agent":"a","description":"d","prompt":"p","output_schema":[]}',
            "$.output_schema",
        ),
    ],
)
def test_bad_spec_payload_is_a_validation_error_naming_the_field(payload: bytes, path: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=path.replace("$", r"\$")):
        msgspec.json.decode(payload, type=AgentStepSpec)


def test_bad_outcome_payload_is_a_validation_error_naming_the_field() -> None:
    payload = b'{"task_id":"t","session_id":"s","agent":"a","output":"o","success":"yes"}'
    with pytest.raises(msgspec.ValidationError, match=r"\$\.success"):
        msgspec.json.decode(payload, type=StepOutcome)


def test_builders_return_new_specs_and_leave_the_original_unchanged() -> None:
    original = spec("t")
    capped = original.with_max_steps(2)
    child = original.with_parent_session_id("parent")
    typed = original.with_output_schema({"type": "object"})
    assert (capped.max_steps, child.parent_session_id, typed.output_schema) == (
        2,
        "parent",
        {"type": "object"},
    )
    assert original == spec("t")
    assert original.max_steps is None
    assert original.parent_session_id is None
    assert original.output_schema is None
    assert capped.task_id == child.task_id == typed.task_id == "t"


def test_with_max_steps_below_one_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        spec("t").with_max_steps(0)


def test_failed_outcome_uses_the_task_run_session_id() -> None:
    assert StepOutcome.failed("t9", "plan", "why") == StepOutcome(
        "t9", "task-run-t9", "plan", "why", False
    )


# --- execute_steps_parallel ----------------------------------------------------------------


def test_no_specs_give_no_outcomes() -> None:
    assert execute_steps_parallel(MockExecutor(), []) == []


def test_spec_that_is_not_an_agent_step_spec_is_a_type_error_naming_its_index() -> None:
    with pytest.raises(TypeError, match=r"specs\[1\]"):
        execute_steps_parallel(MockExecutor(), [spec("a"), {"task_id": "b"}])  # type: ignore[list-item]


@pytest.mark.parametrize("timeout", [0, -2.5])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        execute_steps_parallel(MockExecutor(), [spec("a")], timeout=timeout)


def test_concurrency_hint_below_one_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="concurrency_hint"):
        execute_steps_parallel(MockExecutor(hint=0), [spec("a")])


def test_events_callback_is_passed_to_every_step() -> None:
    seen: list[str] = []
    lock = threading.Lock()

    class Reporting(AgentExecutor):
        def execute_step(
            self, spec: AgentStepSpec, events: EventCallback | None = None
        ) -> StepOutcome:
            assert events is not None
            events(spec.task_id)
            return ok(spec)

    def record(event: Any) -> None:
        with lock:
            seen.append(event)

    execute_steps_parallel(Reporting(), [spec("a"), spec("b")], record)
    assert sorted(seen) == ["a", "b"]


def test_a_return_value_that_is_not_a_step_outcome_becomes_a_failed_outcome() -> None:
    out = execute_steps_parallel(FunctionExecutor(lambda s: "just text"), [spec("a", "plan")])
    assert out == [StepOutcome.failed("a", "plan", "executor returned str, not a StepOutcome")]


def test_five_hundred_steps_with_random_delays_keep_input_order() -> None:
    rng = random.Random(2024)
    delays = {f"t{i}": rng.uniform(0, 0.002) for i in range(500)}

    def step(s: AgentStepSpec) -> StepOutcome:
        time.sleep(delays[s.task_id])
        return ok(s, output=s.prompt)

    specs = [spec(f"t{i}") for i in range(500)]
    out = execute_steps_parallel(FunctionExecutor(step, hint=16), specs)
    assert [o.task_id for o in out] == [s.task_id for s in specs]
    assert [o.output for o in out] == [s.prompt for s in specs]
    assert all(o.success for o in out)


def test_timeout_fails_unfinished_steps_promptly_and_discards_the_late_result() -> None:
    release = threading.Event()
    late_step_returned = threading.Event()
    abort_seen_by_abandoned_step: list[bool] = []

    def step(s: AgentStepSpec) -> StepOutcome:
        if s.task_id == "slow":
            release.wait(WAIT_S)
            abort = current_step_abort()
            abort_seen_by_abandoned_step.append(abort is not None and abort.is_set())
            late_step_returned.set()
            return ok(s, output="late")
        return ok(s)

    started = time.monotonic()
    out = execute_steps_parallel(
        FunctionExecutor(step, hint=2), [spec("a"), spec("slow"), spec("b")], timeout=0.2
    )
    assert time.monotonic() - started < WAIT_S / 2, "returns when the timeout expires"
    assert [o.task_id for o in out] == ["a", "slow", "b"]
    assert out[0].success
    assert out[2].success
    assert out[1] == StepOutcome.failed("slow", "explore", "step did not finish within 0.2s")

    release.set()
    assert late_step_returned.wait(WAIT_S)
    assert out[1].output == "step did not finish within 0.2s", "the late result is discarded"
    assert abort_seen_by_abandoned_step == [True], "an abandoned step is asked to abort"


def test_cancel_fails_unstarted_steps_and_asks_running_steps_to_abort() -> None:
    cancel = threading.Event()
    both_running = threading.Barrier(2, timeout=WAIT_S)

    def step(s: AgentStepSpec) -> StepOutcome:
        both_running.wait()
        if s.task_id == "0":
            cancel.set()
        abort = current_step_abort()
        aborted = abort is not None and abort.wait(WAIT_S)
        return ok(s, output="aborted" if aborted else "not aborted")

    specs = [spec(str(i)) for i in range(6)]
    out = execute_steps_parallel(FunctionExecutor(step, hint=2), specs, cancel=cancel)
    assert [o.task_id for o in out] == [s.task_id for s in specs], "every spec gets an outcome"
    assert [o.output for o in out[:2]] == ["aborted", "aborted"]
    assert all(o.success for o in out[:2]), "running steps finish and keep their result"
    assert out[2:] == [StepOutcome.failed(s.task_id, s.agent, "cancelled") for s in specs[2:]]


def test_current_step_abort_is_none_outside_a_step_and_unset_inside_a_running_one() -> None:
    seen: list[bool | None] = []

    def step(s: AgentStepSpec) -> StepOutcome:
        abort = current_step_abort()
        seen.append(None if abort is None else abort.is_set())
        return ok(s)

    assert current_step_abort() is None
    execute_steps_parallel(FunctionExecutor(step), [spec("a")])
    assert seen == [False]
    assert current_step_abort() is None


def test_system_exit_in_a_step_is_a_failed_outcome_and_other_actors_keep_running() -> None:
    class Bystander(pykka.ThreadingActor):
        use_daemon_thread = True

        def on_receive(self, message: Any) -> Any:
            return message

    bystander = Bystander.start()
    try:

        def step(s: AgentStepSpec) -> StepOutcome:
            if s.task_id == "exit":
                raise SystemExit("bye")
            return ok(s)

        out = execute_steps_parallel(
            FunctionExecutor(step, hint=2), [spec("a"), spec("exit"), spec("b"), spec("c")]
        )
        assert [o.success for o in out] == [True, False, True, True]
        assert out[1].output == "SystemExit: bye"
        assert bystander.ask("alive?", timeout=WAIT_S) == "alive?"
    finally:
        bystander.stop(timeout=WAIT_S)


def test_nested_parallel_steps_complete() -> None:
    inner = MockExecutor(hint=2, delay_s=0.001)

    def step(s: AgentStepSpec) -> StepOutcome:
        children = execute_steps_parallel(inner, [spec(f"{s.task_id}.{i}") for i in range(3)])
        return ok(s, output=",".join(c.task_id for c in children))

    out = execute_steps_parallel(FunctionExecutor(step, hint=3), [spec("a"), spec("b")])
    assert [o.output for o in out] == ["a.0,a.1,a.2", "b.0,b.1,b.2"]


def test_concurrent_callers_get_their_own_outcomes() -> None:
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    executor = MockExecutor(hint=3, delay_s=0.001)

    def caller(k: int) -> None:
        try:
            out = execute_steps_parallel(executor, [spec(f"{k}-{i}") for i in range(10)])
            results[k] = [o.task_id for o in out]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 2)
    assert errors == []
    assert results == {k: [f"{k}-{i}" for i in range(10)] for k in range(8)}
