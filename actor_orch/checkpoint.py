"""Checkpoints of resumable runs: what finished, kept in memory or in a SQLite file.

A checkpoint is one row per successful step, keyed by workflow id and task id, so saving a
step costs the same whether 10 or 10,000 steps are saved already, and two processes saving
steps of one workflow never overwrite each other's. A store never raises for storage
trouble: one that cannot read or write, or whose content is corrupt (bad JSON, bad UTF-8, a
table of the wrong shape, a file that is not a database, a directory), logs a warning and
behaves as empty, so a broken disk costs a re-run, never a crash.

Example:
    >>> from actor_orch.executor import StepOutcome
    >>> store = MemoryCheckpointStore()
    >>> done = StepOutcome("t1", "task-run-t1", "writer", "ok", True)
    >>> store.save_step("wf", "t1", CheckpointedStep("digest", done))
    >>> store.load("wf").steps["t1"].outcome.output
    'ok'
    >>> store.delete("wf"); store.load("wf") is None
    True
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec
from loguru import logger

from actor_orch.spec import AgentStepSpec, StepOutcome

__all__ = [
    "CheckpointStore",
    "CheckpointedStep",
    "MemoryCheckpointStore",
    "SqliteCheckpointStore",
    "WorkflowCheckpoint",
    "save_step",
    "spec_digest",
]


class CheckpointedStep(msgspec.Struct):
    """A finished step: its outcome and a digest of the spec that produced it."""

    spec_digest: str
    outcome: StepOutcome


class WorkflowCheckpoint(msgspec.Struct):
    """The successful steps of one workflow run, by task id; `updated_at` in epoch seconds."""

    steps: dict[str, CheckpointedStep] = msgspec.field(default_factory=dict)
    updated_at: float = msgspec.field(default_factory=time.time)


def spec_digest(spec: AgentStepSpec) -> str:
    """A stable digest of everything in `spec`, to tell whether a checkpointed step still fits.

    Example:
        >>> a = AgentStepSpec("t", "writer", "d", "hello")
        >>> spec_digest(a) == spec_digest(AgentStepSpec("t", "writer", "d", "hello"))
        True
        >>> spec_digest(a) == spec_digest(AgentStepSpec("t", "writer", "d", "hello!"))
        False
    """
    return hashlib.sha256(msgspec.json.encode(spec, order="sorted")).hexdigest()


@runtime_checkable
class CheckpointStore(Protocol):
    """Where resumable runs keep their progress. Implementations must be thread-safe.

    A store may also have `save_step(workflow_id, task_id, step)`, which adds or replaces
    one step of a checkpoint; both built-in stores do, in constant time. Resumable runs use
    it when present (see [`save_step`][]) and fall back to `save` of the whole checkpoint.
    """

    def load(self, workflow_id: str) -> WorkflowCheckpoint | None:
        """The checkpoint of `workflow_id`, or None when absent or unreadable."""
        ...

    def save(self, workflow_id: str, checkpoint: WorkflowCheckpoint) -> None:
        """Replace the checkpoint of `workflow_id` with `checkpoint`."""
        ...

    def delete(self, workflow_id: str) -> None:
        """Forget the checkpoint of `workflow_id` (nothing happens when there is none)."""
        ...


def save_step(
    store: CheckpointStore, workflow_id: str, task_id: str, step: CheckpointedStep
) -> None:
    """Add `step` to the checkpoint of `workflow_id` in `store`, as cheaply as it allows.

    Uses the store's own `save_step` when it has one; otherwise loads, updates and saves the
    whole checkpoint (a cost that grows with the checkpoint, and not safe against another
    process saving the same workflow). Never raises: a store that fails is logged.

    Example:
        >>> store = MemoryCheckpointStore()
        >>> done = StepOutcome("t", "task-run-t", "a", "o", True)
        >>> save_step(store, "wf", "t", CheckpointedStep("d", done))
        >>> list(store.load("wf").steps)
        ['t']
    """
    try:
        own = getattr(store, "save_step", None)
        if callable(own):
            own(workflow_id, task_id, step)
            return
        checkpoint = store.load(workflow_id) or WorkflowCheckpoint()
        checkpoint.steps[task_id] = step
        checkpoint.updated_at = time.time()
        store.save(workflow_id, checkpoint)
    except Exception as err:  # a third-party store must not break the run
        logger.opt(exception=err).warning(
            "checkpoint store {!r} failed to save step {!r}", store, task_id
        )


_encoder = msgspec.json.Encoder()
_step_decoder = msgspec.json.Decoder(CheckpointedStep)
_checkpoint_decoder = msgspec.json.Decoder(WorkflowCheckpoint)


def _decode_step(workflow_id: str, task_id: object, data: object) -> CheckpointedStep | None:
    """One stored step, or None (with a warning) when it is not what was stored."""
    try:
        if not isinstance(data, bytes | str):
            raise msgspec.DecodeError(f"stored as {type(data).__name__}, not JSON text")
        step = _step_decoder.decode(data)
        if step.outcome.task_id != task_id:
            raise msgspec.DecodeError(f"holds the outcome of {step.outcome.task_id!r}")
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        logger.warning(
            "checkpoint of {!r}: step {!r} is unreadable ({}); it will run again",
            workflow_id,
            task_id,
            err,
        )
        return None
    return step


class MemoryCheckpointStore:
    """Checkpoints in this process's memory, one encoded entry per step.

    Entries are stored encoded, so callers cannot alias them.

    Example:
        >>> MemoryCheckpointStore().load("nothing") is None
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # workflow id -> (updated_at, task id -> encoded CheckpointedStep)
        self._data: dict[str, tuple[float, dict[str, bytes]]] = {}

    def load(self, workflow_id: str) -> WorkflowCheckpoint | None:
        with self._lock:
            entry = self._data.get(workflow_id)
            if entry is None:
                return None
            updated_at, rows = entry[0], dict(entry[1])
        steps = {}
        for task_id, data in rows.items():
            step = _decode_step(workflow_id, task_id, data)
            if step is not None:
                steps[task_id] = step
        return WorkflowCheckpoint(steps, updated_at)

    def save(self, workflow_id: str, checkpoint: WorkflowCheckpoint) -> None:
        rows = {task_id: _encoder.encode(step) for task_id, step in checkpoint.steps.items()}
        with self._lock:
            self._data[workflow_id] = (checkpoint.updated_at, rows)

    def save_step(self, workflow_id: str, task_id: str, step: CheckpointedStep) -> None:
        """Add or replace one step of `workflow_id`'s checkpoint, in constant time."""
        data = _encoder.encode(step)
        now = time.time()
        with self._lock:
            _, rows = self._data.get(workflow_id, (now, {}))
            rows[task_id] = data
            self._data[workflow_id] = (now, rows)

    def delete(self, workflow_id: str) -> None:
        with self._lock:
            self._data.pop(workflow_id, None)

    def __repr__(self) -> str:
        return f"MemoryCheckpointStore(workflows={len(self._data)})"


# Bumped when the tables change; a file written with another layout is ignored, not misread.
_SCHEMA_VERSION = 2
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS checkpoint_workflows ("
    " workflow_id TEXT PRIMARY KEY, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoint_steps ("
    " workflow_id TEXT NOT NULL, task_id TEXT NOT NULL, data BLOB NOT NULL,"
    " updated_at REAL NOT NULL, PRIMARY KEY (workflow_id, task_id))",
)
_SAVE_STEP = (
    "INSERT INTO checkpoint_steps (workflow_id, task_id, data, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (workflow_id, task_id) DO UPDATE SET data = excluded.data,"
    " updated_at = excluded.updated_at"
)
_STORAGE_ERRORS = (sqlite3.Error, OSError, MemoryError)


class SqliteCheckpointStore:
    """Checkpoints in a SQLite file (created on first use), one row per successful step.

    Safe from any thread and any number of processes: each thread keeps its own connection,
    the file is in WAL mode (readers never wait for a writer), every write is one short
    transaction, and a writer waits for another at most `timeout` seconds (default 1.0), then
    logs a warning and carries on without saving. No lock of this object is held while
    SQLite waits, so a locked file slows only the thread that is saving.

    `save_step` costs the same however many steps the checkpoint holds. A file that cannot
    be opened, is not a database, or holds tables of another layout makes the store act
    empty (with a warning); constructing a store never raises for it.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "runs.db")
        >>> store = SqliteCheckpointStore(path)
        >>> outcome = StepOutcome("t1", "task-run-t1", "writer", "ok", True)
        >>> store.save_step("wf", "t1", CheckpointedStep("digest", outcome))
        >>> list(store.load("wf").steps)
        ['t1']
        >>> store
        SqliteCheckpointStore('.../runs.db', timeout=1.0)
        >>> store.close()
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 1.0) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
        if not 0 <= timeout <= 60:
            raise ValueError(f"timeout must be between 0 and 60 seconds, got {timeout!r}")
        self.path = Path(path)
        self.timeout = float(timeout)
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _connections and _state only, never SQLite
        self._connections: list[sqlite3.Connection] = []
        self._state: str | None = None  # None: not checked yet; "ok"; or why it is unusable
        self._warned = False
        # Rows of save_step waiting for the writer thread, and how many were queued/written.
        self._pending_lock = threading.Condition(threading.Lock())
        self._pending: list[tuple[object, ...]] = []
        self._queued = 0
        self._committed = 0
        self._writer: threading.Thread | None = None
        self._idle = False  # the writer waits for rows (not inside a batch window)
        self._flushing = 0  # callers of flush() waiting
        self._busy_warned = False
        weakref.finalize(self, _close_all, self._connections)
        self._usable()

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """A new connection to the file (one per thread); raises for storage trouble."""
        db = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        # Bytes, not str: text that is not UTF-8 must not break a whole query.
        db.text_factory = bytes
        return db

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, safe
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def _usable(self) -> bool:
        """Create the tables on first use; False (after one warning) if the file is unusable."""
        if self._state == "ok":
            return True
        if self._state is None:
            try:
                db = self._db()
                (version,) = db.execute("PRAGMA user_version").fetchone()
                if version not in (0, _SCHEMA_VERSION):
                    raise sqlite3.DatabaseError(
                        f"written by another version of actor_orch (layout {version})"
                    )
                # Busy, or a filesystem without shared memory: the rollback journal then.
                with contextlib.suppress(sqlite3.OperationalError):
                    db.execute("PRAGMA journal_mode = WAL")
                db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                self._check_columns(db)
                state = "ok"
            except _STORAGE_ERRORS as err:
                state = str(err) or type(err).__name__
            with self._lock:
                if self._state is None:
                    self._state = state
        if self._state != "ok":
            self._warn(f"unusable ({self._state}); it acts empty")
            return False
        return True

    @staticmethod
    def _check_columns(db: sqlite3.Connection) -> None:
        for table, wanted in (
            ("checkpoint_workflows", {"workflow_id", "updated_at"}),
            ("checkpoint_steps", {"workflow_id", "task_id", "data", "updated_at"}),
        ):
            found = {row[1].decode() for row in db.execute(f"PRAGMA table_info({table})")}
            if not wanted <= found:
                raise sqlite3.DatabaseError(f"table {table} lacks {sorted(wanted - found)}")

    @property
    def problem(self) -> str | None:
        """Why the store is unusable (it then acts empty), or None when it works."""
        return None if self._usable() else self._state

    def _warn(self, problem: str) -> None:
        if not self._warned:  # once per store: a broken file must not flood the log
            self._warned = True
            logger.warning("checkpoint store {}: {}", self.path, problem)

    # -- the store -------------------------------------------------------------------------

    def load(self, workflow_id: str) -> WorkflowCheckpoint | None:
        """The checkpoint of `workflow_id`, or None; unreadable steps are left out."""
        if not self._usable():
            return None
        self.flush()
        try:
            db = self._db()
            head = db.execute(
                "SELECT updated_at FROM checkpoint_workflows WHERE workflow_id = ?",
                (workflow_id,),
            ).fetchone()
            rows = db.execute(
                "SELECT task_id, data, updated_at FROM checkpoint_steps WHERE workflow_id = ?",
                (workflow_id,),
            ).fetchall()
        except _STORAGE_ERRORS as err:
            logger.warning("cannot read checkpoint {!r} from {}: {}", workflow_id, self.path, err)
            return None
        if head is None and not rows:
            return None
        stamps = [row[2] for row in rows if isinstance(row[2], int | float)]
        if head is not None and isinstance(head[0], int | float):
            stamps.append(head[0])
        steps: dict[str, CheckpointedStep] = {}
        for raw_task_id, data, _ in rows:
            try:
                task_id = raw_task_id.decode() if isinstance(raw_task_id, bytes) else raw_task_id
            except UnicodeDecodeError:
                task_id = repr(raw_task_id)
            step = _decode_step(workflow_id, task_id, data)
            if step is not None:
                steps[task_id] = step
        if head is None and not steps:
            return None  # only unreadable steps: as good as none
        return WorkflowCheckpoint(steps, max(stamps, default=0.0))

    def save(self, workflow_id: str, checkpoint: WorkflowCheckpoint) -> None:
        """Replace the whole checkpoint of `workflow_id`, in one transaction."""
        if not self._usable():
            return
        self.flush()
        rows: list[tuple[object, ...]] = [
            (workflow_id, task_id, _encoder.encode(step), checkpoint.updated_at)
            for task_id, step in checkpoint.steps.items()
        ]
        self._write(
            f"checkpoint {workflow_id!r}",
            [
                ("DELETE FROM checkpoint_steps WHERE workflow_id = ?", [(workflow_id,)]),
                (
                    "INSERT INTO checkpoint_workflows (workflow_id, updated_at) VALUES (?, ?)"
                    " ON CONFLICT (workflow_id) DO UPDATE SET updated_at = excluded.updated_at",
                    [(workflow_id, checkpoint.updated_at)],
                ),
                (_SAVE_STEP, rows),
            ],
        )

    def save_step(self, workflow_id: str, task_id: str, step: CheckpointedStep) -> None:
        """Add or replace one step of `workflow_id`'s checkpoint: one row, whatever its size.

        The row is handed to the store's writer thread, which commits every row waiting at
        that moment in one short transaction (group commit) within about 20 ms; `load`,
        `save`, `delete`, [`flush`][] and `close` of this store see it at once, other
        processes once committed. Rows still waiting when the process exits are committed by
        an exit handler.
        """
        if not self._usable():
            return
        row = (workflow_id, task_id, _encoder.encode(step), time.time())
        with self._pending_lock:
            self._pending.append(row)
            self._queued += 1
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_pending, name="actor-orch-checkpoints", daemon=True
                )
                self._writer.start()
                _stores_with_writers.add(self)
            elif self._idle:
                self._pending_lock.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every step saved so far is committed; False if `timeout` (seconds,
        default the store's `timeout` + 1) passed first."""
        limit = self.timeout + 1.0 if timeout is None else timeout
        with self._pending_lock:
            target = self._queued
            self._flushing += 1
            self._pending_lock.notify_all()  # the writer commits now, without its window
            try:
                return self._pending_lock.wait_for(lambda: self._committed >= target, limit)
            finally:
                self._flushing -= 1

    def _write_pending(self) -> None:
        """The writer thread: commit what is pending, batch by batch; end when idle."""
        lock = self._pending_lock
        while True:
            with lock:
                if not self._pending:
                    self._idle = True
                    lock.wait(_WRITER_IDLE_S)
                    self._idle = False
                    if not self._pending:
                        self._writer = None
                        return
                if not self._flushing:
                    # Let the rows of steps ending about now join this batch: one commit for
                    # many steps (at most ~50 a second) instead of one per step. Only a
                    # flush() cuts the window short.
                    lock.wait(_BATCH_WINDOW_S)
                rows, self._pending = self._pending, []
            written: bool | None = False
            try:
                written = self._write(
                    f"{len(rows)} checkpointed steps", [(_SAVE_STEP, rows)], retry_busy=True
                )
            finally:
                with lock:
                    if written is None:  # busy (another process writes): try again later
                        self._pending[:0] = rows
                        lock.wait(_BATCH_WINDOW_S)
                    else:
                        self._committed += len(rows)
                    lock.notify_all()

    def delete(self, workflow_id: str) -> None:
        if not self._usable():
            return
        self.flush()
        self._write(
            f"checkpoint {workflow_id!r}",
            [
                ("DELETE FROM checkpoint_steps WHERE workflow_id = ?", [(workflow_id,)]),
                ("DELETE FROM checkpoint_workflows WHERE workflow_id = ?", [(workflow_id,)]),
            ],
        )

    def _write(
        self,
        what: str,
        statements: list[tuple[str, list[tuple[object, ...]]]],
        *,
        retry_busy: bool = False,
    ) -> bool | None:
        """Run `statements` (each with its rows) in one transaction; `what` names it in logs.

        True when committed, False when it failed (logged), None when the file stayed locked
        for the whole busy timeout and `retry_busy` asks the caller to try again later.
        """
        try:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    db.executemany(sql, rows)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as err:
            busy = "locked" in str(err) or "busy" in str(err)
            if busy and retry_busy:
                if not self._busy_warned:
                    self._busy_warned = True
                    logger.warning("checkpoint store {} is locked ({}); will retry", self.path, err)
                return None
            logger.warning("cannot write {} to {}: {}", what, self.path, err)
            return False
        except _STORAGE_ERRORS as err:
            logger.warning("cannot write {} to {}: {}", what, self.path, err)
            return False
        self._busy_warned = False
        return True

    def close(self) -> None:
        """Commit the steps still waiting, close the connections of every thread; the store
        reconnects if used again."""
        if self._state == "ok":
            self.flush()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        _close_all(connections)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SqliteCheckpointStore({str(self.path)!r}, timeout={self.timeout!r})"


# How long the writer thread of a store waits for more rows before it ends.
_WRITER_IDLE_S = 0.5
# How long the writer thread lets rows gather before it commits them.
_BATCH_WINDOW_S = 0.02
_stores_with_writers: weakref.WeakSet[SqliteCheckpointStore] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Commit the rows still waiting in any store when the interpreter exits."""
    for store in list(_stores_with_writers):
        with contextlib.suppress(Exception):
            store.flush()


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for db in connections:
        # Failing means it is in use by another thread right now; it ends with the thread.
        with contextlib.suppress(sqlite3.Error):
            db.close()
