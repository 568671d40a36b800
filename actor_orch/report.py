"""The HTML report of a workflow run (`actor-orch run --report PATH`).

[`render_report`][] turns what a run produced (the steps and their `needs`, the outcomes,
and when each step started and ended, recorded from events by a [`StepTimeline`][]) into one
self-contained HTML page: inline CSS and SVG only, no script, no font or image to fetch
(a Content-Security-Policy forbids the page any request), so it opens offline and can be
mailed or attached to a CI run. The page shows:

- a summary (counts, wall time, tokens in and out);
- a timeline: one bar per step from its start to its end, on lanes (at most as many as
  steps ran at once), coloured by outcome, with the step's details as its hover title;
- the dependency graph: steps in columns by their longest chain of needs, arrows from a
  step to the steps that need it;
- tokens per agent (input and output, summed over the steps that ran);
- every step in a table (folded), outcome text included.

Every text of the run (task ids, agents, outputs) is escaped.

Example:
    >>> from actor_orch import AgentStepSpec, StepOutcome, Usage
    >>> steps = [AgentStepSpec("a", "writer", "", "p"), AgentStepSpec("b", "critic", "", "q")]
    >>> outcomes = [
    ...     StepOutcome("a", "task-run-a", "writer", "<b>draft</b>", True, usage=Usage(12, 30)),
    ...     StepOutcome.failed("b", "critic", "boom"),
    ... ]
    >>> timings = {"a": StepTiming(0.0, 1.5), "b": StepTiming(1.5, 2.0)}
    >>> page = render_report(steps, {"b": ["a"]}, outcomes, timings, title="demo")
    >>> page.startswith("<!DOCTYPE html>"), "&lt;b&gt;draft&lt;/b&gt;" in page, "<b>" in page
    (True, True, False)
"""

from __future__ import annotations

import html
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from actor_orch.events import StepFinished, StepStarted
from actor_orch.spec import AgentStepSpec, StepOutcome

__all__ = ["StepTimeline", "StepTiming", "outcome_kind", "render_report"]

SUCCEEDED, FAILED, CANCELLED, NOT_RUN = "succeeded", "failed", "cancelled", "not run"
# Fill and outline per outcome: soft fills that dark text reads well on, calm outlines.
_COLOURS = {
    SUCCEEDED: ("#a9dcb8", "#3d8b5a"),
    FAILED: ("#f4b7b0", "#b8433a"),
    CANCELLED: ("#f6dba4", "#b7862a"),
    NOT_RUN: ("#e6e9ed", "#9aa5b1"),
}
_LEGEND = {
    SUCCEEDED: "succeeded",
    FAILED: "failed",
    CANCELLED: "cancelled or interrupted",
    NOT_RUN: "not run (a need failed)",
}
# Outputs shown in hover titles and in the step table are cut to this many characters.
_TITLE_CHARS = 400
_TABLE_CHARS = 600
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Timeline geometry (px).
_TL_WIDTH = 1080  # fits the page's content width, so no scrolling
_TL_GUTTER = 72  # lane labels
_TL_RIGHT = 24
_TL_AXIS = 28
_TL_ROW = 34
_TL_BAR = 24
_TL_MIN_BAR = 3  # a step of a few microseconds still shows
_TL_CHAR_W = 6.8  # about the width of a character of a 12 px label
# Graph geometry (px).
_NODE_W = 168
_NODE_H = 44
_COL_PITCH = _NODE_W + 52  # five columns fit the page's width
_ROW_PITCH = _NODE_H + 16
_GRAPH_PAD = 16
_NODE_CHARS = 21  # task ids longer than this are cut (the full id is in the hover title)


@dataclass(frozen=True, slots=True)
class StepTiming:
    """When a step ran, in seconds from the start of the run.

    `finished` is `None` for a step still running when the run stopped (its bar then ends
    where the run ended).
    """

    started: float
    finished: float | None = None


class StepTimeline:
    """An event callback that records when each step of a run started and finished.

    Subscribe it before the run (`orchestrator.subscribe(timeline)`, or pass it as `events=`,
    not both); times are seconds since it was made, read from `clock` (default
    `time.monotonic`) on the thread that emits the event. Only the run's own steps are
    recorded: steps delegated by an agent (`parent_session_id` set) are left out. Safe to
    call from any thread.

    Example:
        >>> ticks = iter([10.0, 10.5, 12.0])
        >>> timeline = StepTimeline(clock=lambda: next(ticks))
        >>> timeline(StepStarted("t1", "writer"))
        >>> timeline(StepFinished("t1", "writer", True, 1.5))
        >>> timeline.timings()
        {'t1': StepTiming(started=0.5, finished=2.0)}
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._origin = clock()
        self._lock = threading.Lock()
        self._timings: dict[str, StepTiming] = {}

    def __call__(self, event: object) -> None:
        """Record `event` if it is a `StepStarted` or `StepFinished` of a run's own step."""
        if not isinstance(event, StepStarted | StepFinished) or event.parent_session_id:
            return
        now = self._clock() - self._origin
        with self._lock:
            if isinstance(event, StepStarted):
                self._timings[event.task_id] = StepTiming(now)
                return
            began = self._timings.get(event.task_id)
            start = began.started if began else max(0.0, now - event.duration_s)
            self._timings[event.task_id] = StepTiming(start, now)

    def elapsed(self) -> float:
        """Seconds since the timeline was made."""
        return self._clock() - self._origin

    def timings(self) -> dict[str, StepTiming]:
        """A copy of the timings recorded so far, by task id."""
        with self._lock:
            return dict(self._timings)


def outcome_kind(outcome: StepOutcome | None) -> str:
    """`"succeeded"`, `"failed"`, `"cancelled"` (cancelled, interrupted) or `"not run"`
    (no outcome, or a step not run because a need failed or its prompt could not be rendered).

    Example:
        >>> outcome_kind(StepOutcome.failed("t", "a", "not run: needed step 'x' failed"))
        'not run'
    """
    if outcome is None:
        return NOT_RUN
    if outcome.success:
        return SUCCEEDED
    if outcome.output.startswith(("cancelled", "interrupted")):
        return CANCELLED
    if outcome.output.startswith("not run"):
        return NOT_RUN
    return FAILED


@dataclass(frozen=True, slots=True)
class _Step:
    """One step with all the report says about it."""

    index: int
    spec: AgentStepSpec
    outcome: StepOutcome | None
    kind: str
    timing: StepTiming | None
    input_tokens: int  # 0 for a step that did not run in this run
    output_tokens: int

    @property
    def ran(self) -> bool:
        return self.timing is not None


def render_report(
    steps: Sequence[AgentStepSpec],
    needs: Mapping[str, Iterable[str]],
    outcomes: Iterable[StepOutcome],
    timings: Mapping[str, StepTiming],
    *,
    title: str = "Workflow run",
    summary: str = "",
    elapsed_s: float | None = None,
    max_parallel: int | None = None,
    started_at: datetime | None = None,
) -> str:
    """The HTML page (a `str`) reporting one run of `steps`.

    `needs` maps a task id to the task ids it needs (as for `execute_graph`; unknown ids are
    ignored). `outcomes` are matched to steps by task id; a step without one is shown as not
    run. `timings` (by task id, from a [`StepTimeline`][]) place steps on the timeline; a
    step without a timing did not run in this run (not reached, cancelled before it started,
    or restored from a checkpoint), and its tokens are not counted. `summary` is shown as
    given (the CLI passes its summary line); `elapsed_s` is the run's wall time (default:
    the last step's end); `max_parallel` the limit the run had, shown beside the lanes;
    `started_at` the wall-clock start, shown in the header.
    """
    by_id = {outcome.task_id: outcome for outcome in outcomes}
    rows = []
    for index, spec in enumerate(steps):
        outcome = by_id.get(spec.task_id)
        timing = timings.get(spec.task_id)
        usage = outcome.usage if outcome is not None and timing is not None else None
        rows.append(
            _Step(
                index,
                spec,
                outcome,
                outcome_kind(outcome),
                timing,
                usage.input_tokens if usage else 0,
                usage.output_tokens if usage else 0,
            )
        )
    ends = [r.timing.finished or r.timing.started for r in rows if r.timing is not None]
    span = max([elapsed_s or 0.0, *ends])
    sections = [
        _header(title, summary, started_at),
        _stats(rows, span),
        _section("Timeline", _legend() + _timeline(rows, span, max_parallel)),
        _section("Dependency graph", _legend() + _graph(rows, needs)),
        _section("Tokens per agent", _tokens(rows)),
        _section("Steps", _step_table(rows)),
    ]
    return _PAGE.format(title=_text(title), css=_CSS, body="\n".join(sections))


# --- text -----------------------------------------------------------------------------------


def _text(value: object) -> str:
    """`value` as HTML text: escaped (quotes too, so it is safe in attributes), without the
    control characters HTML does not allow."""
    return html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _fit(text: str, chars: float) -> str:
    """`text` cut to fit `chars` characters, or "" when fewer than four would show."""
    if len(text) <= chars:
        return text
    return _cut(text, int(chars)) if chars >= 4 else ""


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "0 s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} \u00b5s"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes:.0f} min {rest:.0f} s"


def _count(number: int) -> str:
    return f"{number:,}".replace(",", "\u202f")  # a thin space groups thousands


def _step_title(row: _Step) -> str:
    """The hover text of a step: id, agent, outcome, timing, tokens, output or error."""
    lines = [f"{row.spec.task_id}  ({row.spec.agent})", f"outcome: {row.kind}"]
    if row.timing is not None:
        if row.timing.finished is None:
            lines.append(f"started at {_duration(row.timing.started)}; still running at the end")
        else:
            took = row.timing.finished - row.timing.started
            lines.append(f"started at {_duration(row.timing.started)}, took {_duration(took)}")
        lines.append(f"tokens: {_count(row.input_tokens)} in / {_count(row.output_tokens)} out")
    elif row.kind == SUCCEEDED:
        lines.append("not run this time (restored from a checkpoint)")
    if row.outcome is not None and row.outcome.output:
        label = "output" if row.outcome.success else "error"
        lines.append(f"{label}: {_cut(row.outcome.output, _TITLE_CHARS)}")
    return _text("\n".join(lines))


# --- sections -------------------------------------------------------------------------------


def _section(heading: str, body: str) -> str:
    return f"<section><h2>{_text(heading)}</h2>\n{body}\n</section>"


def _header(title: str, summary: str, started_at: datetime | None) -> str:
    meta = "Report of an actor-orch run"
    if started_at is not None:
        meta += f", started {started_at.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}"
    parts = [f"<header><h1>{_text(title)}</h1>", f'<p class="meta">{_text(meta)}</p>']
    if summary:
        parts.append(f'<p class="summary">{_text(summary)}</p>')
    parts.append("</header>")
    return "\n".join(parts)


def _stats(rows: list[_Step], span: float) -> str:
    kinds = [row.kind for row in rows]
    cards = [
        ("steps", _count(len(rows))),
        ("succeeded", _count(kinds.count(SUCCEEDED))),
        ("failed", _count(kinds.count(FAILED))),
        ("cancelled", _count(kinds.count(CANCELLED))),
        ("not run", _count(kinds.count(NOT_RUN))),
        ("wall time", _duration(span)),
        ("tokens in", _count(sum(row.input_tokens for row in rows))),
        ("tokens out", _count(sum(row.output_tokens for row in rows))),
    ]
    items = "".join(
        f'<div class="stat"><div class="value">{_text(value)}</div>'
        f'<div class="label">{_text(label)}</div></div>'
        for label, value in cards
    )
    return f'<div class="stats">{items}</div>'


def _legend() -> str:
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{fill};border-color:{line}">'
        f"</span>{_text(_LEGEND[kind])}</span>"
        for kind, (fill, line) in _COLOURS.items()
    )
    return f'<div class="legend">{items}</div>'


# --- the timeline ---------------------------------------------------------------------------


def _assign_lanes(bars: list[tuple[float, float]]) -> list[int]:
    """A lane per bar (bars sorted by start): the first lane free by the bar's start, so no two
    bars of a lane overlap and the lanes are as many as bars at once at most."""
    free_at: list[float] = []
    lanes = []
    for start, end in bars:
        for lane, end_of_lane in enumerate(free_at):
            if end_of_lane <= start:
                free_at[lane] = end
                lanes.append(lane)
                break
        else:
            free_at.append(end)
            lanes.append(len(free_at) - 1)
    return lanes


def _tick_step(span: float, wanted: int = 8) -> float:
    raw = span / wanted
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def _tick_label(seconds: float, span: float) -> str:
    if span < 1:
        return f"{round(seconds * 1e3, 6):g} ms"
    return f"{round(seconds, 6):g} s"


def _timeline(rows: list[_Step], span: float, max_parallel: int | None) -> str:
    placed = sorted(
        (row for row in rows if row.timing is not None),
        key=lambda row: (row.timing.started if row.timing else 0.0, row.index),
    )
    span = span if span > 0 else 1e-3
    bars = []
    for row in placed:
        assert row.timing is not None
        bars.append((row.timing.started, row.timing.finished or span))
    lanes = _assign_lanes(bars)
    lane_count = max(lanes, default=-1) + 1
    note = (
        f"{len(placed)} of {len(rows)} steps ran, on {lane_count} "
        f"lane{'s' if lane_count != 1 else ''} (steps running at the same time"
        + (f"; the limit was {max_parallel}" if max_parallel else "")
        + "). Hover a bar for its details."
    )
    parts = [f'<p class="note">{_text(note)}</p>']
    if placed:
        parts.append(_timeline_svg(placed, bars, lanes, lane_count, span))
    absent = [row for row in rows if row.timing is None]
    if absent:
        shown = ", ".join(
            f'<span title="{_step_title(row)}">{_text(row.spec.task_id)} '
            f"({_text(_why_absent(row))})</span>"
            for row in absent[:30]
        )
        more = f", and {len(absent) - 30} more" if len(absent) > 30 else ""
        parts.append(f'<p class="note">Not on the timeline (never started): {shown}{more}.</p>')
    return "\n".join(parts)


def _why_absent(row: _Step) -> str:
    if row.kind == SUCCEEDED:
        return "restored from a checkpoint"
    if row.outcome is None:
        return "no outcome"
    return _cut(row.outcome.output, 60)


def _timeline_svg(
    placed: list[_Step],
    bars: list[tuple[float, float]],
    lanes: list[int],
    lane_count: int,
    span: float,
) -> str:
    plot = _TL_WIDTH - _TL_GUTTER - _TL_RIGHT
    height = _TL_AXIS + lane_count * _TL_ROW + 8

    def x(seconds: float) -> float:
        return _TL_GUTTER + plot * min(max(seconds / span, 0.0), 1.0)

    out = [
        f'<div class="scroll"><svg class="timeline" width="{_TL_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_TL_WIDTH} {height}" role="img" aria-label="timeline of the steps">'
    ]
    for lane in range(lane_count):
        top = _TL_AXIS + lane * _TL_ROW
        if lane % 2 == 0:
            out.append(
                f'<rect x="{_TL_GUTTER}" y="{top}" width="{plot}" height="{_TL_ROW}" '
                'fill="#f5f7f9"/>'
            )
        out.append(
            f'<text class="lane" x="{_TL_GUTTER - 10}" y="{top + _TL_ROW / 2 + 4}" '
            f'text-anchor="end">lane {lane + 1}</text>'
        )
    step = _tick_step(span)
    for number in range(math.floor(span / step * 1.0001) + 1):
        tick = number * step
        left = x(tick)
        out.append(
            f'<line x1="{left:.1f}" y1="{_TL_AXIS - 4}" x2="{left:.1f}" y2="{height - 8}" '
            'stroke="#dde2e7" stroke-width="1"/>'
            f'<text class="tick" x="{left:.1f}" y="{_TL_AXIS - 10}" text-anchor="middle">'
            f"{_text(_tick_label(tick, span))}</text>"
        )
    for row, (start, end), lane in zip(placed, bars, lanes, strict=True):
        fill, line = _COLOURS[row.kind]
        left = x(start)
        width = max(x(end) - left, _TL_MIN_BAR)
        bar_top = _TL_AXIS + lane * _TL_ROW + (_TL_ROW - _TL_BAR) / 2
        dash = ' stroke-dasharray="4 3"' if row.timing and row.timing.finished is None else ""
        out.append(
            f"<g><title>{_step_title(row)}</title>"
            f'<rect x="{left:.1f}" y="{bar_top:.1f}" width="{width:.1f}" height="{_TL_BAR}" rx="4" '
            f'fill="{fill}" stroke="{line}" stroke-width="1.2"{dash}/>'
        )
        label = _fit(row.spec.task_id, (width - 12) / _TL_CHAR_W)
        if label:
            out.append(
                f'<text class="bar" x="{left + 6:.1f}" y="{bar_top + _TL_BAR / 2 + 4:.1f}">'
                f"{_text(label)}</text>"
            )
        out.append("</g>")
    out.append("</svg></div>")
    return "".join(out)


# --- the dependency graph -------------------------------------------------------------------


def _layers(
    rows: list[_Step], needs: Mapping[str, Iterable[str]]
) -> tuple[list[int], list[list[int]]]:
    """Each step's layer (its longest chain of needs from a step that needs nothing) and the
    needs by index. Unknown needs are ignored; steps caught in a cycle go to layer 0."""
    index_of = {row.spec.task_id: row.index for row in rows}
    needed = [
        [index_of[n] for n in dict.fromkeys(needs.get(row.spec.task_id, ())) if n in index_of]
        for row in rows
    ]
    dependents: list[list[int]] = [[] for _ in rows]
    for index, wanted in enumerate(needed):
        for need in wanted:
            dependents[need].append(index)
    waiting = [len(wanted) for wanted in needed]
    layer = [0] * len(rows)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    while ready:
        current = ready.pop()
        for dependent in dependents[current]:
            layer[dependent] = max(layer[dependent], layer[current] + 1)
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    return layer, needed


def _graph(rows: list[_Step], needs: Mapping[str, Iterable[str]]) -> str:
    if not rows:
        return '<p class="note">No steps.</p>'
    layer, needed = _layers(rows, needs)
    columns: list[list[int]] = [[] for _ in range(max(layer) + 1)]
    for index in range(len(rows)):
        columns[layer[index]].append(index)
    # Order each column by where its needs sit (barycentre), which keeps arrows short and
    # mostly uncrossed; steps without needs keep the workflow's order.
    position: dict[int, float] = {}
    for column in columns:
        column.sort(
            key=lambda i: (
                sum(position[n] for n in needed[i]) / len(needed[i]) if needed[i] else -1.0,
                i,
            )
        )
        for row_number, index in enumerate(column):
            position[index] = row_number
    tallest = max(len(column) for column in columns)
    width = _GRAPH_PAD * 2 + (len(columns) - 1) * _COL_PITCH + _NODE_W
    height = _GRAPH_PAD * 2 + (tallest - 1) * _ROW_PITCH + _NODE_H
    place: dict[int, tuple[float, float]] = {}
    for number, column in enumerate(columns):
        offset = (tallest - len(column)) * _ROW_PITCH / 2  # centre short columns
        for row_number, index in enumerate(column):
            place[index] = (
                _GRAPH_PAD + number * _COL_PITCH,
                _GRAPH_PAD + offset + row_number * _ROW_PITCH,
            )
    out = [
        f'<div class="scroll"><svg class="graph" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="dependency graph of the steps">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#8a96a3"/></marker></defs>'
    ]
    for index, wanted in enumerate(needed):
        x2, y2 = place[index]
        for need in wanted:
            x1, y1 = place[need]
            start_x, start_y = x1 + _NODE_W, y1 + _NODE_H / 2
            end_x, end_y = x2 - 2, y2 + _NODE_H / 2
            bend = max((end_x - start_x) / 2, 24)
            out.append(
                f'<path d="M{start_x:.1f},{start_y:.1f} C{start_x + bend:.1f},{start_y:.1f} '
                f'{end_x - bend:.1f},{end_y:.1f} {end_x:.1f},{end_y:.1f}" fill="none" '
                'stroke="#a3aeb9" stroke-width="1.4" marker-end="url(#arrow)"/>'
            )
    for row in rows:
        left, top = place[row.index]
        fill, line = _COLOURS[row.kind]
        dash = ' stroke-dasharray="4 3"' if row.kind == NOT_RUN else ""
        detail = row.spec.agent
        if row.timing is not None and row.timing.finished is not None:
            detail += f" \u00b7 {_duration(row.timing.finished - row.timing.started)}"
        out.append(
            f"<g><title>{_step_title(row)}</title>"
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{_NODE_W}" height="{_NODE_H}" rx="7" '
            f'fill="{fill}" stroke="{line}" stroke-width="1.3"{dash}/>'
            f'<text class="node" x="{left + 10:.1f}" y="{top + 18:.1f}">'
            f"{_text(_cut(row.spec.task_id, _NODE_CHARS))}</text>"
            f'<text class="node-detail" x="{left + 10:.1f}" y="{top + 34:.1f}">'
            f"{_text(_cut(detail, _NODE_CHARS + 4))}</text></g>"
        )
    out.append("</svg></div>")
    return "".join(out)


# --- tokens and steps -----------------------------------------------------------------------


def _tokens(rows: list[_Step]) -> str:
    agents: dict[str, list[_Step]] = {}
    for row in rows:
        agents.setdefault(row.spec.agent, []).append(row)
    totals = {
        name: (sum(r.input_tokens for r in own), sum(r.output_tokens for r in own))
        for name, own in agents.items()
    }
    largest = max((i + o for i, o in totals.values()), default=0) or 1
    body = []
    for name, own in agents.items():
        tokens_in, tokens_out = totals[name]
        kinds = [r.kind for r in own]
        body.append(
            f"<tr><td>{_text(name)}</td><td class='num'>{len(own)}</td>"
            f"<td class='num'>{kinds.count(SUCCEEDED)}</td>"
            f"<td class='num'>{len(own) - kinds.count(SUCCEEDED)}</td>"
            f"<td class='num'>{_count(tokens_in)}</td><td class='num'>{_count(tokens_out)}</td>"
            f"<td class='num'>{_count(tokens_in + tokens_out)}</td>"
            f"<td class='barcell'>{_token_bar(tokens_in, tokens_out, largest)}</td></tr>"
        )
    all_in = sum(i for i, _ in totals.values())
    all_out = sum(o for _, o in totals.values())
    succeeded = sum(row.kind == SUCCEEDED for row in rows)
    body.append(
        f"<tr class='total'><td>total</td><td class='num'>{len(rows)}</td>"
        f"<td class='num'>{succeeded}</td><td class='num'>{len(rows) - succeeded}</td>"
        f"<td class='num'>{_count(all_in)}</td><td class='num'>{_count(all_out)}</td>"
        f"<td class='num'>{_count(all_in + all_out)}</td><td></td></tr>"
    )
    legend = (
        '<div class="legend"><span class="key"><span class="swatch in"></span>input tokens'
        '</span><span class="key"><span class="swatch out"></span>output tokens</span></div>'
    )
    return (
        legend + "<table class='tokens'><thead><tr><th>agent</th><th class='num'>steps</th>"
        "<th class='num'>succeeded</th><th class='num'>not succeeded</th>"
        "<th class='num'>input</th><th class='num'>output</th><th class='num'>total</th>"
        "<th></th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
        '<p class="note">Tokens of the steps that ran in this run, summed from their outcomes '
        "(restarts and repair prompts included).</p>"
    )


def _token_bar(tokens_in: int, tokens_out: int, largest: int) -> str:
    share_in = 100 * tokens_in / largest
    share_out = 100 * tokens_out / largest
    return (
        f'<div class="tokbar" title="{_count(tokens_in)} in / {_count(tokens_out)} out">'
        f'<span class="in" style="width:{share_in:.2f}%"></span>'
        f'<span class="out" style="width:{share_out:.2f}%"></span></div>'
    )


def _step_table(rows: list[_Step]) -> str:
    body = []
    for row in rows:
        fill, line = _COLOURS[row.kind]
        timing = row.timing
        start = _duration(timing.started) if timing else ""
        took = ""
        if timing is not None:
            took = (
                "still running"
                if timing.finished is None
                else _duration(timing.finished - timing.started)
            )
        output = "" if row.outcome is None else _cut(row.outcome.output, _TABLE_CHARS)
        tokens = f"{_count(row.input_tokens)} / {_count(row.output_tokens)}" if row.ran else ""
        body.append(
            f"<tr><td class='num'>{row.index + 1}</td><td class='id'>{_text(row.spec.task_id)}</td>"
            f"<td>{_text(row.spec.agent)}</td>"
            f"<td><span class='badge' style='background:{fill};border-color:{line}'>"
            f"{_text(row.kind)}</span></td><td class='num'>{_text(start)}</td>"
            f"<td class='num'>{_text(took)}</td><td class='num'>{_text(tokens)}</td>"
            f"<td class='output'>{_text(output)}</td></tr>"
        )
    return (
        f"<details><summary>All {len(rows)} steps, with their output or error</summary>"
        "<table class='steps'><thead><tr><th class='num'>#</th><th>task id</th><th>agent</th>"
        "<th>outcome</th><th class='num'>started at</th><th class='num'>took</th>"
        "<th class='num'>tokens in / out</th><th>output or error</th></tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></details>"
    )


# --- the page -------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f6f8; color: #1f2933;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  "Noto Sans", "Liberation Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 20px 48px; }
header h1 { font-size: 22px; font-weight: 600; margin: 0 0 2px; word-break: break-all; }
.meta { color: #616e7c; margin: 0 0 10px; }
.summary { font: 13px/1.5 ui-monospace, "SFMono-Regular", Menlo, Consolas,
  "DejaVu Sans Mono", monospace; background: #fff; border: 1px solid #e1e5ea;
  border-radius: 6px; padding: 8px 12px; margin: 0 0 16px; white-space: pre-wrap; }
section { background: #fff; border: 1px solid #e1e5ea; border-radius: 8px;
  padding: 16px 20px 18px; margin: 0 0 16px; }
h2 { font-size: 16px; font-weight: 600; margin: 0 0 8px; }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin: 0 0 16px; }
.stat { background: #fff; border: 1px solid #e1e5ea; border-radius: 8px; padding: 8px 14px;
  min-width: 112px; }
.stat .value { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.stat .label { color: #616e7c; font-size: 12px; }
.legend { display: flex; flex-wrap: wrap; gap: 18px; margin: 0 0 10px; color: #3e4c59;
  font-size: 13px; }
.key { display: inline-flex; align-items: center; gap: 6px; }
.swatch { width: 14px; height: 14px; border-radius: 3px; border: 1.2px solid;
  display: inline-block; }
.swatch.in { background: #7b93b5; border-color: #5a7396; }
.swatch.out { background: #8fc1b5; border-color: #5e9d8e; }
.note { color: #616e7c; font-size: 13px; margin: 6px 0; }
.scroll { overflow-x: auto; }
svg text { font-family: inherit; fill: #1f2933; }
svg text.lane, svg text.tick { font-size: 12px; fill: #616e7c; }
svg text.bar { font-size: 12px; }
svg text.node { font-size: 13px; font-weight: 600; }
svg text.node-detail { font-size: 11.5px; fill: #52606d; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eef1f4;
  vertical-align: top; }
th { color: #52606d; font-weight: 600; font-size: 12.5px; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: 600; border-top: 1px solid #cbd2d9; }
.barcell { width: 32%; }
.tokbar { display: flex; height: 12px; background: #f0f2f5; border-radius: 3px; overflow: hidden;
  margin-top: 4px; }
.tokbar .in { background: #7b93b5; }
.tokbar .out { background: #8fc1b5; }
.badge { border: 1px solid; border-radius: 10px; padding: 0 8px; font-size: 12px;
  white-space: nowrap; }
.id { font-weight: 600; overflow-wrap: anywhere; min-width: 9em; }
.output { white-space: pre-wrap; word-break: break-word; font-size: 12.5px; color: #3e4c59; }
details summary { cursor: pointer; color: #3e4c59; margin: 0 0 8px; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<main>
{body}
</main>
</body>
</html>
"""
