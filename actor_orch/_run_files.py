"""The files `actor-orch run` writes besides its outcomes: `--events` and `--report`.

[`RunFiles`][] opens both before the run (so a path that cannot be written is a usage error
and nothing runs), subscribes to the orchestrator (every event goes to the
[`EventLog`][actor_orch.event_log.EventLog]; step starts and ends to a
[`StepTimeline`][actor_orch.report.StepTimeline] for the report), and at the end writes the
HTML report and closes both. Problems met while writing are collected in `problems`; the
command reports them and exits 1.

[`holding_signals`][] keeps SIGINT and SIGTERM from cutting the last writes short: a signal
that arrives inside it takes effect when it ends, so the report and the event log are complete
whatever the user presses.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from actor_orch.event_log import EventLog
from actor_orch.orchestrator import AgentOrchestrator
from actor_orch.report import StepTimeline, StepTiming, render_report
from actor_orch.spec import StepOutcome
from actor_orch.workflow import Workflow

__all__ = ["RunFiles", "RunFilesError", "holding_signals"]


class RunFilesError(Exception):
    """`--events` or `--report` cannot be used (unwritable, or the same file as another)."""


class RunFiles:
    """The event log and the report of one run; use [`open`][] and a `with` block."""

    def __init__(self, events: tuple[str, IO[bytes]] | None, report: tuple[str, IO[bytes]] | None):
        self.events = None if events is None else EventLog(events[1])
        self._events_path = None if events is None else events[0]
        self._report = report
        self.timeline: StepTimeline | None = None
        self._started_at: datetime | None = None
        self._timings: dict[str, StepTiming] = {}
        self._elapsed: float | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self.problems: list[str] = []
        """What could not be written, one line each (`--report PATH: ...`)."""

    @classmethod
    def open(
        cls, *, events: str | None, report: str | None, others: Mapping[str, str | None]
    ) -> RunFiles:
        """Open the `--events` and `--report` files (either may be `None`) for writing.

        `others` names the other files of the command (`{"--out": path, "WORKFLOW": path}`);
        none of them may be the same file as `events` or `report`.

        Raises:
            RunFilesError: a path that is another file of the run, or cannot be opened.
        """
        named = {"--events": events, "--report": report}
        seen = {Path(path).resolve(): name for name, path in others.items() if path is not None}
        for option, path in named.items():
            if path is None:
                continue
            resolved = Path(path).resolve()
            if resolved in seen:
                raise RunFilesError(f"{option} {path}: the same file as {seen[resolved]}")
            seen[resolved] = option
        opened: dict[str, tuple[str, IO[bytes]]] = {}
        try:
            for option, path in named.items():
                if path is not None:
                    try:
                        opened[option] = (path, open(path, "wb"))  # noqa: SIM115 (closed by close())
                    except OSError as err:
                        raise RunFilesError(f"{option} {path}: {err.strerror or err}") from None
        except RunFilesError:
            for _, file in opened.values():
                file.close()
            raise
        return cls(opened.get("--events"), opened.get("--report"))

    def attach(self, orchestrator: AgentOrchestrator) -> None:
        """Subscribe to `orchestrator`'s events; call before the run starts.

        The orchestrator's subscribers receive every event of the run once, the steps' events
        included (the `LocalExecutor` publishes them there as well as to the `events=` of the
        call), so nothing else needs to be subscribed.
        """
        self._started_at = datetime.now().astimezone()
        if self.events is not None:
            self._unsubscribe.append(orchestrator.subscribe(self.events))
        if self._report is not None:
            self.timeline = StepTimeline()
            self._unsubscribe.append(orchestrator.subscribe(self.timeline))

    def run_ended(self) -> None:
        """The outcomes are final: keep the step timings as they are now (a step abandoned by
        a signal may still end later; the report shows it as the run left it)."""
        if self.timeline is not None:
            self._timings = self.timeline.timings()
            self._elapsed = self.timeline.elapsed()

    def write_report(
        self,
        workflow: Workflow,
        outcomes: Iterable[StepOutcome],
        *,
        title: str,
        summary: str,
        max_parallel: int,
    ) -> None:
        """Write the HTML report (when `--report` was given); a write error goes to `problems`."""
        if self._report is None:
            return
        path, file = self._report
        page = render_report(
            workflow.steps,
            workflow.needs,
            outcomes,
            self._timings,
            title=title,
            summary=summary,
            elapsed_s=self._elapsed,
            max_parallel=max_parallel,
            started_at=self._started_at,
        )
        try:
            file.write(page.encode("utf-8", errors="replace"))
            file.flush()
        except OSError as err:
            self.problems.append(f"--report {path}: cannot write: {err.strerror or err}")

    def close(self) -> None:
        """Unsubscribe and close both files (idempotent); problems go to `problems`."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self.events is not None:
            self.events.close()
            if self.events.problem is not None:
                problem = f"--events {self._events_path}: cannot write: {self.events.problem}"
                if problem not in self.problems:
                    self.problems.append(problem)
        if self._report is not None:
            path, file = self._report
            try:
                file.close()
            except OSError as err:
                self.problems.append(f"--report {path}: cannot write: {err.strerror or err}")
            self._report = None

    def __enter__(self) -> RunFiles:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def holding_signals() -> Iterator[None]:
    """SIGINT and SIGTERM received inside the block take effect when it ends (re-raised to
    the handlers of before, once each), so what the block writes is complete. A no-op off the
    main thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for held, handler in previous.items():
            signal.signal(held, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)
