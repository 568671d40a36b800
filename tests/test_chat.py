"""`actor-orch chat`: a conversation with one agent, driven through a pipe and through tmux.

The model server is a `ThreadingHTTPServer` the test starts on 127.0.0.1, port 0. It streams
its replies as server-sent events, one word per event; a prompt starting with `slow` gets a
reply that streams a word every 50 ms for far longer than any test waits (so only an abort
ends it), and a prompt starting with `fail` gets HTTP 401.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON_M = [sys.executable, "-m", "actor_orch"]
RUN_TIMEOUT_S = 30.0  # bound on any one chat process
WAIT_S = 10.0  # bound on waiting for one thing to appear
SLOW_CHUNKS = 600  # x 50 ms: a slow reply would take 30 s if nothing aborted it


# --- a loopback server that streams --------------------------------------------------------------


class StreamingServer:
    """Chat completions over SSE; records how each slow reply ended."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.slow_ended: list[str] = []  # "client gone" or "finished", one per slow reply
        self.ended = threading.Condition()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
                if prompt.startswith("fail"):
                    self.send_error(401, "bad key")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                if prompt.startswith("slow"):
                    state.stream_slowly(self.wfile)
                    return
                words = f"you said: {prompt}".split(" ")
                for index, word in enumerate(words):
                    self.event({"content": word if index == len(words) - 1 else word + " "})
                self.wfile.write(b"data: [DONE]\n\n")

            def event(self, delta: dict[str, Any]) -> None:
                chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stream_slowly(self, wfile: IO[bytes]) -> None:
        how = "finished"
        try:
            for index in range(SLOW_CHUNKS):
                chunk = {"choices": [{"index": 0, "delta": {"content": f"tick{index} "}}]}
                wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                wfile.flush()
                if self.stop.wait(0.05):  # the pace of a slow model, not a synchronisation
                    break
            wfile.write(b"data: [DONE]\n\n")
            wfile.flush()
        except OSError:
            how = "client gone"
        with self.ended:
            self.slow_ended.append(how)
            self.ended.notify_all()

    def wait_slow_ended(self, count: int) -> list[str]:
        with self.ended:
            assert self.ended.wait_for(lambda: len(self.slow_ended) >= count, WAIT_S)
            return list(self.slow_ended)

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[StreamingServer]:
    started = StreamingServer()
    yield started
    started.close()


@pytest.fixture
def workflow(tmp_path: Path, server: StreamingServer) -> Path:
    path = tmp_path / "chat.toml"
    path.write_text(
        textwrap.dedent(f"""
            [agents.talker]
            model = "openai"
            base_url = "{server.base_url}"
            model_name = "streamer"

            [agents.lead]
            model = "demo"
            delegates = true

            [agents.helper]
            parent = "lead"
            model = "echo"

            [[steps]]
            task_id = "t"
            agent = "talker"
            description = "unused by chat"
            prompt = "p"
            """)
    )
    return path


def chat(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYTHON_M, "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=ROOT,
        check=False,
    )


# --- through a pipe ------------------------------------------------------------------------------


def test_piped_chat_prints_replies_history_and_reset(workflow: Path) -> None:
    result = chat(
        str(workflow), "talker", stdin="hello there\n/history\n\n/reset\n/history\nagain\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # No prompt and no banner when stdin is not a terminal: only replies and command output.
    assert result.stdout.splitlines() == [
        "you said: hello there",
        "user: hello there",
        "assistant: you said: hello there",
        "(history cleared)",
        "(no messages)",
        "you said: again",
    ]


def test_a_failed_request_prints_an_error_and_the_chat_goes_on(workflow: Path) -> None:
    # 401 is an AuthError: the supervisor stops the agent; the chat spawns it again.
    result = chat(str(workflow), "talker", stdin="hello\nfail now\n/bogus\nstill here\n/history")
    assert result.returncode == 0, result.stderr
    errors = result.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("error: ")
    assert "401" in errors[0]
    assert errors[1] == "error: unknown command /bogus; /help lists the commands"
    # The named session outlives the stopped agent: the failed request left no trace in it.
    assert result.stdout.splitlines() == [
        "you said: hello",
        "you said: still here",
        "user: hello",
        "assistant: you said: hello",
        "user: still here",
        "assistant: you said: still here",
    ]


def test_sessions_db_continues_a_conversation_in_a_later_chat(
    workflow: Path, tmp_path: Path
) -> None:
    database = str(tmp_path / "sessions.sqlite")
    first = chat(str(workflow), "talker", "--sessions-db", database, stdin="remember me\n")
    assert first.returncode == 0, first.stderr
    args = [str(workflow), "talker", "--sessions-db", database]
    later = chat(*args, stdin="/history\n")
    other = chat(*args, "--session", "other", stdin="/history\n")
    assert later.stdout.splitlines() == ["user: remember me", "assistant: you said: remember me"]
    assert other.stdout.splitlines() == ["(no messages)"]


def test_chat_with_a_delegating_agent_shows_the_tool_call_in_the_history(workflow: Path) -> None:
    result = chat(str(workflow), "lead", stdin="check this\n/history\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["1 of 1 delegated tasks succeeded:", "- helper: check this"]
    assert lines[2] == "user: check this"
    assert lines[3].startswith('assistant: [call delegate {"tasks":[{"agent":"helper"')
    assert lines[4].startswith('tool: [{"task_id":')
    assert lines[5] == "assistant: 1 of 1 delegated tasks succeeded:\\n- helper: check this"


def test_an_unknown_agent_is_one_error_line_and_exit_2(workflow: Path) -> None:
    result = chat(str(workflow), "nobody", stdin="")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: agent 'nobody' is not defined in {workflow} (its agents: talker, lead, helper)"
    ]


class Output:
    """Everything a pipe has delivered so far, read on a thread of its own."""

    def __init__(self, stream: IO[str]) -> None:
        self.text = ""
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        while piece := stream.read(1):
            with self._changed:
                self.text += piece
                self._changed.notify_all()

    def wait_for(self, text: str, start: int = 0) -> int:
        """Wait until `text` appears after offset `start`; the offset just past it."""
        with self._changed:
            found = self._changed.wait_for(lambda: text in self.text[start:], WAIT_S)
            assert found, f"{text!r} not seen within {WAIT_S}s; got {self.text[start:]!r}"
            return self.text.index(text, start) + len(text)


def test_ctrl_c_aborts_a_streaming_reply_and_the_chat_goes_on(
    workflow: Path, server: StreamingServer
) -> None:
    process = subprocess.Popen(
        [*PYTHON_M, "chat", str(workflow), "talker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    out, err = Output(process.stdout), Output(process.stderr)
    try:
        process.stdin.write("hello\nslow please\n")
        process.stdin.flush()
        at = out.wait_for("you said: hello\n")
        # Words arrive while the reply is still being produced (it would take 30 s).
        at = out.wait_for("tick2 ", at)
        process.send_signal(signal.SIGINT)
        err.wait_for("[aborted]\n")
        # The abort reached the model call: the agent hung up on the server.
        assert server.wait_slow_ended(1) == ["client gone"]
        process.stdin.write("after\n/history\n")
        process.stdin.close()
        assert process.wait(RUN_TIMEOUT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = out.text[at:].splitlines()
    assert lines[0].startswith("tick3") or lines[0] == ""  # the rest of the aborted line
    # The aborted request left no trace in the conversation.
    assert lines[1:] == [
        "you said: after",
        "user: hello",
        "assistant: you said: hello",
        "user: after",
        "assistant: you said: after",
    ]
    assert err.text == "[aborted]\n"


# --- in a real terminal --------------------------------------------------------------------------


class Tmux:
    """A tmux server of our own (its own socket) running one command in a detached session."""

    def __init__(self, command: list[str]) -> None:
        self.socket = f"actor-orch-test-{uuid.uuid4().hex[:12]}"
        environment = f"PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', ''))}"
        # `trap :` keeps the shell alive through the test's Ctrl-C (the command gets the
        # default handler back), so the shell can print the command's exit status.
        shell = f'trap : INT; {environment} {shlex.join(command)}; echo "[exit $?]"'
        self.tmux(
            "new-session", "-d", "-s", "chat", "-x", "160", "-y", "50", "-c", str(ROOT),
            "sh", "-c", shell, ";", "set-option", "-t", "chat", "remain-on-exit", "on",
        )  # fmt: skip
        self.socket_path = self.tmux("display", "-p", "#{socket_path}").strip()

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=True,
        )
        return result.stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "chat", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "chat", "-S", "-")

    def wait_until(self, condition: Callable[[str], object], what: str) -> str:
        """Poll the screen until `condition(screen)` holds; the screen then."""
        deadline = time.monotonic() + WAIT_S
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not seen within {WAIT_S}s; screen:\n{screen}")
            time.sleep(0.02)  # polling interval of capture-pane, not a synchronisation

    def wait_for_lines(self, *expected: str) -> str:
        """Wait until the screen's last non-empty lines are `expected`."""

        def ends_with(screen: str) -> bool:
            lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
            return lines[-len(expected) :] == list(expected)

        return self.wait_until(ends_with, f"lines {expected!r}")

    def exit_status(self) -> int:
        """Wait for the command to end; its exit status (as the shell around it printed it:
        tmux 3.3 may mark a pane dead before it knows the status)."""
        screen = self.wait_until(lambda s: re.search(r"^\[exit \d+\]$", s, re.M), "the end")
        return int(re.findall(r"^\[exit (\d+)\]$", screen, re.M)[-1])

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)
        if self.socket_path:  # tmux leaves the socket file behind
            Path(self.socket_path).unlink(missing_ok=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_chat_in_a_terminal_streams_aborts_and_exits_on_ctrl_d(
    workflow: Path, server: StreamingServer
) -> None:
    terminal = Tmux([*PYTHON_M, "chat", str(workflow), "talker"])
    try:
        terminal.wait_for_lines(
            "chatting with 'talker' in session 'chat'; /help lists the commands", "you>"
        )
        terminal.keys("hello", "Enter")
        terminal.wait_for_lines("you> hello", "talker> you said: hello", "you>")
        # A reply that is still streaming shows its words as they come; Ctrl-C aborts it.
        terminal.keys("slow down", "Enter")
        terminal.wait_until(lambda screen: "talker> tick0 tick1 tick2" in screen, "streaming")
        terminal.keys("C-c")
        screen = terminal.wait_until(lambda s: s.rstrip().endswith("[aborted]\nyou>"), "abort")
        assert screen.rstrip().splitlines()[-3].startswith("talker> tick0 tick1 tick2")
        assert server.wait_slow_ended(1) == ["client gone"]
        # Ctrl-C at the prompt drops the line typed so far.
        terminal.keys("half a line")
        terminal.wait_for_lines("you> half a line")
        terminal.keys("C-c")
        # Typed before the new prompt, keys would race the signal (as they would for a person).
        terminal.wait_for_lines("you> half a line", "you>")
        terminal.keys("whole", "Enter")
        terminal.wait_for_lines("you> whole", "talker> you said: whole", "you>")
        terminal.keys("/history", "Enter")
        terminal.wait_for_lines(
            "you> /history",
            "user: hello",
            "assistant: you said: hello",
            "user: whole",
            "assistant: you said: whole",
            "you>",
        )
        terminal.keys("/reset", "Enter")
        terminal.wait_for_lines("you> /reset", "(history cleared)", "you>")
        terminal.keys("/history", "Enter")
        terminal.wait_for_lines("you> /history", "(no messages)", "you>")
        terminal.keys("C-d")
        assert terminal.exit_status() == 0
    finally:
        terminal.close()


def test_help_lists_the_chat_command_and_its_options() -> None:
    top = subprocess.run([*PYTHON_M, "--help"], capture_output=True, text=True, check=False)
    assert re.search(r"^\s+chat\s+chat with one agent", top.stdout, re.M)
    own = subprocess.run([*PYTHON_M, "chat", "--help"], capture_output=True, text=True, check=False)
    for option in ("--session", "--sessions-db", "--model", "--base-url", "--timeout", "-v"):
        assert option in own.stdout
