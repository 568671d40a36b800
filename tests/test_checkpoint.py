"""Checkpoint stores: one row per step, constant cost per save, safe across processes, and
corrupt content of every kind treated as absent (with a warning), never an exception."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loguru import logger

from actor_orch import (
    AgentExecutor,
    AgentStepSpec,
    CheckpointedStep,
    MemoryCheckpointStore,
    SqliteCheckpointStore,
    StepOutcome,
    WorkflowCheckpoint,
    execute_steps_parallel_resumable,
)
from actor_orch.checkpoint import save_step

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 60.0


class Upper(AgentExecutor):
    """Succeeds at once with the prompt upper-cased."""

    def execute_step(self, spec: AgentStepSpec, events: object = None) -> StepOutcome:
        return StepOutcome(spec.task_id, f"task-run-{spec.task_id}", spec.agent, spec.prompt, True)


def done(task_id: str, output: str = "o") -> CheckpointedStep:
    outcome = StepOutcome(task_id, f"task-run-{task_id}", "a", output, True)
    return CheckpointedStep("digest", outcome)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The library's warning messages while the test runs."""
    seen: list[str] = []
    logger.enable("actor_orch")
    sink = logger.add(lambda message: seen.append(str(message)), level="WARNING")
    try:
        yield seen
    finally:
        logger.remove(sink)
        logger.disable("actor_orch")


# --- per-step saves -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_save_step_adds_one_step_and_keeps_the_others(kind: str, tmp_path: Path) -> None:
    store = MemoryCheckpointStore() if kind == "memory" else SqliteCheckpointStore(tmp_path / "c")
    store.save_step("wf", "a", done("a"))
    store.save_step("wf", "b", done("b"))
    store.save_step("wf", "a", done("a", "again"))  # replaces its own row only
    store.save_step("other", "z", done("z"))
    loaded = store.load("wf")
    assert loaded is not None
    assert {k: v.outcome.output for k, v in loaded.steps.items()} == {"a": "again", "b": "o"}
    store.delete("wf")
    assert store.load("wf") is None
    other = store.load("other")
    assert other is not None and list(other.steps) == ["z"]


def test_save_step_helper_falls_back_to_whole_saves_for_a_plain_store() -> None:
    class PlainStore:
        def __init__(self) -> None:
            self.saved: dict[str, WorkflowCheckpoint] = {}

        def load(self, workflow_id: str) -> WorkflowCheckpoint | None:
            return self.saved.get(workflow_id)

        def save(self, workflow_id: str, checkpoint: WorkflowCheckpoint) -> None:
            self.saved[workflow_id] = checkpoint

        def delete(self, workflow_id: str) -> None:
            self.saved.pop(workflow_id, None)

    store = PlainStore()
    specs = [AgentStepSpec(f"t{i}", "a", "", f"p{i}") for i in range(3)]
    execute_steps_parallel_resumable(Upper(), specs, "wf", store)
    assert set(store.saved["wf"].steps) == {"t0", "t1", "t2"}
    save_step(store, "wf", "x", done("x"))
    assert "x" in store.saved["wf"].steps


class TracedStore(SqliteCheckpointStore):
    """Records every SQL statement it runs, with its bound values written out."""

    statements: list[str]

    def _connect(self) -> sqlite3.Connection:
        db = super()._connect()
        db.set_trace_callback(self.statements.append)
        return db


def traced_run(path: Path, steps: int) -> tuple[int, list[str]]:
    """Run `steps` trivial steps resumably; (statements before the run, the run's statements)."""
    store = TracedStore.__new__(TracedStore)
    store.statements = []
    store.__init__(path)  # type: ignore[misc]
    setup = len(store.statements)
    specs = [AgentStepSpec(f"t{i:05d}", "a", "", "the same prompt") for i in range(steps)]
    execute_steps_parallel_resumable(Upper(), specs, "wf", store)
    store.close()
    return setup, store.statements[setup:]


def test_a_save_costs_the_same_at_300_and_at_3000_saved_steps(tmp_path: Path) -> None:
    _, small = traced_run(tmp_path / "small.db", 300)
    _, large = traced_run(tmp_path / "large.db", 3000)
    small_saves = [s for s in small if s.startswith("INSERT INTO checkpoint_steps")]
    large_saves = [s for s in large if s.startswith("INSERT INTO checkpoint_steps")]
    # One statement per step, and nothing else written per step (no rewrite of the rest).
    assert len(small_saves) == 300
    assert len(large_saves) == 3000
    writes = ("INSERT", "UPDATE", "DELETE", "REPLACE")
    assert [s for s in large if s.startswith(writes)] == large_saves
    # The 3000th save sends as much as the 300th, and the first: its cost does not grow
    # (sizes differ only by the digits of the timestamp).
    sizes = [len(s) for s in large_saves]
    assert max(sizes) - min(sizes) <= 6
    assert abs(len(large_saves[-1]) - len(small_saves[-1])) <= 6
    # Reads per run are a constant handful (load once), not one per step; saves are grouped
    # into at most one transaction per step.
    reads = ("SELECT", "PRAGMA")
    assert len([s for s in large if s.startswith(reads)]) == len(
        [s for s in small if s.startswith(reads)]
    )
    assert 1 <= len([s for s in large if s.startswith("BEGIN")]) <= 3000


def test_two_processes_saving_steps_of_one_workflow_lose_none(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    script = textwrap.dedent(
        """
        import sys
        from actor_orch import CheckpointedStep, SqliteCheckpointStore, StepOutcome
        name, path = sys.argv[1], sys.argv[2]
        store = SqliteCheckpointStore(path)
        print("ready", flush=True)
        sys.stdin.readline()  # both start saving together
        for i in range(150):
            task = f"{name}-{i}"
            outcome = StepOutcome(task, "s", "a", "o", True)
            store.save_step("one-workflow", task, CheckpointedStep("d", outcome))
        """
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, name, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name in ("left", "right")
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
            assert process.returncode == 0, stderr
            assert "cannot save" not in stderr
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    loaded = SqliteCheckpointStore(path).load("one-workflow")
    assert loaded is not None
    assert len(loaded.steps) == 300


def test_steps_saved_from_many_threads_are_all_kept(tmp_path: Path) -> None:
    store = SqliteCheckpointStore(tmp_path / "threads.db")
    specs = [AgentStepSpec(f"t{i}", "a", "", "p") for i in range(200)]
    execute_steps_parallel_resumable(Upper(), specs, "wf", store)
    loaded = store.load("wf")
    assert loaded is not None and len(loaded.steps) == 200


# --- corrupt content ----------------------------------------------------------------------


def write_rows(path: Path, *rows: tuple[object, object, object]) -> None:
    """Put raw (task_id, data, updated_at) rows for workflow 'wf' into a fresh store's file."""
    SqliteCheckpointStore(path).close()
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO checkpoint_steps (workflow_id, task_id, data, updated_at) "
            "VALUES ('wf', ?, ?, ?)",
            rows,
        )
    db.close()


GOOD_ROW = ("good", b'{"spec_digest":"d","outcome":{"task_id":"good","session_id":"s",'
            b'"agent":"a","output":"kept","success":true}}', 1.0)  # fmt: skip


def bad_json(path: Path) -> None:
    write_rows(path, GOOD_ROW, ("bad", b"{not json", 1.0))


def bad_utf8(path: Path) -> None:
    write_rows(path, GOOD_ROW, ("bad", b"\xff\xfe{}", 1.0))
    with sqlite3.connect(path) as db:  # invalid UTF-8 stored as TEXT, in both columns
        db.execute(
            "INSERT INTO checkpoint_steps VALUES ('wf', CAST(x'ff61' AS TEXT), "
            "CAST(x'7b22ff' AS TEXT), 1.0)"
        )
    db.close()


def wrong_shape_json(path: Path) -> None:
    write_rows(path, GOOD_ROW, ("bad", b'{"spec_digest": 3}', 1.0), ("n", 42, "x"))


def wrong_schema(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE checkpoint_steps (something TEXT)")
    db.close()


def other_version(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()


def not_a_database(path: Path) -> None:
    path.write_bytes(b"this is not a sqlite database\n" * 200)


def a_directory(path: Path) -> None:
    path.mkdir()


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "bad-json": bad_json,
    "bad-utf8": bad_utf8,
    "wrong-shape-json": wrong_shape_json,
    "wrong-schema": wrong_schema,
    "other-version": other_version,
    "not-a-database": not_a_database,
    "a-directory": a_directory,
}
ROW_LEVEL = {"bad-json", "bad-utf8", "wrong-shape-json"}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_content_is_treated_as_absent_with_a_warning(
    kind: str, tmp_path: Path, warnings: list[str]
) -> None:
    path = tmp_path / "checkpoints.db"
    CORRUPTIONS[kind](path)
    store = SqliteCheckpointStore(path)  # never raises
    loaded = store.load("wf")
    if kind in ROW_LEVEL:
        # Only the corrupt steps are lost; the good one is kept.
        assert loaded is not None and set(loaded.steps) == {"good"}
        assert loaded.steps["good"].outcome.output == "kept"
    else:
        assert loaded is None
    assert warnings, "a corrupt store must say so"
    store.save_step("wf", "new", done("new"))
    store.save("wf2", WorkflowCheckpoint())
    store.delete("wf2")
    # A resumable run on it completes: the corrupt steps simply run again.
    specs = [AgentStepSpec("good", "a", "", "p"), AgentStepSpec("bad", "a", "", "q")]
    outcomes = execute_steps_parallel_resumable(Upper(), specs, "wf3", store)
    assert all(o.success for o in outcomes)


def test_an_unusable_store_warns_once_not_per_step(tmp_path: Path, warnings: list[str]) -> None:
    not_a_database(tmp_path / "x.db")
    store = SqliteCheckpointStore(tmp_path / "x.db")
    specs = [AgentStepSpec(f"t{i}", "a", "", "p") for i in range(50)]
    execute_steps_parallel_resumable(Upper(), specs, "wf", store)
    assert len(warnings) == 1


def test_store_repr_and_bad_timeout(tmp_path: Path) -> None:
    store = SqliteCheckpointStore(tmp_path / "r.db", timeout=0.5)
    assert repr(store) == f"SqliteCheckpointStore({str(tmp_path / 'r.db')!r}, timeout=0.5)"
    with pytest.raises(ValueError, match="timeout"):
        SqliteCheckpointStore(tmp_path / "r.db", timeout=600)


def test_a_locked_file_delays_saves_but_loses_none_and_blocks_no_caller(
    tmp_path: Path, warnings: list[str]
) -> None:
    path = tmp_path / "locked.db"
    store = SqliteCheckpointStore(path, timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        for i in range(20):
            store.save_step("wf", f"t{i}", done(f"t{i}"))  # returns at once: queued
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not any("locked" in w for w in warnings):  # the writer tried and was refused
            assert time.monotonic() < deadline, "the writer never reported the lock"
            assert not store.flush(timeout=0.05)  # cannot commit while the lock is held
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.flush(timeout=RUN_TIMEOUT_S)  # retried once the lock is gone
    loaded = store.load("wf")
    assert loaded is not None and len(loaded.steps) == 20


def test_steps_still_queued_at_exit_are_committed(tmp_path: Path) -> None:
    path = tmp_path / "exit.db"
    script = textwrap.dedent(
        """
        import sys
        from actor_orch import CheckpointedStep, SqliteCheckpointStore, StepOutcome
        store = SqliteCheckpointStore(sys.argv[1])
        for i in range(500):
            outcome = StepOutcome(f"t{i}", "s", "a", "o", True)
            store.save_step("wf", f"t{i}", CheckpointedStep("d", outcome))
        # no flush(), no close(): the exit handler commits what is queued
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = SqliteCheckpointStore(path).load("wf")
    assert loaded is not None and len(loaded.steps) == 500
