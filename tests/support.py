"""Helpers shared by the test modules that drive the CLI and the examples as subprocesses."""

from __future__ import annotations

import queue
import threading
from typing import IO

import msgspec

from actor_orch import StepOutcome


def read_line(stream: IO[str], timeout: float) -> str:
    """The next line of `stream`, waiting at most `timeout` seconds ("" at end of stream)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line within {timeout}s") from None


def outcomes_of(stdout: str) -> list[StepOutcome]:
    """The JSON-lines outcomes the CLI printed."""
    return [msgspec.json.decode(line, type=StepOutcome) for line in stdout.splitlines()]
