"""Conversation stores: where the named sessions of agents keep their messages.

A session is one conversation of one agent, keyed by `(agent name, session id)`. The
orchestrator's store is shared by every agent it spawns, so a named session outlives the agent
actor that served it: a supervisor restart continues it, and with [`SqliteSessionStore`][] so
does the next process.

Stores are thread-safe and never raise for storage trouble: a store that cannot read or write
logs a warning and behaves as empty (a lost conversation costs context, never a crash), and so
does one whose content is corrupt (a row that does not decode is skipped).

Example:
    >>> from actor_orch.types import user_message
    >>> store = MemorySessionStore()
    >>> store.append("writer", "user-42", [user_message("my name is Ada")])
    >>> [m.content[0].text for m in store.load("writer", "user-42")]
    ['my name is Ada']
    >>> store.load("writer", "someone-else")
    []
    >>> store.clear("writer", "user-42"); store.load("writer", "user-42")
    []
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec
from loguru import logger

from actor_orch.agent import trim_history
from actor_orch.types import AgentMessage, UserMessage

__all__ = ["MemorySessionStore", "SessionStore", "SqliteSessionStore"]

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AgentMessage)


@runtime_checkable
class SessionStore(Protocol):
    """Where named sessions keep their messages. Implementations must be thread-safe."""

    def load(self, agent: str, session: str, limit: int | None = None) -> list[AgentMessage]:
        """The session's messages, oldest first; with `limit`, at most the newest `limit`
        (cut at a turn boundary, as `history_limit` trims). `[]` when absent or unreadable."""
        ...

    def append(self, agent: str, session: str, messages: Sequence[AgentMessage]) -> None:
        """Add `messages` at the end of the session (cost independent of its length)."""
        ...

    def clear(self, agent: str, session: str) -> None:
        """Forget the session."""
        ...


# A store may also have `version(agent, session) -> object`: a token that changes whenever the
# session does (equal tokens: nothing changed). With it, an agent that keeps a session loaded
# notices turns another handle or process added and reads the session again.


class MemorySessionStore:
    """Sessions in this process's memory; the orchestrator's default.

    `max_messages` (optional) bounds what one session keeps, dropping its oldest whole turns.

    Example:
        >>> MemorySessionStore()
        MemorySessionStore(sessions=0)
    """

    def __init__(self, *, max_messages: int | None = None) -> None:
        if max_messages is not None and (
            not isinstance(max_messages, int) or isinstance(max_messages, bool) or max_messages < 1
        ):
            raise ValueError(f"max_messages must be an int >= 1 or None, got {max_messages!r}")
        self._max = max_messages
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str], list[AgentMessage]] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self._changes = itertools.count(1)

    def load(self, agent: str, session: str, limit: int | None = None) -> list[AgentMessage]:
        with self._lock:
            messages = list(self._sessions.get((agent, session), ()))
        return trim_history(messages, limit)

    def version(self, agent: str, session: str) -> int:
        """Changes whenever the session does (0: absent)."""
        return self._versions.get((agent, session), 0)

    def append(self, agent: str, session: str, messages: Sequence[AgentMessage]) -> None:
        with self._lock:
            self._versions[(agent, session)] = next(self._changes)
            kept = self._sessions.setdefault((agent, session), [])
            kept.extend(messages)
            if self._max is not None and len(kept) > self._max:
                self._sessions[(agent, session)] = trim_history(kept, self._max)

    def clear(self, agent: str, session: str) -> None:
        with self._lock:
            self._sessions.pop((agent, session), None)
            self._versions.pop((agent, session), None)

    def __repr__(self) -> str:
        return f"MemorySessionStore(sessions={len(self._sessions)})"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS session_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    session TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS session_messages_by_session
    ON session_messages (agent, session, seq);
"""


class SqliteSessionStore:
    """Sessions in a SQLite file: one row per message, so an append costs the same at any
    length; WAL mode and short transactions, safe from many threads and several processes.

    Constructing it never raises: a path that cannot be opened, a file that is not a database
    or a database with another schema logs a warning, and the store then acts empty. Reads
    and writes that fail (a locked or full disk) log a warning too; `timeout` bounds the wait
    for a lock held by another process.

    Example:
        >>> import tempfile, pathlib
        >>> from actor_orch.types import user_message
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sessions.db"
        >>> store = SqliteSessionStore(path)
        >>> store.append("writer", "user-42", [user_message("hello")])
        >>> len(SqliteSessionStore(path).load("writer", "user-42"))
        1
        >>> store.close()
    """

    def __init__(self, path: str | Path, *, timeout: float = 2.0) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._broken = False
        self._problem: str | None = None
        with self._lock:
            self._connect()

    @property
    def problem(self) -> str | None:
        """Why the store is unusable (it then acts empty), or None when it works."""
        return self._problem

    def _connect(self) -> sqlite3.Connection | None:
        # Caller holds the lock. A broken file is remembered, so it warns once; a file that
        # another process holds locked while it sets up (switching to WAL takes no busy
        # handler) is retried until `timeout`, and only this call acts empty after that.
        if self._conn is not None or self._broken:
            return self._conn
        deadline = time.monotonic() + self._timeout
        while True:
            conn = None
            try:
                if self.path.parent and not self.path.parent.exists():
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, timeout=self._timeout, check_same_thread=False, isolation_level=None
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                # A table of this name but another shape is a file we cannot use.
                conn.execute("SELECT seq, agent, session, body FROM session_messages LIMIT 0")
            except (sqlite3.Error, OSError) as err:
                if conn is not None:
                    conn.close()
                if _is_locked(err):
                    if time.monotonic() < deadline:
                        time.sleep(0.01)  # another process is setting the file up
                        continue
                    logger.warning("session store {} stayed locked ({})", self.path, err)
                    return None
                self._broken = True
                self._problem = str(err)
                logger.warning(
                    "session store {} is unusable ({}); sessions act empty", self.path, err
                )
                return None
            self._conn = conn
            return conn

    def load(self, agent: str, session: str, limit: int | None = None) -> list[AgentMessage]:
        # Newest first, stopping once more than `limit` are read with a user message among
        # them (older rows cannot change what `trim_history` keeps). A LIMIT in SQL would cut
        # inside a turn: a tool result without its call. The body is read as bytes, so a row
        # that is not UTF-8 is one corrupt message, not an unreadable session.
        query = (
            "SELECT CAST(body AS BLOB) FROM session_messages WHERE agent = ? AND session = ? "
            "ORDER BY seq DESC"
        )
        newest_first: list[AgentMessage] = []
        has_turn = False  # a user message is among them: older ones can no longer matter
        with self._lock:
            conn = self._connect()
            if conn is None:
                return []
            try:
                for (body,) in conn.execute(query, (agent, session)):
                    message = self._decode(body, agent, session)
                    if message is None:
                        continue
                    newest_first.append(message)
                    has_turn = has_turn or isinstance(message, UserMessage)
                    if limit is not None and has_turn and len(newest_first) > limit:
                        break
            except sqlite3.Error as err:
                logger.warning("session store {}: cannot read ({}); acts empty", self.path, err)
                return []
        newest_first.reverse()
        return trim_history(newest_first, limit)

    def version(self, agent: str, session: str) -> int | None:
        """Changes whenever the session does: the newest row's number (rows are numbered
        from one counter that never goes back), None when absent or unreadable."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return None
            try:
                row = conn.execute(
                    "SELECT max(seq) FROM session_messages WHERE agent = ? AND session = ?",
                    (agent, session),
                ).fetchone()
            except sqlite3.Error as err:
                logger.warning("session store {}: cannot read ({})", self.path, err)
                return None
        return None if row is None else row[0]

    def _decode(self, body: bytes, agent: str, session: str) -> AgentMessage | None:
        try:
            message: AgentMessage = _DECODER.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, TypeError) as err:
            logger.warning(
                "session store {}: skipped a corrupt message of {}/{} ({})",
                self.path,
                agent,
                session,
                err,
            )
            return None
        return message

    def append(self, agent: str, session: str, messages: Sequence[AgentMessage]) -> None:
        rows = [(agent, session, _ENCODER.encode(message)) for message in messages]
        if not rows:
            return
        with self._lock:
            conn = self._connect()
            if conn is None:
                return
            try:
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(
                        "INSERT INTO session_messages (agent, session, body) VALUES (?, ?, ?)", rows
                    )
            except sqlite3.Error as err:
                logger.warning("session store {}: cannot write ({})", self.path, err)

    def clear(self, agent: str, session: str) -> None:
        with self._lock:
            conn = self._connect()
            if conn is None:
                return
            try:
                with conn:
                    conn.execute(
                        "DELETE FROM session_messages WHERE agent = ? AND session = ?",
                        (agent, session),
                    )
            except sqlite3.Error as err:
                logger.warning("session store {}: cannot clear ({})", self.path, err)

    def close(self) -> None:
        """Close the connection; a later call opens it again."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __repr__(self) -> str:
        state = " unusable" if self._broken else ""
        return f"SqliteSessionStore({str(self.path)!r}){state}"


def _is_locked(error: BaseException) -> bool:
    """Whether `error` is SQLite's "database is locked/busy": another connection's moment."""
    return isinstance(error, sqlite3.OperationalError) and (
        "locked" in str(error) or "busy" in str(error)
    )
