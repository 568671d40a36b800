"""`actor-orch run --events PATH --report PATH`, and the tokens of the summary line, run as a
real subprocess (the helpers and the loopback chat server are those of test_cli.py)."""

from __future__ import annotations

import html
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
import test_cli
from support import outcomes_of
from test_cli import (
    completion,
    finish,
    held_until,
    held_workflow,
    run_cli,
    start_cli,
    step,
    tool_call_completion,
    wait_for_stderr,
    write,
)

from actor_orch import Event, StepFinished, StepStarted

chat_server = test_cli.chat_server  # the loopback server fixture of test_cli.py

HOSTILE = "<script>alert(1)</script>"


def events_of(path: Path) -> list[tuple[float, Event]]:
    """The events of an --events file with their `ts`; every line must be whole JSON."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the last line is cut short"
    return [
        (msgspec.json.decode(line)["ts"], msgspec.json.decode(line, type=Event))
        for line in data.splitlines()
    ]


def graph_workflow(tmp_path: Path) -> Path:
    """A step that fails (echo output is not JSON), one that needs it (not run), two fine ones,
    one of them with a task id and a prompt an HTML page must escape."""
    return write(
        tmp_path,
        "wf.toml",
        "[agents.a]\n[agents.b]\n"
        + step("bad", "a", "not json")
        + "output_schema = { type = 'object' }\n"
        + step("child", "b", "use {{ steps.bad.output }}")
        + 'needs = ["bad"]\n'
        + step("fine", "b", f"say {HOSTILE}")
        + step(f"odd{HOSTILE}", "a", "ok")
        + 'needs = ["fine"]\n',
    )


def test_run_help_lists_events_and_report() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0
    assert "--events PATH" in result.stdout
    assert "--report PATH" in result.stdout


def test_events_file_holds_every_event_of_the_run_exactly_once(tmp_path: Path) -> None:
    events_path = tmp_path / "events.jsonl"
    result = run_cli("run", "examples/fanout.toml", "--events", str(events_path))
    assert result.returncode == 0, result.stderr
    task_ids = [o.task_id for o in outcomes_of(result.stdout)]
    events = events_of(events_path)
    stamps = [ts for ts, _ in events]
    assert stamps == sorted(stamps)
    kinds = Counter((type(e).__name__, getattr(e, "task_id", None)) for _, e in events)
    for task_id in task_ids:
        assert kinds["StepStarted", task_id] == 1
        assert kinds["StepFinished", task_id] == 1
        assert kinds["ModelCallFinished", task_id] >= 1
    # Each step's events come between its start and its end.
    for task_id in task_ids:
        own = [e for _, e in events if getattr(e, "task_id", None) == task_id]
        assert isinstance(own[0], StepStarted)
        assert isinstance(own[-1], StepFinished)


def test_report_is_one_page_with_every_step_escaped_and_nothing_to_fetch(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    result = run_cli("run", str(graph_workflow(tmp_path)), "--report", str(report))
    assert result.returncode == 1, result.stderr
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page.lower()
    assert "odd&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "say &lt;script&gt;alert(1)&lt;/script&gt;" in page  # the echoed output
    timeline = page[page.index('class="timeline"') : page.index("</svg>")]
    assert timeline.count("<title>") == 3  # bad, fine, odd ran; child did not
    assert "child (not run: needed step &#x27;bad&#x27; failed)" in page
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("done: 4 steps, 2 succeeded, 2 failed")
    assert f'<p class="summary">{html.escape(summary)}</p>' in page


def test_summary_line_reports_the_tokens_in_and_out(tmp_path: Path, chat_server: Any) -> None:
    server = chat_server(lambda body: completion("fine"))  # 1 token in, 1 out per call
    steps = "".join(step(f"t{i}", "a", f"p{i}") for i in range(3))
    workflow = write(tmp_path, "wf.toml", "[agents.a]\n" + steps)
    report = tmp_path / "report.html"
    result = run_cli(
        "run", str(workflow), "--model", "openai", "--base-url", server.base_url,
        "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "done: 3 steps, 3 succeeded, 0 failed in " in result.stderr
    assert ", tokens 3 in / 3 out" in result.stderr
    page = report.read_text(encoding="utf-8")
    assert "<td>a</td><td class='num'>3</td><td class='num'>3</td><td class='num'>0</td>" in page


@pytest.mark.parametrize("how", ["sigterm", "sigint-twice"])
def test_events_and_report_are_complete_after_a_signal(
    how: str, tmp_path: Path, chat_server: Any
) -> None:
    release = threading.Event()
    server = chat_server(held_until(release, tool_call_completion()))
    workflow = held_workflow(tmp_path, quick=2, held=2)
    events_path, report = tmp_path / "events.jsonl", tmp_path / "report.html"
    process = start_cli(
        "run", str(workflow), "--model", "openai", "--base-url", server.base_url,
        "--max-parallel", "4", "--events", str(events_path), "--report", str(report),
    )  # fmt: skip
    try:
        server.wait_for_requests(2)  # both held steps are inside a model call
        if how == "sigterm":
            process.send_signal(signal.SIGTERM)
        else:
            process.send_signal(signal.SIGINT)
            wait_for_stderr(process, "interrupted: cancelling")
            process.send_signal(signal.SIGINT)
        stdout, stderr = finish(process, release)
    finally:
        release.set()
    assert process.returncode == (143 if how == "sigterm" else 130), stderr
    assert "Traceback" not in stderr
    outcomes = outcomes_of(stdout)
    assert [(o.task_id, o.success) for o in outcomes] == [
        ("q0", True),
        ("q1", True),
        ("h0", False),
        ("h1", False),
    ]
    events = events_of(events_path)
    started = {e.task_id for _, e in events if isinstance(e, StepStarted)}
    assert started == {"q0", "q1", "h0", "h1"}
    page = report.read_text(encoding="utf-8")
    assert page.rstrip().endswith("</html>")
    # The held steps were running when the run stopped: dashed, open-ended cancelled bars.
    timeline = page[page.index('class="timeline"') : page.index("</svg>")]
    assert timeline.count('stroke-dasharray="4 3"') == 2
    assert "interrupted before the step ended" in page


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--report", "{workflow}"], "--report {workflow}: the same file as the workflow file"),
        (
            ["--events", "{dir}/x", "--report", "{dir}/x"],
            "--report {dir}/x: the same file as --events",
        ),
        (["--out", "{dir}/o", "--events", "{dir}/o"], "--events {dir}/o: the same file as --out"),
        (
            ["--report", "{dir}/no/such/dir/r.html"],
            "--report {dir}/no/such/dir/r.html: No such file",
        ),
        (["--events", "{dir}"], "--events {dir}: Is a directory"),
    ],
    ids=["report-is-workflow", "events-is-report", "events-is-out", "no-folder", "a-folder"],
)
def test_unusable_events_or_report_paths_are_usage_errors_and_run_nothing(
    options: list[str], message: str, tmp_path: Path
) -> None:
    workflow = write(tmp_path, "wf.toml", "[agents.a]\n" + step("t", "a", "p"))
    before = workflow.read_bytes()
    names = {"workflow": str(workflow), "dir": str(tmp_path)}
    result = run_cli("run", str(workflow), *(option.format(**names) for option in options))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {message.format(**names)}"), result.stderr
    assert workflow.read_bytes() == before


def test_events_that_cannot_be_written_are_an_error_line_and_exit_1() -> None:
    result = run_cli("run", "examples/fanout.toml", "--events", "/dev/full")
    assert result.returncode == 1
    assert all(o.success for o in outcomes_of(result.stdout))  # the run itself went on
    assert "error: --events /dev/full: cannot write: No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
