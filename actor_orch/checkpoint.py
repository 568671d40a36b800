"""Checkpoints of resumable runs: what finished, kept in memory or in a SQLite file.

A store never raises for storage trouble: one that cannot read or write logs a warning and
behaves as empty, so a broken disk costs a re-run, never a crash. Checkpoints are msgspec
Structs stored as JSON.

Example:
    >>> from actor_orch.executor import StepOutcome
    >>> store = MemoryCheckpointStore()
    >>> done = StepOutcome("t1", "task-run-t1", "writer", "ok", True)
    >>> store.save("wf", WorkflowCheckpoint({"t1": CheckpointedStep("digest", done)}))
    >>> store.load("wf").steps["t1"].outcome.output
    'ok'
    >>> store.delete("wf"); store.load("wf") is None
    True
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec
from loguru import logger

from actor_orch.executor import StepOutcome

__all__ = [
    "CheckpointStore",
    "CheckpointedStep",
    "MemoryCheckpointStore",
    "SqliteCheckpointStore",
    "WorkflowCheckpoint",
]


class CheckpointedStep(msgspec.Struct):
    """A finished step: its outcome and a digest of the spec that produced it."""

    spec_digest: str
    outcome: StepOutcome


class WorkflowCheckpoint(msgspec.Struct):
    """The successful steps of one workflow run, by task id; `updated_at` in epoch seconds."""

    steps: dict[str, CheckpointedStep] = msgspec.field(default_factory=dict)
    updated_at: float = msgspec.field(default_factory=time.time)


@runtime_checkable
class CheckpointStore(Protocol):
    """Where resumable runs keep their progress. Implementations must be thread-safe."""

    def load(self, workflow_id: str) -> WorkflowCheckpoint | None:
        """The checkpoint of `workflow_id`, or None when absent or unreadable."""
        ...

    def save(self, workflow_id: str, checkpoint: WorkflowCheckpoint) -> None: ...

    def delete(self, workflow_id: str) -> None: ...


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WorkflowCheckpoint)


def _decode(workflow_id: str, data: bytes) -> WorkflowCheckpoint | None:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as err:
        logger.warning("checkpoint of {!r} is unreadable ({}); starting afresh", workflow_id, err)
        return None


class MemoryCheckpointStore:
    """Checkpoints in this process's memory (stored encoded, so callers cannot alias them).

    Example:
        >>> MemoryCheckpointStore().load("nothing") is None
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, bytes] = {}

    def load(self, workflow_id: str) -> WorkflowCheckpoint | None:
        with self._lock:
            data = self._data.get(workflow_id)
        return None if data is None else _decode(workflow_id, data)

    def save(self, workflow_id: str, checkpoint: WorkflowCheckpoint) -> None:
        data = _encoder.encode(checkpoint)
        with self._lock:
            self._data[workflow_id] = data

    def delete(self, workflow_id: str) -> None:
        with self._lock:
            self._data.pop(workflow_id, None)

    def __repr__(self) -> str:
        return f"MemoryCheckpointStore(workflows={len(self._data)})"


class SqliteCheckpointStore:
    """Checkpoints in a SQLite file (created on first use), one row per workflow.

    Each call opens its own short connection, so the store is safe from any thread and from
    several processes (SQLite locks the file; waits are bounded by `timeout` seconds).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "runs.db")
        >>> store = SqliteCheckpointStore(path)
        >>> store.save("wf", WorkflowCheckpoint())
        >>> store.load("wf").steps
        {}
    """

    def __init__(self, path: str | Path, *, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._ready = False
        self._lock = threading.Lock()
        self._ensure_table()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)

    def _ensure_table(self) -> bool:
        with self._lock:
            if self._ready:
                return True
            try:
                with closing(self._connect()) as db:
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS checkpoints ("
                        "workflow_id TEXT PRIMARY KEY, data BLOB NOT NULL, updated_at REAL)"
                    )
            except (sqlite3.Error, OSError) as err:
                logger.warning(
                    "checkpoint store {} is unusable ({}); it acts empty", self.path, err
                )
                return False
            self._ready = True
            return True

    def load(self, workflow_id: str) -> WorkflowCheckpoint | None:
        if not self._ensure_table():
            return None
        try:
            with closing(self._connect()) as db:
                row = db.execute(
                    "SELECT data FROM checkpoints WHERE workflow_id = ?", (workflow_id,)
                ).fetchone()
        except (sqlite3.Error, OSError) as err:
            logger.warning("cannot read checkpoint {!r} from {}: {}", workflow_id, self.path, err)
            return None
        if row is None:
            return None
        data = row[0]
        if not isinstance(data, bytes | str):
            logger.warning("checkpoint {!r} in {} is not JSON; ignored", workflow_id, self.path)
            return None
        return _decode(workflow_id, data.encode() if isinstance(data, str) else data)

    def save(self, workflow_id: str, checkpoint: WorkflowCheckpoint) -> None:
        if not self._ensure_table():
            return
        data = _encoder.encode(checkpoint)
        try:
            with closing(self._connect()) as db:
                db.execute(
                    "INSERT INTO checkpoints (workflow_id, data, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(workflow_id) DO UPDATE SET data = excluded.data, "
                    "updated_at = excluded.updated_at",
                    (workflow_id, data, checkpoint.updated_at),
                )
        except (sqlite3.Error, OSError) as err:
            logger.warning("cannot save checkpoint {!r} to {}: {}", workflow_id, self.path, err)

    def delete(self, workflow_id: str) -> None:
        if not self._ensure_table():
            return
        try:
            with closing(self._connect()) as db:
                db.execute("DELETE FROM checkpoints WHERE workflow_id = ?", (workflow_id,))
        except (sqlite3.Error, OSError) as err:
            logger.warning("cannot delete checkpoint {!r} in {}: {}", workflow_id, self.path, err)

    def __repr__(self) -> str:
        return f"SqliteCheckpointStore({str(self.path)!r})"
