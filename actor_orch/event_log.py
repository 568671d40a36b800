"""A JSON-lines log of events, written as they happen (`actor-orch run --events PATH`).

[`EventLog`][] is an event callback: subscribe it (`orchestrator.subscribe(log)`) and every
event becomes one line of JSON in its file, written and flushed before the emitting thread
goes on, so a reader (`tail -f`) sees the run as it happens and nothing is lost when the
process stops abruptly. Each line is the event's own JSON (tagged on `"event"`, see
`actor_orch.events`) with a `ts` field in front: the wall-clock time of the emit, in seconds
since the Unix epoch.

Example:
    >>> import io
    >>> from actor_orch.events import StepStarted
    >>> file = io.BytesIO()
    >>> log = EventLog(file, clock=lambda: 1700000000.25)
    >>> log(StepStarted("t1", "writer"))
    >>> file.getvalue()
    b'{"ts":1700000000.25,"event":"step_started","task_id":"t1","agent":"writer"}\\n'
    >>> log.close()
    >>> log.lines
    1
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import IO

import msgspec
from loguru import logger

from actor_orch.events import Event

__all__ = ["EventLog"]


class EventLog:
    """Writes each event it is called with to `file` (binary) as one flushed JSON line.

    Events come from many threads (workers, agents, the supervisor): a lock makes each line
    whole and keeps the lines in the order of their `ts`. The log never raises into the
    thread that emits: a write error is kept in `problem` (and logged) and the log stops
    writing. After [`close`][] (which closes `file`), later events are ignored, so a step
    still running when the run gives up cannot write into a closed file.

    `clock` gives the `ts` of a line (default `time.time`, seconds since the epoch).
    """

    def __init__(self, file: IO[bytes], *, clock: Callable[[], float] = time.time) -> None:
        self._file = file
        self._clock = clock
        self._lock = threading.Lock()
        self._open = True
        self.lines = 0
        """Lines written so far."""
        self.problem: str | None = None
        """Why writing stopped (an `OSError`'s text), `None` while all is well."""

    def __call__(self, event: Event) -> None:
        """Write `event` as one line, flushed; a no-op once closed or after a write error."""
        # Encoded outside the lock: only the write needs to be serialised.
        body = msgspec.json.encode(event)
        with self._lock:
            if not self._open:
                return
            stamp = msgspec.json.encode(self._clock())
            try:
                self._file.write(b'{"ts":' + stamp + b"," + body[1:] + b"\n")
                self._file.flush()
            except (OSError, ValueError) as err:  # ValueError: the file was closed under us
                self._fail(err)
                return
            self.lines += 1

    def close(self) -> None:
        """Stop writing and close the file (idempotent); a close error lands in `problem`."""
        with self._lock:
            if not self._open:
                return
            self._open = False
            try:
                self._file.close()
            except OSError as err:
                if self.problem is None:
                    self.problem = err.strerror or str(err)

    def _fail(self, err: OSError | ValueError) -> None:
        self._open = False
        self.problem = (err.strerror if isinstance(err, OSError) else None) or str(err)
        logger.warning("event log {}: cannot write: {}", _name_of(self._file), self.problem)
        with contextlib.suppress(OSError):  # already failing: the first error is the one to report
            self._file.close()

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<EventLog {_name_of(self._file)} {state} lines={self.lines}>"


def _name_of(file: IO[bytes]) -> str:
    return str(getattr(file, "name", "(stream)"))
