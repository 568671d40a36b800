"""The HTML report: what it shows, that it escapes and fetches nothing, and that it renders."""

from __future__ import annotations

import itertools
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actor_orch import AgentStepSpec, StepFinished, StepOutcome, StepStarted, Usage
from actor_orch.report import (
    StepTimeline,
    StepTiming,
    _assign_lanes,
    _layers,
    _Step,
    outcome_kind,
    render_report,
)

HOSTILE = "<script>alert('x')</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT_TIMEOUT_S = 90.0


def succeeded(task_id: str, agent: str, tokens_in: int, tokens_out: int) -> StepOutcome:
    return StepOutcome(
        task_id,
        f"task-run-{task_id}",
        agent,
        f"{task_id} done",
        True,
        usage=Usage(tokens_in, tokens_out),
    )


def research_run() -> tuple[
    list[AgentStepSpec], dict[str, list[str]], list[StepOutcome], dict[str, StepTiming]
]:
    """Three facts in parallel, a draft from them, a review and a translation of the draft,
    a failed translation and a publish step that was not run because of it."""
    steps = [
        AgentStepSpec("facts-1", "researcher", "", "p"),
        AgentStepSpec("facts-2", "researcher", "", "p"),
        AgentStepSpec(f"facts-{HOSTILE}", "researcher", "", "p"),
        AgentStepSpec("draft", "writer", "", "p"),
        AgentStepSpec("review", "critic", "", "p"),
        AgentStepSpec("translate", "translator", "", "p"),
        AgentStepSpec("publish", "writer", "", "p"),
    ]
    needs = {
        "draft": ["facts-1", "facts-2", f"facts-{HOSTILE}"],
        "review": ["draft"],
        "translate": ["draft"],
        "publish": ["review", "translate"],
    }
    outcomes = [
        succeeded("facts-1", "researcher", 100, 40),
        succeeded("facts-2", "researcher", 110, 50),
        StepOutcome(
            f"facts-{HOSTILE}", "s", "researcher", f"found {HOSTILE}", True, usage=Usage(90, 30)
        ),
        succeeded("draft", "writer", 400, 300),
        succeeded("review", "critic", 350, 60),
        StepOutcome("translate", "s", "translator", "HTTP 500 <oops>", False, usage=Usage(80, 0)),
        StepOutcome.failed("publish", "writer", "not run: needed step 'translate' failed"),
    ]
    timings = {
        "facts-1": StepTiming(0.0, 1.0),
        "facts-2": StepTiming(0.0, 1.5),
        f"facts-{HOSTILE}": StepTiming(1.0, 2.0),
        "draft": StepTiming(2.0, 4.5),
        "review": StepTiming(4.5, 5.5),
        "translate": StepTiming(4.5, 6.0),
    }
    return steps, needs, outcomes, timings


def research_page(summary: str = "") -> str:
    steps, needs, outcomes, timings = research_run()
    return render_report(
        steps, needs, outcomes, timings, title="research <run>", summary=summary, max_parallel=2
    )


# --- what the page holds ------------------------------------------------------------------


def test_the_page_escapes_every_text_of_the_run() -> None:
    page = research_page(summary=f"done {HOSTILE}")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "HTTP 500 &lt;oops&gt;" in page
    assert "<title>research &lt;run&gt;</title>" in page


def test_the_page_references_nothing_outside_itself() -> None:
    page = research_page()
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"\b(src|href)\s*=", page, re.IGNORECASE)
    assert "@import" not in page
    assert "url(" not in page.replace('marker-end="url(#arrow)"', "")
    assert "default-src 'none'" in page  # the browser refuses any request the page might make


def test_the_timeline_has_one_bar_per_step_that_ran_on_as_many_lanes_as_ran_at_once() -> None:
    page = research_page()
    timeline = page[page.index('class="timeline"') : page.index("</svg>")]
    assert timeline.count("<rect") - timeline.count('fill="#f5f7f9"') == 6  # bars, not stripes
    assert "lane 2" in timeline
    assert "lane 3" not in timeline
    assert "on 2 lanes" in page
    assert "the limit was 2" in page
    # publish never started: it is listed below the timeline with the reason.
    assert "publish (not run: needed step &#x27;translate&#x27; failed)" in page


def test_hover_titles_carry_agent_outcome_duration_tokens_and_error() -> None:
    page = research_page()
    title = re.search(r"<title>translate  \(translator\)\n[^<]*</title>", page)
    assert title is not None
    text = title.group(0)
    assert "outcome: failed" in text
    assert "took 1.50 s" in text
    assert "tokens: 80 in / 0 out" in text
    assert "error: HTTP 500 &lt;oops&gt;" in text


def test_tokens_per_agent_are_summed_from_the_outcomes_of_steps_that_ran() -> None:
    page = research_page()
    table = page[page.index("class='tokens'") :]
    rows = re.findall(r"<tr(?: class='total')?><td>([^<]*)</td>((?:<td[^>]*>[^<]*</td>)+)", table)
    cells = {name: re.findall(r">([^<]*)</td>", rest)[:6] for name, rest in rows}
    assert cells["researcher"] == ["3", "3", "0", "300", "120", "420"]
    assert cells["writer"] == ["2", "1", "1", "400", "300", "700"]
    assert cells["translator"] == ["1", "0", "1", "80", "0", "80"]
    assert cells["total"] == ["7", "5", "2", "1\u202f130", "480", "1\u202f610"]


def test_a_step_restored_from_a_checkpoint_is_not_on_the_timeline_and_costs_no_tokens() -> None:
    steps = [AgentStepSpec("old", "a", "", "p"), AgentStepSpec("new", "a", "", "p")]
    outcomes = [succeeded("old", "a", 1000, 1000), succeeded("new", "a", 5, 7)]
    page = render_report(steps, {"new": ["old"]}, outcomes, {"new": StepTiming(0.0, 0.5)})
    assert "old (restored from a checkpoint)" in page
    assert re.search(r"<td>a</td>(<td[^>]*>[^<]*</td>){3}<td class='num'>5</td>", page)


def test_the_summary_and_start_time_are_shown_as_given() -> None:
    page = research_page(summary="done: 7 steps, 5 succeeded, 2 failed in 6.00s")
    assert '<p class="summary">done: 7 steps, 5 succeeded, 2 failed in 6.00s</p>' in page


def test_an_empty_run_still_renders() -> None:
    page = render_report([], {}, [], {})
    assert page.rstrip().endswith("</html>")
    assert "No steps." in page


# --- the pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (succeeded("t", "a", 0, 0), "succeeded"),
        (StepOutcome.failed("t", "a", "RequestTimeout: slow"), "failed"),
        (StepOutcome.failed("t", "a", "cancelled"), "cancelled"),
        (StepOutcome.failed("t", "a", "interrupted before the step ended"), "cancelled"),
        (StepOutcome.failed("t", "a", "not run: needed step 'x' failed"), "not run"),
        (None, "not run"),
    ],
)
def test_outcome_kind(outcome: StepOutcome | None, kind: str) -> None:
    assert outcome_kind(outcome) == kind


def test_graph_layers_are_the_longest_chain_of_needs_from_a_root() -> None:
    steps, needs, _, _ = research_run()
    rows = [_Step(i, spec, None, "not run", None, 0, 0) for i, spec in enumerate(steps)]
    layers, _ = _layers(rows, {**needs, "publish": ["review", "translate", "facts-1"]})
    assert layers == [0, 0, 0, 1, 2, 2, 3]


def test_graph_layers_survive_unknown_needs_and_cycles() -> None:
    steps = [AgentStepSpec(t, "a", "", "p") for t in ("a", "b", "c")]
    rows = [_Step(i, spec, None, "not run", None, 0, 0) for i, spec in enumerate(steps)]
    layers, needed = _layers(rows, {"a": ["b"], "b": ["a"], "c": ["nobody", "c"]})
    assert layers == [0, 0, 0]
    assert needed == [[1], [0], [2]]


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(1, 20)).map(lambda p: (p[0], p[0] + p[1])),
        max_size=40,
    )
)
def test_lanes_never_overlap_and_are_as_many_as_bars_at_once(bars: list[tuple[int, int]]) -> None:
    bars = sorted(bars)
    lanes = _assign_lanes([(float(s), float(e)) for s, e in bars])
    for lane in set(lanes):
        own = [bar for bar, used in zip(bars, lanes, strict=True) if used == lane]
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(own))
    at_once = max((sum(s <= t < e for s, e in bars) for t, _ in bars), default=0)
    assert len(set(lanes)) == max(at_once, 1 if bars else 0)


def test_the_timeline_records_the_run_own_steps_from_their_events() -> None:
    ticks = iter([100.0, 100.5, 101.25, 102.0, 103.0])
    timeline = StepTimeline(clock=lambda: next(ticks))
    timeline(StepStarted("t1", "a"))
    timeline(StepStarted("child", "b", parent_session_id="task-run-t1"))  # delegated: left out
    timeline(StepFinished("t2", "a", True, 0.25))  # a finish without its start: by its duration
    timeline(StepFinished("t1", "a", True, 1.5))
    assert timeline.timings() == {"t1": StepTiming(0.5, 2.0), "t2": StepTiming(1.0, 1.25)}
    assert timeline.elapsed() == 3.0


# --- in a real browser --------------------------------------------------------------------


def png_pixels(data: bytes, rows: int) -> tuple[int, int, set[tuple[int, ...]]]:
    """Width, height and the distinct colours of the first `rows` rows of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    colours: set[tuple[int, ...]] = set()
    for row in range(min(rows, height)):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        colours.update(tuple(line[i : i + 3]) for i in range(0, stride, channels))
        previous = line
    return width, height, colours


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install chromium)")
def test_the_report_renders_in_a_headless_browser(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    page = tmp_path / "report.html"
    page.write_text(research_page(summary="done"), encoding="utf-8")
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}", "--window-size=1200,700", page.as_uri(),
        ],
        capture_output=True, timeout=SCREENSHOT_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert screenshot.exists(), "chromium wrote no screenshot"
    width, height, colours = png_pixels(screenshot.read_bytes(), rows=700)
    assert (width, height) == (1200, 700)
    assert len(colours) > 20  # text, cards and bars, not a blank page
    # The fill of a succeeded step (timeline bars, graph nodes) is on screen: the SVG rendered.
    assert (0xA9, 0xDC, 0xB8) in colours
