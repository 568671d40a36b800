"""Conversations (API §4a), black-box against `import actor_orch as ao`: named sessions and their
stores, `history_limit`, `history()`/`clear_history()`, `stream_message` and typed output.

Rules these tests keep: public API only (plus `sqlite3` to damage a session file); no sleep used
to synchronise (a blocked model waits on an `Event` the test sets); every wait has a timeout; no
wall-clock asserts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import msgspec
import pytest
from loguru import logger

import actor_orch as ao

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 10.0  # every wait of a test; a bug fails the test instead of hanging it
NO_RETRY = None  # AgentOptions(retry=None): a failure reaches the supervisor at once


# --- helpers -----------------------------------------------------------------------------------


def text(message: ao.AgentMessage) -> str:
    return "".join(b.text for b in message.content if isinstance(b, ao.TextContent))


def user_texts(messages: list[ao.AgentMessage]) -> list[str]:
    return [text(m) for m in messages if isinstance(m, ao.UserMessage)]


def conversation_echo(request: ao.ModelRequest) -> str:
    """A model that replies with every user message it was sent, joined by ' | '."""
    return " | ".join(user_texts(request.messages))


class Recorder:
    """A `FunctionModel` function recording the user texts of every request it gets; `block`
    as the last user text makes it wait for `release` (after setting `started`); `boom`
    raises a retryable `NetworkError`."""

    def __init__(self, reply: Callable[[ao.ModelRequest], Any] = conversation_echo) -> None:
        self.reply = reply
        self.seen: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, request: ao.ModelRequest) -> Any:
        texts = user_texts(request.messages)
        with self._lock:
            self.seen.append(texts)
        if texts and texts[-1] == "block":
            self.started.set()
            assert self.release.wait(WAIT_S), "the test never released the model"
        if texts and texts[-1] == "boom":
            raise ao.NetworkError("connection reset")
        return self.reply(request)

    @property
    def last_user_texts(self) -> list[str]:
        with self._lock:
            return self.seen[-1]

    def options(self, **kwargs: Any) -> Callable[[], ao.AgentOptions]:
        return lambda: ao.AgentOptions(ao.FunctionModel(self), retry=NO_RETRY, **kwargs)


@pytest.fixture
def orch() -> Iterator[ao.AgentOrchestrator]:
    orchestrator = ao.AgentOrchestrator(supervisor=ao.DefaultSupervisor())
    try:
        yield orchestrator
    finally:
        orchestrator.shutdown(timeout=5.0)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    model = Recorder()
    try:
        yield model
    finally:
        model.release.set()  # never leave a model thread blocked behind the test


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """Warning messages actor_orch logs while the test runs (the library is silent otherwise)."""
    messages: list[str] = []
    logger.enable("actor_orch")
    handler_id = logger.add(
        lambda m: messages.append(m.record["message"]),
        level="WARNING",
        filter="actor_orch",
    )
    try:
        yield messages
    finally:
        logger.remove(handler_id)
        logger.disable("actor_orch")


@ao.tool
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


def tool_turn(call_id: str, a: int) -> ao.AssistantMessage:
    return ao.AssistantMessage([ao.ToolCall(call_id, "add", {"a": a})], ao.StopReason.TOOL_USE)


def assert_whole_turns(messages: list[ao.AgentMessage], limit: int) -> None:
    """Starts at a user message, at most `limit` long, and every tool result follows its call."""
    assert messages, "an empty history"
    assert isinstance(messages[0], ao.UserMessage), [type(m).__name__ for m in messages]
    assert len(messages) <= limit
    calls: set[str] = set()
    for message in messages:
        if isinstance(message, ao.AssistantMessage):
            calls.update(call.id for call in message.tool_calls)
        elif isinstance(message, ao.ToolResultMessage):
            assert message.tool_call_id in calls, f"result {message.tool_call_id} without its call"


# --- sessions ----------------------------------------------------------------------------------


def test_concurrent_senders_on_many_sessions_each_see_only_their_own_conversation(
    orch: ao.AgentOrchestrator,
) -> None:
    orch.add_agent("chat", lambda: ao.AgentOptions(ao.FunctionModel(conversation_echo)))
    handle = orch.spawn("chat")
    threads, sessions_per_thread, rounds = 8, 10, 4  # 80 sessions: more than an agent caches
    start = threading.Barrier(threads, timeout=WAIT_S)

    def converse(worker: int) -> list[str]:
        sessions = [f"w{worker}-s{k}" for k in range(sessions_per_thread)]
        problems: list[str] = []
        start.wait()
        for turn in range(rounds):
            for session in sessions:
                reply = handle.send_message(f"{session}:{turn}", timeout=WAIT_S, session=session)
                expected = " | ".join(f"{session}:{i}" for i in range(turn + 1))
                if reply.text != expected:
                    problems.append(f"{session} turn {turn}: got {reply.text!r}")
        return problems

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        outcomes = [pool.submit(converse, w) for w in range(threads)]
        problems = [p for outcome in outcomes for p in outcome.result(timeout=60)]
    assert problems == []
    for worker, k in itertools.product(range(threads), range(sessions_per_thread)):
        session = f"w{worker}-s{k}"
        assert user_texts(handle.history(session)) == [f"{session}:{i}" for i in range(rounds)]
    assert handle.history() == []  # no request used the agent's own conversation


def test_a_restart_starts_the_agents_own_conversation_afresh_and_named_sessions_continue(
    orch: ao.AgentOrchestrator, recorder: Recorder
) -> None:
    orch.add_agent("chat", recorder.options())
    handle = orch.spawn("chat")
    assert handle.send_message("a", timeout=WAIT_S).text == "a"
    assert handle.send_message("x", timeout=WAIT_S, session="user-1").text == "x"

    with pytest.raises(ao.NetworkError):  # retryable: DefaultSupervisor restarts the agent
        handle.send_message("boom", timeout=WAIT_S, session="user-1")
    assert handle.restarts == 1
    assert handle.status() is ao.AgentStatus.RUNNING

    assert handle.history() == []  # the rebuilt agent's own conversation is new
    assert handle.send_message("b", timeout=WAIT_S).text == "b"
    assert recorder.last_user_texts == ["b"]
    # The rebuilt agent continues the named session from the store; the failed request left
    # nothing in it.
    assert handle.send_message("y", timeout=WAIT_S, session="user-1").text == "x | y"
    assert recorder.last_user_texts == ["x", "y"]
    assert [text(m) for m in handle.history("user-1")] == ["x", "x", "y", "x | y"]


def test_sqlite_sessions_are_shared_by_two_orchestrators_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    first = ao.AgentOrchestrator(sessions=ao.SqliteSessionStore(path))
    second = ao.AgentOrchestrator(sessions=ao.SqliteSessionStore(path))
    try:
        for orchestrator in (first, second):
            orchestrator.add_agent(
                "chat", lambda: ao.AgentOptions(ao.FunctionModel(conversation_echo))
            )
        one, two = first.spawn("chat"), second.spawn("chat")
        assert one.send_message("my name is Ada", timeout=WAIT_S, session="u").text == (
            "my name is Ada"
        )
        assert two.send_message("who am I?", timeout=WAIT_S, session="u").text == (
            "my name is Ada | who am I?"
        )
        assert user_texts(one.history("u")) == ["my name is Ada", "who am I?"]
        assert two.send_message("other", timeout=WAIT_S, session="v").text == "other"
        assert one.history("v") == two.history("v")
    finally:
        first.shutdown(timeout=5.0)
        second.shutdown(timeout=5.0)
    reopened = ao.SqliteSessionStore(path)
    assert user_texts(reopened.load("chat", "u")) == ["my name is Ada", "who am I?"]
    reopened.close()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_session_served_by_two_handles_in_turn_sees_every_turn(
    store: str, tmp_path: Path
) -> None:
    # Two handles of one agent (one orchestrator, one store), or two orchestrators on one file
    # (as two processes would be): each turn sees the turns the other handle served before it.
    if store == "memory":
        shared = ao.MemorySessionStore()
        orchestrators = [ao.AgentOrchestrator(sessions=shared)]
    else:
        path = tmp_path / "sessions.db"
        orchestrators = [
            ao.AgentOrchestrator(sessions=ao.SqliteSessionStore(path)) for _ in range(2)
        ]
    try:
        for orchestrator in orchestrators:
            orchestrator.add_agent(
                "chat", lambda: ao.AgentOptions(ao.FunctionModel(conversation_echo))
            )
        one = orchestrators[0].spawn("chat")
        two = orchestrators[-1].spawn("chat")
        assert one.send_message("a", timeout=WAIT_S, session="u").text == "a"
        assert two.send_message("b", timeout=WAIT_S, session="u").text == "a | b"
        assert one.send_message("c", timeout=WAIT_S, session="u").text == "a | b | c"
        assert one.send_message("d", timeout=WAIT_S, session="u").text == "a | b | c | d"
        two.clear_history("u", timeout=WAIT_S)
        assert one.send_message("e", timeout=WAIT_S, session="u").text == "e"
    finally:
        for orchestrator in orchestrators:
            orchestrator.shutdown(timeout=5.0)


def test_a_store_whose_version_raises_still_serves_its_sessions() -> None:
    class Flaky(ao.MemorySessionStore):
        def version(self, agent: str, session: str) -> int:
            raise RuntimeError("version unavailable")

    with ao.AgentOrchestrator(sessions=Flaky()) as orchestrator:
        orchestrator.add_agent("chat", lambda: ao.AgentOptions(ao.FunctionModel(conversation_echo)))
        handle = orchestrator.spawn("chat")
        assert handle.send_message("a", timeout=WAIT_S, session="u").text == "a"
        assert handle.send_message("b", timeout=WAIT_S, session="u").text == "a | b"
        assert handle.status() is ao.AgentStatus.RUNNING


def test_a_sqlite_session_written_by_another_process_is_continued_here(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    script = textwrap.dedent(
        """
        import sys
        import actor_orch as ao

        with ao.AgentOrchestrator(sessions=ao.SqliteSessionStore(sys.argv[1])) as orch:
            orch.add_agent("chat", lambda: ao.AgentOptions(ao.EchoModel()))
            handle = orch.spawn("chat")
            print(handle.send_message("my name is Ada", timeout=10, session="user-42").text)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "my name is Ada\n"

    with ao.AgentOrchestrator(sessions=ao.SqliteSessionStore(path)) as orch:
        orch.add_agent("chat", lambda: ao.AgentOptions(ao.FunctionModel(conversation_echo)))
        handle = orch.spawn("chat")
        assert [text(m) for m in handle.history("user-42")] == ["my name is Ada"] * 2
        reply = handle.send_message("what is my name?", timeout=WAIT_S, session="user-42")
        assert reply.text == "my name is Ada | what is my name?"


def make_garbage_file(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a sqlite database" * 100)
    return path


def make_directory(tmp_path: Path) -> Path:
    return tmp_path


def make_table_of_another_shape(tmp_path: Path) -> Path:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE session_messages (id INTEGER, payload TEXT)")
        db.execute("INSERT INTO session_messages VALUES (1, 'hello')")
    return path


@pytest.mark.parametrize(
    "make_path",
    [make_garbage_file, make_directory, make_table_of_another_shape],
    ids=["garbage-file", "directory", "table-of-another-shape"],
)
def test_an_unusable_session_file_warns_and_acts_empty(
    tmp_path: Path, make_path: Callable[[Path], Path], warnings_logged: list[str]
) -> None:
    store = ao.SqliteSessionStore(make_path(tmp_path))  # never raises
    with ao.AgentOrchestrator(sessions=store) as orch:
        orch.add_agent("chat", lambda: ao.AgentOptions(ao.FunctionModel(conversation_echo)))
        handle = orch.spawn("chat")
        assert handle.send_message("hello", timeout=WAIT_S, session="u").text == "hello"
        assert handle.history("u") == []
        handle.clear_history("u", timeout=WAIT_S)
        assert handle.send_message("again", timeout=WAIT_S, session="u").text == "again"
    assert any("unusable" in message for message in warnings_logged), warnings_logged


@pytest.mark.parametrize(
    ("bad_body", "as_text"),
    [
        (b"{not json", False),
        (b"\x80\xff{}", True),  # a TEXT value that is not UTF-8
        (b'{"role": "nobody", "content": []}', False),  # JSON, but not a message
    ],
    ids=["invalid-json", "invalid-utf8", "not-a-message"],
)
def test_a_corrupt_session_row_is_skipped_with_a_warning(
    tmp_path: Path, bad_body: bytes, as_text: bool, warnings_logged: list[str]
) -> None:
    path = tmp_path / "sessions.db"
    store = ao.SqliteSessionStore(path)
    store.append("chat", "u", [ao.user_message("first")])
    value = "CAST(? AS TEXT)" if as_text else "?"
    with sqlite3.connect(path) as db:
        db.execute(
            f"INSERT INTO session_messages (agent, session, body) VALUES ('chat', 'u', {value})",
            (bad_body,),
        )
    store.append("chat", "u", [ao.user_message("second")])

    assert user_texts(store.load("chat", "u")) == ["first", "second"]
    assert any("corrupt" in message for message in warnings_logged), warnings_logged
    with ao.AgentOrchestrator(sessions=store) as orch:
        orch.add_agent("chat", lambda: ao.AgentOptions(ao.FunctionModel(conversation_echo)))
        reply = orch.spawn("chat").send_message("third", timeout=WAIT_S, session="u")
        assert reply.text == "first | second | third"


def scripted_tool_turns(turns: int) -> ao.ScriptedModel:
    """Each turn: a tool call, then a text reply (four messages with the user's)."""
    script: list[str | ao.AssistantMessage] = []
    for i in range(turns):
        script += [tool_turn(f"call-{i}", i), f"done {i}"]
    return ao.ScriptedModel(script)


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_history_limit_drops_whole_turns_and_never_splits_a_tool_call_from_its_result(
    tmp_path: Path, store_kind: str
) -> None:
    limit = 6  # not a multiple of the 4-message turn: a cut by count would split a turn
    model = scripted_tool_turns(8)
    store: ao.SessionStore = (
        ao.MemorySessionStore()
        if store_kind == "memory"
        else ao.SqliteSessionStore(tmp_path / "s.db")
    )
    options = lambda: ao.AgentOptions(model, tools=[add], history_limit=limit)  # noqa: E731
    with ao.AgentOrchestrator(sessions=store) as orch:
        orch.add_agent("calc", options)
        handle = orch.spawn("calc")
        for i in range(3):
            assert handle.send_message(f"own {i}", timeout=WAIT_S).text == f"done {i}"
            assert_whole_turns(handle.history(), limit)
        for i in range(3, 6):
            reply = handle.send_message(f"named {i}", timeout=WAIT_S, session="s")
            assert reply.text == f"done {i}"
            assert_whole_turns(handle.history("s"), limit)
        for request in model.requests:  # what the model was sent: the limit plus one turn
            assert_whole_turns(request.messages, limit + 4)
    # A second orchestrator reads the session back from the store, trimmed the same way.
    with ao.AgentOrchestrator(sessions=store) as orch:
        orch.add_agent("calc", options)
        handle = orch.spawn("calc")
        assert_whole_turns(handle.history("s"), limit)
        assert handle.send_message("named 6", timeout=WAIT_S, session="s").text == "done 6"
        first_request = model.requests[-2].messages
        assert isinstance(first_request[0], ao.UserMessage)
        assert user_texts(first_request) == ["named 5", "named 6"]


def test_an_agent_serving_1000_sessions_keeps_a_bounded_number_loaded(
    orch: ao.AgentOrchestrator,
) -> None:
    class CountingStore(ao.MemorySessionStore):
        def __init__(self) -> None:
            super().__init__()
            self.loads: dict[str, int] = {}
            self._count_lock = threading.Lock()

        def load(self, agent: str, session: str, limit: int | None = None) -> list[Any]:
            with self._count_lock:
                self.loads[session] = self.loads.get(session, 0) + 1
            return super().load(agent, session, limit)

    store = CountingStore()
    orchestrator = ao.AgentOrchestrator(sessions=store)
    try:
        orchestrator.add_agent("chat", lambda: ao.AgentOptions(ao.FunctionModel(conversation_echo)))
        handle = orchestrator.spawn("chat")
        sessions = [f"user-{i}" for i in range(1000)]
        futures = [handle.send_message_async(f"{s} a", timeout=WAIT_S, session=s) for s in sessions]
        assert [f.result(timeout=WAIT_S).text for f in futures] == [f"{s} a" for s in sessions]
        assert sum(store.loads.values()) == 1000  # each session read from the store once

        # The most recent session is still loaded; the first one was evicted long ago and is
        # read from the store again, where its conversation is intact.
        last, first = sessions[-1], sessions[0]
        assert handle.send_message("b", timeout=WAIT_S, session=last).text == f"{last} a | b"
        assert store.loads[last] == 1
        assert handle.send_message("b", timeout=WAIT_S, session=first).text == f"{first} a | b"
        assert store.loads[first] == 2
    finally:
        orchestrator.shutdown(timeout=5.0)


# --- history() and clear_history() -------------------------------------------------------------


def test_history_and_clear_history_of_the_own_conversation_and_of_named_sessions(
    orch: ao.AgentOrchestrator, recorder: Recorder
) -> None:
    orch.add_agent("chat", recorder.options())
    handle = orch.spawn("chat")
    handle.send_message("own", timeout=WAIT_S)
    handle.send_message("one", timeout=WAIT_S, session="s1")
    handle.send_message("two", timeout=WAIT_S, session="s2")
    assert [text(m) for m in handle.history()] == ["own", "own"]
    assert [text(m) for m in handle.history("s1")] == ["one", "one"]
    assert [text(m) for m in handle.history(session="s2")] == ["two", "two"]
    assert handle.history("never-used") == []

    history = handle.history("s1")
    history.clear()  # a copy: changing it changes nothing
    assert len(handle.history("s1")) == 2

    handle.clear_history("s1", timeout=WAIT_S)
    assert handle.history("s1") == []
    assert len(handle.history("s2")) == 2
    assert len(handle.history()) == 2
    assert handle.send_message("again", timeout=WAIT_S, session="s1").text == "again"

    handle.clear_history(timeout=WAIT_S)
    assert handle.history() == []
    assert handle.send_message("fresh", timeout=WAIT_S).text == "fresh"
    assert recorder.last_user_texts == ["fresh"]
    assert len(handle.history("s2")) == 2


def test_clear_history_takes_effect_after_the_requests_queued_before_it(
    orch: ao.AgentOrchestrator, recorder: Recorder
) -> None:
    orch.add_agent("chat", recorder.options())
    handle = orch.spawn("chat")
    blocked = handle.send_message_async("block")
    assert recorder.started.wait(WAIT_S)
    queued = [
        handle.send_message_async("own 1"),
        handle.send_message_async("named 1", session="s"),
    ]
    clearing = concurrent.futures.ThreadPoolExecutor(2)
    try:
        own = clearing.submit(handle.clear_history, timeout=WAIT_S)
        named = clearing.submit(handle.clear_history, "s", timeout=WAIT_S)
        recorder.release.set()
        own.result(timeout=WAIT_S)
        named.result(timeout=WAIT_S)
    finally:
        clearing.shutdown(wait=False)
    assert blocked.result(timeout=WAIT_S).text == "block"
    assert [f.result(timeout=WAIT_S).text for f in queued] == ["block | own 1", "named 1"]
    assert handle.history() == []
    assert handle.history("s") == []


def test_history_includes_a_request_as_soon_as_its_answer_is_received(
    orch: ao.AgentOrchestrator,
) -> None:
    orch.add_agent("chat", lambda: ao.AgentOptions(ao.EchoModel()))
    handle = orch.spawn("chat")
    for i in range(20):
        session = None if i % 2 else "s"
        handle.send_message_async(f"m{i}", session=session).result(timeout=WAIT_S)
        assert text(handle.history(session)[-1]) == f"m{i}"


def test_a_named_session_can_be_cleared_after_the_agent_has_ended(
    orch: ao.AgentOrchestrator,
) -> None:
    orch.add_agent("chat", lambda: ao.AgentOptions(ao.EchoModel()))
    handle = orch.spawn("chat")
    handle.send_message("remember me", timeout=WAIT_S, session="s")
    handle.await_result(timeout=WAIT_S)
    assert len(handle.history("s")) == 2  # the store outlives the agent
    handle.clear_history("s", timeout=WAIT_S)
    assert handle.history("s") == []
    with pytest.raises(ao.PluginError, match="agent channel closed"):
        handle.clear_history(timeout=WAIT_S)


# --- streaming ---------------------------------------------------------------------------------


def pieces_reply(request: ao.ModelRequest) -> Iterator[str]:
    return iter(["Hel", "lo", ", ", "world"])


@pytest.mark.parametrize("session", [None, "s"])
def test_a_send_that_times_out_while_the_model_runs_leaves_no_trace_in_the_conversation(
    orch: ao.AgentOrchestrator, recorder: Recorder, session: str | None
) -> None:
    orch.add_agent("chat", recorder.options())
    handle = orch.spawn("chat")
    handle.send_message("before", timeout=WAIT_S, session=session)
    with pytest.raises(ao.RequestTimeout):
        handle.send_message("block", timeout=0.2, session=session)
    assert recorder.started.wait(WAIT_S)
    recorder.release.set()  # the model answers after the caller was told it timed out
    assert handle.send_message("after", timeout=WAIT_S, session=session).text == "before | after"
    assert user_texts(handle.history(session)) == ["before", "after"]
    assert handle.restarts == 0


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (ao.EchoModel(), ["one ", "two ", "three"]),
        (ao.ScriptedModel(["one two three"]), ["one ", "two ", "three"]),
        (ao.FunctionModel(pieces_reply), ["Hel", "lo", ", ", "world"]),
    ],
    ids=["echo", "scripted", "function-iterator"],
)
def test_stream_deltas_joined_equal_the_result_text(
    orch: ao.AgentOrchestrator, model: ao.Model, expected: list[str]
) -> None:
    orch.add_agent("chat", lambda: ao.AgentOptions(model))
    handle = orch.spawn("chat")
    stream = handle.stream_message("one two three", timeout=WAIT_S, session="s")
    pieces = list(stream)
    assert pieces == expected
    result = stream.result(timeout=WAIT_S)
    assert "".join(pieces) == result.text
    assert handle.history("s")[-1] == result.messages[-1]  # the streamed reply is kept


def test_stream_goes_through_tool_rounds(orch: ao.AgentOrchestrator) -> None:
    with_text = ao.AssistantMessage(
        [ao.TextContent("Adding. "), ao.ToolCall("c2", "add", {"a": 2})], ao.StopReason.TOOL_USE
    )
    model = ao.ScriptedModel([tool_turn("c1", 1), "It is 1.", with_text, "It is 2."])
    orch.add_agent("calc", lambda: ao.AgentOptions(model, tools=[add]))
    handle = orch.spawn("calc")

    stream = handle.stream_message("add 1", timeout=WAIT_S)
    pieces = list(stream)
    result = stream.result(timeout=WAIT_S)
    assert "".join(pieces) == result.text == "It is 1."
    assert [type(m).__name__ for m in result.messages] == [
        "UserMessage",
        "AssistantMessage",
        "ToolResultMessage",
        "AssistantMessage",
    ]

    stream = handle.stream_message("add 2", timeout=WAIT_S)
    assert "".join(stream) == "Adding. It is 2."  # every assistant message's text, in order
    assert stream.result(timeout=WAIT_S).text == "It is 2."


def test_a_stream_error_is_raised_from_iteration_and_from_result(
    orch: ao.AgentOrchestrator,
) -> None:
    model = ao.ScriptedModel([ao.NetworkError("connection reset"), "recovered"])
    orch.add_agent("chat", lambda: ao.AgentOptions(model, retry=NO_RETRY))
    handle = orch.spawn("chat")
    stream = handle.stream_message("hi", timeout=WAIT_S)
    with pytest.raises(ao.NetworkError):
        list(stream)
    with pytest.raises(ao.NetworkError):
        stream.result(timeout=WAIT_S)
    assert handle.restarts == 1  # supervised like any failed request
    assert list(handle.stream_message("again", timeout=WAIT_S)) == ["recovered"]


def test_a_model_that_fails_mid_stream_raises_after_the_delivered_deltas(
    orch: ao.AgentOrchestrator,
) -> None:
    def breaks(request: ao.ModelRequest) -> Iterator[str]:
        yield "partial "
        raise RuntimeError("socket closed")

    orch.add_agent("chat", lambda: ao.AgentOptions(ao.FunctionModel(breaks)))
    handle = orch.spawn("chat")
    stream = handle.stream_message("hi", timeout=WAIT_S)
    pieces: list[str] = []
    with pytest.raises(ao.StreamError):
        pieces.extend(stream)  # keeps what came before the error
    assert pieces == ["partial "]
    with pytest.raises(ao.StreamError):
        stream.result(timeout=WAIT_S)
    assert handle.history() == []  # a failed request leaves no trace


def test_cancelling_a_queued_stream_withdraws_it(
    orch: ao.AgentOrchestrator, recorder: Recorder
) -> None:
    orch.add_agent("chat", recorder.options())
    handle = orch.spawn("chat")
    blocked = handle.send_message_async("block")
    assert recorder.started.wait(WAIT_S)
    stream = handle.stream_message("never sent", timeout=WAIT_S)
    stream.cancel()
    with pytest.raises(ao.Aborted):
        stream.result(timeout=WAIT_S)
    with pytest.raises(ao.Aborted):
        list(stream)
    recorder.release.set()
    assert blocked.result(timeout=WAIT_S).text == "block"
    assert handle.send_message("after", timeout=WAIT_S).text == "block | after"
    assert all("never sent" not in texts for texts in recorder.seen)


def test_cancelling_a_running_stream_answers_aborted_and_the_agent_keeps_serving(
    orch: ao.AgentOrchestrator, recorder: Recorder
) -> None:
    events: list[ao.Event] = []
    orch.subscribe(events.append)
    orch.add_agent("chat", recorder.options())
    handle = orch.spawn("chat")
    handle.send_message("before", timeout=WAIT_S)
    stream = handle.stream_message("block", timeout=WAIT_S)
    assert recorder.started.wait(WAIT_S)
    stream.cancel()
    with pytest.raises(ao.Aborted):
        stream.result(timeout=WAIT_S)
    recorder.release.set()  # the model returns its reply now; it is discarded
    with pytest.raises(ao.Aborted):
        list(stream)
    with pytest.raises(ao.Aborted):
        stream.result(timeout=WAIT_S)  # answered once: still the same answer

    assert handle.send_message("after", timeout=WAIT_S).text == "before | after"
    assert handle.status() is ao.AgentStatus.RUNNING
    assert handle.restarts == 0
    assert not [e for e in events if isinstance(e, ao.AgentFailed | ao.AgentStopped)]
    assert user_texts(handle.history()) == ["before", "after"]


def test_a_stream_that_outlives_its_timeout_raises_request_timeout(
    orch: ao.AgentOrchestrator, recorder: Recorder
) -> None:
    orch.add_agent("chat", recorder.options())
    handle = orch.spawn("chat")
    stream = handle.stream_message("block", timeout=0.2)
    with pytest.raises(ao.RequestTimeout):
        list(stream)
    assert recorder.started.wait(WAIT_S)
    recorder.release.set()
    assert handle.send_message("after", timeout=WAIT_S).text == "after"
    assert handle.status() is ao.AgentStatus.RUNNING
    assert handle.restarts == 0


def test_stream_requests_count_against_the_bounded_mailbox(recorder: Recorder) -> None:
    with ao.AgentOrchestrator(channel_buffer=1) as orch:
        orch.add_agent("chat", recorder.options())
        handle = orch.spawn("chat")
        blocked = handle.stream_message("block", timeout=WAIT_S)
        assert recorder.started.wait(WAIT_S)  # taken: the mailbox is empty again
        queued = handle.stream_message("queued", timeout=WAIT_S)  # fills the mailbox
        with pytest.raises(ao.RequestTimeout, match="mailbox"):
            handle.stream_message("no room", timeout=0)
        with pytest.raises(ao.RequestTimeout, match="mailbox"):
            handle.send_message_async("no room either", timeout=0)
        recorder.release.set()
        assert "".join(blocked) == "block"
        assert "".join(queued) == "block | queued"


# --- typed output ------------------------------------------------------------------------------


class CityStruct(msgspec.Struct):
    name: str
    population: int


@dataclasses.dataclass
class CityDataclass:
    name: str
    population: int


class CityDict(TypedDict):
    name: str
    population: int


CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
}
OSLO = '{"name": "Oslo", "population": 700000}'


@pytest.mark.parametrize(
    ("output_type", "expected"),
    [
        (CityStruct, CityStruct("Oslo", 700000)),
        (CityDataclass, CityDataclass("Oslo", 700000)),
        (CityDict, {"name": "Oslo", "population": 700000}),
        (CITY_SCHEMA, {"name": "Oslo", "population": 700000}),
    ],
    ids=["struct", "dataclass", "typeddict", "json-schema"],
)
def test_typed_output_of_each_kind(
    orch: ao.AgentOrchestrator, output_type: Any, expected: Any
) -> None:
    schemas: list[object] = []

    def reply(request: ao.ModelRequest) -> str:
        schemas.append(request.output_schema)
        return f"```json\n{OSLO}\n```"

    orch.add_agent("geo", lambda: ao.AgentOptions(ao.FunctionModel(reply)))
    handle = orch.spawn("geo")
    assert handle.send_message("Oslo?", timeout=WAIT_S, output_type=output_type).output == expected
    future = handle.send_message_async("Oslo?", session="s", output_type=output_type)
    assert future.result(timeout=WAIT_S).output == expected
    stream = handle.stream_message("Oslo?", timeout=WAIT_S, output_type=output_type)
    assert "".join(stream) == f"```json\n{OSLO}\n```"
    assert stream.result(timeout=WAIT_S).output == expected
    agent = ao.Agent(ao.AgentOptions(ao.FunctionModel(reply)))
    assert agent.prompt("Oslo?", output_type=output_type).output == expected
    assert all(isinstance(schema, dict) for schema in schemas)  # the model was told the shape


def test_an_invalid_typed_reply_is_repaired_by_a_re_prompt(orch: ao.AgentOrchestrator) -> None:
    model = ao.ScriptedModel(['{"name": "Oslo"}', OSLO])
    orch.add_agent("geo", lambda: ao.AgentOptions(model))
    result = orch.spawn("geo").send_message("Oslo?", timeout=WAIT_S, output_type=CityStruct)
    assert result.output == CityStruct("Oslo", 700000)
    assert len(model.requests) == 2
    repair = text(model.requests[1].messages[-1])
    assert "population" in repair  # the model is told what was wrong


def test_structured_output_failed_after_three_attempts_neither_stops_the_agent_nor_changes_history(
    orch: ao.AgentOrchestrator,
) -> None:
    events: list[ao.Event] = []
    orch.subscribe(events.append)
    model = ao.ScriptedModel(["fine", "kept", "no", "still no", "never", "plain again"])
    orch.add_agent("geo", lambda: ao.AgentOptions(model))
    handle = orch.spawn("geo")
    handle.send_message("first", timeout=WAIT_S)
    handle.send_message("first", timeout=WAIT_S, session="s")
    own_before, named_before = handle.history(), handle.history("s")

    session = "s"
    with pytest.raises(ao.StructuredOutputFailed) as failure:
        handle.send_message("Oslo?", timeout=WAIT_S, session=session, output_type=CityStruct)
    assert failure.value.attempts == 3
    assert len(model.requests) == 5

    assert handle.status() is ao.AgentStatus.RUNNING  # DefaultSupervisor would stop on it
    assert handle.restarts == 0
    assert not [e for e in events if isinstance(e, ao.AgentFailed)]
    assert handle.history() == own_before
    assert handle.history("s") == named_before
    assert handle.send_message("go on", timeout=WAIT_S, session="s").text == "plain again"
    assert user_texts(model.requests[-1].messages) == ["first", "go on"]


# --- validation at the call --------------------------------------------------------------------


def send_calls(handle: ao.OrchestratedHandle) -> list[Callable[..., object]]:
    return [
        lambda **kw: handle.send_message("hi", timeout=WAIT_S, **kw),
        lambda **kw: handle.send_message_async("hi", **kw),
        lambda **kw: handle.stream_message("hi", timeout=WAIT_S, **kw),
        lambda **kw: handle.send_messages([ao.user_message("hi")], timeout=WAIT_S, **kw),
    ]


@pytest.mark.parametrize(
    "output_type",
    [lambda: None, object(), {"type": 12}],
    ids=["lambda", "object", "invalid-schema"],
)
def test_an_unsupported_output_type_is_refused_at_the_call_and_nothing_is_queued(
    orch: ao.AgentOrchestrator, recorder: Recorder, output_type: object
) -> None:
    orch.add_agent("chat", recorder.options())
    handle = orch.spawn("chat")
    for call in send_calls(handle):
        with pytest.raises((TypeError, ValueError)):
            call(output_type=output_type)
    with pytest.raises((TypeError, ValueError)):
        ao.Agent(ao.AgentOptions(ao.EchoModel())).prompt("hi", output_type=output_type)
    assert handle.send_message("only this", timeout=WAIT_S).text == "only this"
    assert recorder.seen == [["only this"]]


@pytest.mark.parametrize(
    ("session", "error"),
    [(123, TypeError), (b"user", TypeError), ("", ValueError)],
    ids=["int", "bytes", "empty"],
)
def test_a_bad_session_is_refused_at_the_call_naming_it(
    orch: ao.AgentOrchestrator, recorder: Recorder, session: object, error: type[Exception]
) -> None:
    orch.add_agent("chat", recorder.options())
    handle = orch.spawn("chat")
    calls = [
        *send_calls(handle),
        handle.history,
        handle.clear_history,
    ]
    for call in calls:
        with pytest.raises(error, match="session"):
            call(session=session)
    assert handle.send_message("only this", timeout=WAIT_S).text == "only this"
    assert recorder.seen == [["only this"]]
