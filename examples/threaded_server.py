"""An HTTP front for agents: the stdlib `ThreadingHTTPServer` embedding one orchestrator.

    python examples/threaded_server.py --port 8000
    curl -s -X POST localhost:8000/agents/echo -d '{"text": "hi"}'            # {"text":"hi"}
    curl -s -X POST localhost:8000/agents/memo -H 'X-Session: ada' -d '{"text": "I am Ada"}'
    curl -sN -X POST localhost:8000/agents/echo/stream -d '{"text": "one two three"}'

Endpoints (`<name>` is `echo`, `shout` or `memo`; `memo` replies with everything its client
said in the session, which shows that clients never see each other's conversation):

    POST   /agents/<name>          {"text": ...}  ->  {"text": reply}
    POST   /agents/<name>/stream   {"text": ...}  ->  the reply as chunked text/plain, one
                                                      chunk per delta, as the model produces it
    GET    /agents/<name>/history  ->  [{"role": ..., "text": ...}, ...] of the client's session
    DELETE /agents/<name>/history  ->  204: the client's session is forgotten

One session per client: the `X-Session` request header, else the `session` cookie; a client
with neither gets a new id, sent back in `X-Session` and `Set-Cookie`. Every response carries
the session it used. Errors are JSON `{"error": ...}`: 400 bad body or session, 404 unknown
agent or path, 502 the agent failed, 503 shutting down, 504 the agent took too long. A stream
that fails after its first chunk is cut off (no final chunk), so a client never mistakes it for
a whole reply.

Every request thread shares one handle per agent: requests queue in its bounded mailbox and
are served one at a time, in order, while different agents run in parallel. Sessions live in the
orchestrator's session store (memory here, at most `HISTORY_LIMIT` messages each; pass
`sessions=SqliteSessionStore(path)` to keep them across restarts). SIGTERM or Ctrl-C stops the
server: no new connections, requests still queued are answered, then the process exits.

Keep-alive: headers and body of a response leave in one write (a buffered `wfile`, flushed once
per response or once per stream chunk) and Nagle's algorithm is off. Headers and body written
separately make a reused connection wait for the client's delayed ACK, about 40 ms a request.
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookies
import re
import secrets
import signal
import sys
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

import msgspec

from actor_orch import (
    AgentError,
    AgentMessage,
    AgentOptions,
    AgentOrchestrator,
    AssistantMessage,
    DefaultSupervisor,
    EchoModel,
    FunctionModel,
    MemorySessionStore,
    ModelRequest,
    OrchestratedHandle,
    PluginError,
    RequestTimeout,
    TextContent,
    ToolResultMessage,
    UserMessage,
)

MAX_BODY_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 30.0  # per agent call; a stuck agent costs a 504, not a hung client
IDLE_CONNECTION_S = 60.0  # a kept-alive connection with no request for this long is closed
HISTORY_LIMIT = 200  # messages one session keeps
SESSION_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Ask(msgspec.Struct, forbid_unknown_fields=True):
    """The request body."""

    text: str


class Reply(msgspec.Struct):
    """The response body."""

    text: str


class Problem(msgspec.Struct):
    """The body of every error response."""

    error: str


class Said(msgspec.Struct):
    """One message of a session, as `GET .../history` lists it."""

    role: str
    text: str


_ROLES = {UserMessage: "user", AssistantMessage: "assistant", ToolResultMessage: "tool"}


def text_of(message: AgentMessage) -> str:
    return "".join(block.text for block in message.content if isinstance(block, TextContent))


def shout(request: ModelRequest) -> str:
    """A tiny offline model: the last message, upper-cased."""
    return EchoModel().complete(request).text.upper()


def memo(request: ModelRequest) -> str:
    """A tiny offline model with a memory: everything the user said in this conversation."""
    return " | ".join(text_of(m) for m in request.messages if isinstance(m, UserMessage))


def build_orchestrator() -> AgentOrchestrator:
    orchestrator = AgentOrchestrator(
        supervisor=DefaultSupervisor(), sessions=MemorySessionStore(max_messages=HISTORY_LIMIT)
    )
    orchestrator.add_agent("echo", lambda: AgentOptions(EchoModel()))
    orchestrator.add_agent("shout", lambda: AgentOptions(FunctionModel(shout)))
    orchestrator.add_agent(
        "memo", lambda: AgentOptions(FunctionModel(memo), history_limit=HISTORY_LIMIT)
    )
    return orchestrator


class Server(ThreadingHTTPServer):
    """One orchestrator and one running handle per agent, shared by all request threads."""

    # The stdlib default backlog of 5 drops connections under a burst of concurrent clients.
    request_queue_size = 128
    daemon_threads = True  # an idle kept-alive connection never holds up the exit

    def __init__(self, port: int, orchestrator: AgentOrchestrator) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.orchestrator = orchestrator
        self.agents: dict[str, OrchestratedHandle] = {
            name: orchestrator.spawn(name) for name in orchestrator.names()
        }
        self.stopping = False
        self._busy = 0  # requests being answered right now
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Count a request being answered, so `wait_idle` can let it finish."""
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until no request is being answered."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive, so a client may reuse its connection
    wbufsize = -1  # buffered: headers and body leave together when the response is flushed
    disable_nagle_algorithm = True  # a flushed stream chunk leaves at once
    timeout = IDLE_CONNECTION_S

    session = ""
    new_session = False

    # -- routing -------------------------------------------------------------------------

    def do_POST(self) -> None:
        self.session, self.new_session = "", False  # one handler serves a whole connection
        with self.server.answering():
            body = self.read_body()
            if body is None:
                return
            name, action = self.route()
            if action not in ("", "stream"):
                self.send_json(HTTPStatus.NOT_FOUND, Problem(f"no such path {self.path!r}"))
                return
            handle = self.agent(name)
            if handle is None or not self.pick_session():
                return
            try:
                ask = msgspec.json.decode(body, type=Ask)
            except msgspec.DecodeError as err:  # ValidationError included: it names the path
                self.send_json(HTTPStatus.BAD_REQUEST, Problem(f"bad request body: {err}"))
                return
            if action == "stream":
                self.stream_reply(handle, ask.text)
            else:
                self.reply(handle, ask.text)

    def do_GET(self) -> None:
        self.session, self.new_session = "", False
        with self.server.answering():
            self.history(clear=False)

    def do_DELETE(self) -> None:
        self.session, self.new_session = "", False
        with self.server.answering():
            self.history(clear=True)

    def route(self) -> tuple[str, str]:
        """`(agent name, action)` of `/agents/<name>[/<action>]`; `("", "")` otherwise."""
        match = re.fullmatch(r"/agents/([^/?]+)(?:/([a-z]+))?", self.path)
        return ("", "") if match is None else (match.group(1), match.group(2) or "")

    def agent(self, name: str) -> OrchestratedHandle | None:
        handle = self.server.agents.get(name)
        if self.server.stopping:
            self.close_connection = True
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, Problem("shutting down"))
            return None
        if handle is None:
            self.send_json(HTTPStatus.NOT_FOUND, Problem(f"no agent named {name!r}"))
        return handle

    # -- the endpoints -------------------------------------------------------------------

    def reply(self, handle: OrchestratedHandle, text: str) -> None:
        try:
            result = handle.send_message(text, timeout=REQUEST_TIMEOUT_S, session=self.session)
        except AgentError as err:
            self.send_agent_error(handle.name, err)
            return
        self.send_json(HTTPStatus.OK, Reply(result.text))

    def stream_reply(self, handle: OrchestratedHandle, text: str) -> None:
        try:
            stream = handle.stream_message(text, timeout=REQUEST_TIMEOUT_S, session=self.session)
            pieces = iter(stream)
            first = next(pieces, None)  # an error before any text still gets a status
        except AgentError as err:
            self.send_agent_error(handle.name, err)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_session_headers()
        self.end_headers()
        try:
            if first is not None:
                self.write_chunk(first)  # flushed with the headers, in one write
            for piece in pieces:
                self.write_chunk(piece)
        except AgentError as err:
            self.log_error("stream of agent %r failed: %s", handle.name, err)
            self.close_connection = True  # no final chunk: the client sees the reply cut off
            return
        except OSError:  # the client went away: stop the agent working for nobody
            stream.cancel()
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    def write_chunk(self, text: str) -> None:
        data = text.encode()
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def history(self, *, clear: bool) -> None:
        name, action = self.route()
        if action != "history":
            self.send_json(HTTPStatus.NOT_FOUND, Problem(f"no such path {self.path!r}"))
            return
        handle = self.agent(name)
        if handle is None or not self.pick_session():
            return
        if not clear:
            messages = handle.history(self.session)
            said = [Said(_ROLES[type(m)], text_of(m)) for m in messages]
            self.send_json(HTTPStatus.OK, said)
            return
        try:
            handle.clear_history(self.session, timeout=REQUEST_TIMEOUT_S)
        except AgentError as err:
            self.send_agent_error(handle.name, err)
            return
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_session_headers()
        self.end_headers()

    # -- sessions ------------------------------------------------------------------------

    def pick_session(self) -> bool:
        """The client's session: `X-Session`, else the `session` cookie, else a new one."""
        session = self.headers.get("X-Session")
        if session is None:
            cookies = http.cookies.SimpleCookie()
            with contextlib.suppress(http.cookies.CookieError):
                cookies.load(self.headers.get("Cookie", ""))
            morsel = cookies.get("session")
            session = None if morsel is None else morsel.value
        self.new_session = session is None
        if session is None:
            session = secrets.token_urlsafe(12)
        if not SESSION_ID.fullmatch(session):
            self.send_json(
                HTTPStatus.BAD_REQUEST, Problem("a session id is 1-64 of A-Z a-z 0-9 _ . -")
            )
            return False
        self.session = session
        return True

    def send_session_headers(self) -> None:
        if not self.session:
            return
        self.send_header("X-Session", self.session)
        if self.new_session:
            cookie = f"session={self.session}; Path=/; HttpOnly; SameSite=Strict"
            self.send_header("Set-Cookie", cookie)

    # -- responses -----------------------------------------------------------------------

    def read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the body was not read, so the connection is spent
            self.send_json(
                HTTPStatus.BAD_REQUEST, Problem(f"need a Content-Length up to {MAX_BODY_BYTES}")
            )
            return None
        return self.rfile.read(length)  # read even when refusing, to keep the connection usable

    def send_agent_error(self, name: str, err: AgentError) -> None:
        if isinstance(err, RequestTimeout):
            self.send_json(HTTPStatus.GATEWAY_TIMEOUT, Problem(f"agent {name!r} timed out"))
        elif isinstance(err, PluginError) and self.server.stopping:
            self.close_connection = True
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, Problem("shutting down"))
        else:
            self.send_json(HTTPStatus.BAD_GATEWAY, Problem(f"agent {name!r} failed: {err}"))

    def send_json(self, status: HTTPStatus, payload: msgspec.Struct | list[Said]) -> None:
        data = msgspec.json.encode(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_session_headers()
        self.end_headers()  # into the buffered wfile: one write with the body
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one stderr line per request would drown everything else


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve agents over HTTP on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0 = pick one)")
    args = parser.parse_args()

    orchestrator = build_orchestrator()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only flag it: shutting the server down here would wait on ourselves

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = Server(args.port, orchestrator)
        serving = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
        )
        serving.start()
        print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
        while not stop.wait(1.0):  # a timed wait keeps the main thread able to run handlers
            pass
        server.stopping = True  # kept-alive connections get 503 from now on
        server.shutdown()  # no new connections
        orchestrator.shutdown(timeout=5.0)  # what is queued is answered (or Aborted at 5 s)
        server.wait_idle(timeout=2.0)  # let those answers reach their clients
        server.server_close()
    finally:
        orchestrator.shutdown(timeout=5.0)  # idempotent; covers a failed start
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
