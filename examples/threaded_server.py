"""An HTTP front for agents: the stdlib `ThreadingHTTPServer` embedding one orchestrator.

    python examples/threaded_server.py --port 8000
    curl -s -X POST localhost:8000/agents/echo -d '{"text": "hi"}'     # {"text":"hi"}
    curl -s -X POST localhost:8000/agents/shout -d '{"text": "hi"}'    # {"text":"HI"}

`POST /agents/<name>` with a JSON body `{"text": ...}` answers `{"text": reply}`; an unknown
agent is 404, a body that is not that JSON is 400, a failed agent is 502. Every request thread
shares the agent's handle: requests to one agent queue in its bounded mailbox and are served one
at a time, in order, while different agents run in parallel. SIGTERM or Ctrl-C stops the server
and then the orchestrator, which answers whatever is still queued.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

import msgspec

from actor_orch import (
    AgentError,
    AgentOptions,
    AgentOrchestrator,
    DefaultSupervisor,
    EchoModel,
    FunctionModel,
    ModelRequest,
    OrchestratedHandle,
)

MAX_BODY_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 30.0  # per agent call; a stuck agent costs a 502, not a hung client


class Ask(msgspec.Struct, forbid_unknown_fields=True):
    """The request body."""

    text: str


class Reply(msgspec.Struct):
    """The response body."""

    text: str


class Problem(msgspec.Struct):
    """The body of every error response."""

    error: str


def shout(request: ModelRequest) -> str:
    """A tiny offline model: the last message, upper-cased."""
    return EchoModel().complete(request).text.upper()


class Server(ThreadingHTTPServer):
    """One orchestrator and one running handle per agent, shared by all request threads."""

    # The stdlib default backlog of 5 drops connections under a burst of concurrent clients.
    request_queue_size = 128
    daemon_threads = True

    def __init__(self, port: int, orchestrator: AgentOrchestrator) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.orchestrator = orchestrator
        self.agents: dict[str, OrchestratedHandle] = {
            name: orchestrator.spawn(name) for name in orchestrator.names()
        }


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive, so a client may reuse its connection

    def do_POST(self) -> None:
        prefix = "/agents/"
        name = self.path[len(prefix) :] if self.path.startswith(prefix) else ""
        handle = self.server.agents.get(name)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the body was not read, so the connection is spent
            self.send(
                HTTPStatus.BAD_REQUEST, Problem(f"need a Content-Length up to {MAX_BODY_BYTES}")
            )
            return
        body = self.rfile.read(length)  # read even when refusing, to keep the connection usable
        if handle is None:
            self.send(HTTPStatus.NOT_FOUND, Problem(f"no agent named {name!r}"))
            return
        try:
            ask = msgspec.json.decode(body, type=Ask)
        except msgspec.DecodeError as err:  # ValidationError included: its message has the path
            self.send(HTTPStatus.BAD_REQUEST, Problem(f"bad request body: {err}"))
            return
        try:
            result = handle.send_message(ask.text, timeout=REQUEST_TIMEOUT_S)
        except AgentError as err:
            self.send(HTTPStatus.BAD_GATEWAY, Problem(f"agent {name!r} failed: {err}"))
            return
        self.send(HTTPStatus.OK, Reply(result.text))

    def send(self, status: HTTPStatus, payload: Reply | Problem) -> None:
        data = msgspec.json.encode(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one stderr line per request would drown everything else


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve agents over HTTP on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0 = pick one)")
    args = parser.parse_args()

    orchestrator = AgentOrchestrator(supervisor=DefaultSupervisor())
    orchestrator.add_agent("echo", lambda: AgentOptions(EchoModel()))
    orchestrator.add_agent("shout", lambda: AgentOptions(FunctionModel(shout)))
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
        server.shutdown()  # no new requests; those being served finish on their threads
        server.server_close()
    finally:
        orchestrator.shutdown(timeout=5.0)
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
