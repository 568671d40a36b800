"""OpenAICompatibleModel against a real local HTTP server that replays scripted replies."""

from __future__ import annotations

import email.utils
import json
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from actor_orch.errors import (
    AuthError,
    ContentFiltered,
    ContextWindowOverflow,
    ModelThrottled,
    NetworkError,
    StreamError,
)
from actor_orch.models.base import ModelRequest
from actor_orch.models.openai_compat import OpenAICompatibleModel
from actor_orch.tools import ToolSpec
from actor_orch.types import (
    AssistantMessage,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    Usage,
    user_message,
)

# --- a scripted chat-completions server ---------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to stall before answering (to provoke a client read timeout)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    """Answers each POST with the next scripted `Reply` and records what it received."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.received: list[Received] = []
        self.release = threading.Event()  # set at teardown so a stalled handler ends at once
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        # A short poll interval, because shutdown() waits for the loop to notice it.
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def _next(self, received: Received) -> Reply:
        with self._lock:
            self.received.append(received)
            return self.replies.pop(0) if self.replies else Reply(500, b"nothing scripted")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers, to exercise the pool
            # Headers and body go out in two writes; with Nagle on, each reply on a kept-alive
            # connection waits ~40 ms for the client's delayed ACK.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = server._next(Received(self.path, headers, body))
                if reply.delay and server.release.wait(reply.delay):
                    return
                raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
                payload = raw.encode() if isinstance(raw, str) else raw
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout test); nothing to answer
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

        return Handler

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        yield fake


@pytest.fixture
def model(server: FakeServer) -> Iterator[OpenAICompatibleModel]:
    with OpenAICompatibleModel(server.base_url, "test-model", timeout=5.0) as m:
        yield m


def completion(
    content: str | None = "hello",
    *,
    finish_reason: str | None = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def ask(text: str = "hi") -> ModelRequest:
    return ModelRequest([user_message(text)])


# --- happy paths and request shape ------------------------------------------------------------


def test_text_reply_with_usage(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(
        Reply(body=completion("Hi there", usage={"prompt_tokens": 12, "completion_tokens": 3}))
    )
    reply = model.complete(ask())
    assert reply.content == [TextContent("Hi there")]
    assert reply.stop_reason is StopReason.STOP
    assert reply.usage == Usage(input_tokens=12, output_tokens=3)
    assert server.received[0].path == "/v1/chat/completions"


def test_absent_usage_is_zero_and_empty_content_is_omitted(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    server.script(Reply(body=completion("")), Reply(body=completion(None, finish_reason=None)))
    first = model.complete(ask())
    assert first.content == []
    assert first.usage == Usage()
    second = model.complete(ask())
    assert second.content == []
    assert second.stop_reason is StopReason.STOP


def test_length_finish_reason(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(body=completion("trunc", finish_reason="length")))
    assert model.complete(ask()).stop_reason is StopReason.LENGTH


def test_request_body_shape(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(body=completion("done")))
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    spec = ToolSpec("add", "Add two integers.", {"type": "object", "properties": {}})
    request = ModelRequest(
        [
            user_message("what is 2+3?"),
            AssistantMessage([ToolCall("call_1", "add", {"a": 2, "b": 3})], StopReason.TOOL_USE),
            ToolResultMessage("call_1", [TextContent("5")]),
            AssistantMessage([TextContent("It is 5.")]),
            user_message("thanks"),
        ],
        system_prompt="You are terse.",
        tools=[spec],
        output_schema=schema,
    )
    model.complete(request)
    got = server.received[0]
    assert got.headers["content-type"] == "application/json"
    assert "authorization" not in got.headers
    body = got.json
    assert body["model"] == "test-model"
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "what is 2+3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a":2,"b":3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "thanks"},
    ]
    # Arguments travel as a JSON string that decodes back to the original object.
    assert json.loads(body["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {
        "a": 2,
        "b": 3,
    }
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two integers.",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }


def test_minimal_request_has_no_optional_keys(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    server.script(Reply(body=completion()))
    model.complete(ask("plain"))
    body = server.received[0].json
    assert body["messages"] == [{"role": "user", "content": "plain"}]
    assert "tools" not in body
    assert "response_format" not in body


def test_authorization_header_only_with_api_key(server: FakeServer) -> None:
    server.script(Reply(body=completion()))
    with OpenAICompatibleModel(server.base_url + "/", "m", api_key="sk-secret") as keyed:
        keyed.complete(ask())
    got = server.received[0]
    assert got.headers["authorization"] == "Bearer sk-secret"
    assert got.path == "/v1/chat/completions"  # trailing slash of base_url does not double up


def test_tool_call_round_trip(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(
        Reply(
            body=completion(
                None,
                finish_reason="tool_calls",
                tool_calls=[
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                    },
                    {"id": "call_10", "type": "function", "function": {"name": "now"}},
                ],
            )
        )
    )
    reply = model.complete(ask())
    assert reply.stop_reason is StopReason.TOOL_USE
    assert reply.content == [
        ToolCall("call_9", "add", {"a": 2, "b": 3}),
        ToolCall("call_10", "now"),
    ]
    assert reply.tool_calls[0].arguments == {"a": 2, "b": 3}


def test_tool_calls_without_finish_reason_mean_tool_use(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    server.script(Reply(body=completion("thinking", finish_reason=None, tool_calls=[call])))
    reply = model.complete(ask())
    assert reply.stop_reason is StopReason.TOOL_USE
    assert reply.content == [TextContent("thinking"), ToolCall("c1", "f", {})]


@pytest.mark.parametrize("raw", ["{oops", '{"q": "truncat', "[1, 2]", '"text"'])
def test_unparsable_tool_arguments_keep_their_raw_text(
    server: FakeServer, model: OpenAICompatibleModel, raw: str
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": raw}}
    server.script(
        Reply(body=completion(None, finish_reason="tool_calls", tool_calls=[call])),
        Reply(body=completion("ok")),
    )
    reply = model.complete(ask())
    assert reply.content == [ToolCall("c1", "search", {}, raw_arguments=raw)]
    # The call goes back to the server exactly as the model wrote it.
    model.complete(ModelRequest([user_message("hi"), reply]))
    sent = server.received[1].json["messages"][1]["tool_calls"][0]["function"]
    assert sent == {"name": "search", "arguments": raw}


# --- HTTP error mapping -----------------------------------------------------------------------


def test_429_with_retry_after_seconds(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "2"}))
    with pytest.raises(ModelThrottled) as info:
        model.complete(ask())
    assert info.value.retry_after == 2.0
    assert info.value.is_retryable()


def test_429_without_retry_after(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(429, {"error": {"message": "slow down"}}))
    with pytest.raises(ModelThrottled) as info:
        model.complete(ask())
    assert info.value.retry_after is None


def test_429_retry_after_http_date_and_garbage(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.script(
        Reply(429, b"", {"Retry-After": future}),
        Reply(429, b"", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        Reply(429, b"", {"Retry-After": "soon"}),
    )
    delays = []
    for _ in range(3):
        with pytest.raises(ModelThrottled) as info:
            model.complete(ask())
        delays.append(info.value.retry_after)
    assert delays[0] is not None
    assert 25.0 <= delays[0] <= 30.0
    assert delays[1] == 0.0  # a date in the past means "now", never negative
    assert delays[2] is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable_network_error(
    server: FakeServer, model: OpenAICompatibleModel, status: int
) -> None:
    server.script(Reply(status, {"error": {"message": "overloaded"}}))
    with pytest.raises(NetworkError, match=f"HTTP {status}.*overloaded") as info:
        model.complete(ask())
    assert info.value.is_retryable()


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors(server: FakeServer, model: OpenAICompatibleModel, status: int) -> None:
    server.script(Reply(status, {"error": {"message": "Incorrect API key provided"}}))
    with pytest.raises(AuthError, match="Incorrect API key provided") as info:
        model.complete(ask())
    assert not info.value.is_retryable()


def test_auth_error_without_body(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(401, b""))
    with pytest.raises(AuthError, match="HTTP 401"):
        model.complete(ask())


@pytest.mark.parametrize(
    "reply",
    [
        Reply(400, {"error": {"message": "too long", "code": "context_length_exceeded"}}),
        Reply(
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens.",
                "code": 400,
            },
        ),
        Reply(400, {"error": "the request exceeds the available context size"}),
        Reply(413, {"error": {"message": "Too many tokens in prompt"}}),
    ],
    ids=["openai-code", "vllm-message", "llamacpp-string", "413"],
)
def test_context_window_overflow(
    server: FakeServer, model: OpenAICompatibleModel, reply: Reply
) -> None:
    server.script(reply)
    with pytest.raises(ContextWindowOverflow) as info:
        model.complete(ask())
    assert info.value.model == "test-model"
    assert not info.value.is_retryable()


def test_other_400_is_stream_error(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(400, {"error": {"message": "Invalid value for 'temperature'"}}))
    with pytest.raises(StreamError, match=r"HTTP 400.*Invalid value for 'temperature'") as info:
        model.complete(ask())
    assert not info.value.is_retryable()


def test_404_with_html_body_quotes_it(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(404, b"<html>Not Found</html>"))
    with pytest.raises(StreamError, match=r"HTTP 404.*Not Found"):
        model.complete(ask())


def test_content_filter_finish(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(body=completion(None, finish_reason="content_filter")))
    with pytest.raises(ContentFiltered):
        model.complete(ask())


# --- transport failures -----------------------------------------------------------------------


def test_connection_refused_is_network_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        OpenAICompatibleModel(f"http://127.0.0.1:{port}/v1", "m", timeout=2.0) as m,
        pytest.raises(NetworkError, match=f"ConnectError from http://127.0.0.1:{port}") as info,
    ):
        m.complete(ask())
    assert info.value.is_retryable()
    assert info.value.__cause__ is not None


def test_read_timeout_is_network_error(server: FakeServer) -> None:
    server.script(Reply(body=completion(), delay=0.5))
    started = time.monotonic()
    with (
        OpenAICompatibleModel(server.base_url, "m", timeout=0.2) as m,
        pytest.raises(NetworkError, match="ReadTimeout") as info,
    ):
        m.complete(ask())
    assert time.monotonic() - started < 0.45
    assert info.value.is_retryable()


# --- malformed responses ----------------------------------------------------------------------


def test_malformed_json_body(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(body=b'{"choices": [ nope'))
    with pytest.raises(StreamError, match="not valid JSON") as info:
        model.complete(ask())
    assert "nope" in str(info.value)  # the body is quoted so the user can see what came back
    assert info.value.__cause__ is not None


def test_wrong_shape_names_the_path(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(
        Reply(body={"choices": "nope"}),
        Reply(body={"choices": [{"message": {"content": 42}}]}),
        Reply(body={"object": "list"}),
    )
    messages = []
    for index in range(3):
        with pytest.raises(StreamError, match="not a chat completion") as info:
            model.complete(ask())
        assert index == 2 or info.value.__cause__ is not None
        messages.append(str(info.value))
    assert "$.choices" in messages[0]
    assert "$.choices[0].message.content" in messages[1]
    assert "choices" in messages[2]


def test_empty_choices(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(body={"choices": []}))
    with pytest.raises(StreamError, match="no choices"):
        model.complete(ask())


# --- lifecycle --------------------------------------------------------------------------------


def test_pickle_round_trip(server: FakeServer) -> None:
    server.script(Reply(body=completion("one")), Reply(body=completion("two")))
    original = OpenAICompatibleModel(server.base_url, "m", api_key="sk-x", timeout=3.0)
    try:
        assert original.complete(ask()).text == "one"  # the pool exists now and must not pickle
        copy = pickle.loads(pickle.dumps(original))
    finally:
        original.close()
    with copy:
        assert (copy.base_url, copy.model, copy.api_key, copy.timeout) == (
            server.base_url,
            "m",
            "sk-x",
            3.0,
        )
        assert copy.complete(ask()).text == "two"
    assert server.received[1].headers["authorization"] == "Bearer sk-x"


def test_repr_hides_api_key() -> None:
    keyed = OpenAICompatibleModel("http://127.0.0.1:9/v1", "m", api_key="sk-very-secret")
    text = repr(keyed)
    assert "sk-very-secret" not in text
    assert "http://127.0.0.1:9/v1" in text
    assert "'m'" in text
    assert "sk-" not in repr(OpenAICompatibleModel("http://u:sk-pw@127.0.0.1:9", "m"))


def test_close_then_reuse_and_concurrent_calls(server: FakeServer) -> None:
    server.script(*(Reply(body=completion(f"r{i}")) for i in range(9)))
    m = OpenAICompatibleModel(server.base_url, "m")
    assert m.complete(ask()).text == "r0"
    m.close()
    m.close()  # idempotent
    with m, ThreadPoolExecutor(max_workers=8) as pool:
        texts = sorted(pool.map(lambda _: m.complete(ask()).text, range(8)))
    assert texts == sorted(f"r{i}" for i in range(1, 9))


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host/v1", "http://", "http://[::1"])
def test_rejects_unusable_base_url(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatibleModel(url, "m")
