"""The JSON-lines event log: whole lines from many threads, flushed, never raising."""

from __future__ import annotations

import io
import itertools
import threading
from pathlib import Path

import msgspec

from actor_orch import (
    AgentFailed,
    AgentRestarted,
    Event,
    ModelCallFinished,
    StepFinished,
    StepStarted,
    SupervisorAction,
    ToolCallFinished,
    Usage,
)
from actor_orch.event_log import EventLog

THREADS = 8
EVENTS_PER_THREAD = 400


def test_each_event_is_one_line_that_decodes_back_to_it_with_a_timestamp_in_front() -> None:
    events: list[Event] = [
        StepStarted("t<1>", "writer"),
        ModelCallFinished("writer", "t<1>", 0.25, Usage(3, 4), None),
        ToolCallFinished("writer", "t<1>", "search", 0.5, is_error=True),
        AgentFailed("writer", 'bad "quote"\nnewline', SupervisorAction.RESTART),
        AgentRestarted("writer", 1),
        StepFinished("t<1>", "writer", False, 1.5),
    ]
    file = io.BytesIO()
    clock = itertools.count(100)
    log = EventLog(file, clock=lambda: float(next(clock)))
    for event in events:
        log(event)
    lines = file.getvalue().splitlines()
    assert len(lines) == len(events) == log.lines
    assert all(line.startswith(b'{"ts":') for line in lines)
    assert [msgspec.json.decode(line, type=Event) for line in lines] == events
    assert [msgspec.json.decode(line)["ts"] for line in lines] == [100.0 + i for i in range(6)]


def test_lines_from_many_threads_are_whole_and_in_timestamp_order(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(open(path, "wb"))  # noqa: SIM115 (the log closes it)
    go = threading.Barrier(THREADS)

    def emit(worker: int) -> None:
        go.wait(timeout=10)
        for number in range(EVENTS_PER_THREAD):
            log(StepStarted(f"w{worker}-{number}", "x" * (number % 50)))

    threads = [threading.Thread(target=emit, args=(worker,)) for worker in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    log.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == THREADS * EVENTS_PER_THREAD
    decoded = [msgspec.json.decode(line) for line in lines]
    assert {d["task_id"] for d in decoded} == {
        f"w{w}-{n}" for w in range(THREADS) for n in range(EVENTS_PER_THREAD)
    }
    stamps = [d["ts"] for d in decoded]
    assert stamps == sorted(stamps)


def test_each_line_is_flushed_before_the_emitting_thread_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(open(path, "wb"))  # noqa: SIM115 (the log closes it)
    log(StepStarted("t1", "a"))
    assert path.read_bytes().count(b"\n") == 1  # visible to another reader, not buffered
    log.close()


def test_events_after_close_are_ignored_and_close_is_idempotent() -> None:
    file = io.BytesIO()
    log = EventLog(file)
    log(StepStarted("t1", "a"))
    log.close()
    log.close()
    log(StepStarted("t2", "a"))  # a step abandoned by the run may still emit: no error
    assert file.closed
    assert log.lines == 1
    assert log.problem is None


def test_a_write_error_is_kept_in_problem_and_never_raised() -> None:
    log = EventLog(open("/dev/full", "wb"))  # noqa: SIM115 (the log closes it)
    log(StepStarted("t1", "a"))
    log(StepStarted("t2", "a"))
    assert log.problem is not None
    assert "space" in log.problem.lower()
    assert log.lines == 0
    log.close()
