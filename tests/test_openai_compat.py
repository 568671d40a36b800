"""OpenAICompatibleModel against a real local HTTP server that replays scripted replies."""

from __future__ import annotations

import email.utils
import json
import pickle
import queue
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
from actor_orch.models.base import FinalMessage, ModelRequest, TextDelta
from actor_orch.models.openai_compat import OpenAICompatibleModel
from actor_orch.models.settings import ModelSettings
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
    # A streamed reply: sent with chunked encoding, one write per item, `drip` seconds apart.
    chunks: list[bytes] | None = None
    drip: float = 0.0
    content_type: str = "application/json"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the listen backlog: hundreds of clients connect at once


class FakeServer:
    """Answers each POST with the next scripted `Reply` and records what it received,
    how many connections were opened, and whether each streamed reply was sent in full."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.received: list[Received] = []
        self.connections = 0
        # One item per chunked reply once its handler is done: were all its bytes written?
        self.completed: queue.Queue[bool] = queue.Queue()
        self.release = threading.Event()  # set at teardown so a stalled handler ends at once
        self._lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), self._handler_class())
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

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = server._next(Received(self.path, headers, body))
                if reply.delay and server.release.wait(reply.delay):
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.chunks is not None:
                        self._send_chunks(reply)
                        return
                    raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
                    payload = raw.encode() if isinstance(raw, str) else raw
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout test); nothing to answer
                    pass

            def _send_chunks(self, reply: Reply) -> None:
                assert reply.chunks is not None
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in reply.chunks:
                        if reply.drip and server.release.wait(reply.drip):
                            break
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    else:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                        server.completed.put(True)
                        return
                except OSError:
                    pass
                server.completed.put(False)
                self.close_connection = True

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
    server.script(Reply(body=completion(), delay=30.0))
    with (
        OpenAICompatibleModel(server.base_url, "m", timeout=0.2) as m,
        pytest.raises(NetworkError, match=r"ReadTimeout.*timeout of 0.2s") as info,
    ):
        m.complete(ask())
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


# --- settings, headers, structured output modes ------------------------------------------------


def test_only_set_settings_are_sent_and_extra_body_is_merged_untouched(
    server: FakeServer,
) -> None:
    server.script(Reply(body=completion()), Reply(body=completion()))
    own = ModelSettings(temperature=0.7, max_tokens=32, seed=1)
    with OpenAICompatibleModel(server.base_url, "m", settings=own) as m:
        m.complete(ask())
        call = ModelSettings(
            temperature=0.0,
            top_p=0.5,
            stop=["\n\n", "END"],
            tool_choice="add",
            parallel_tool_calls=False,
            extra_body={"top_k": 40, "cache_prompt": True, "max_tokens": 8},
        )
        m.complete(ModelRequest([user_message("hi")], settings=call))
    first, second = (got.json for got in server.received)
    assert {k: v for k, v in first.items() if k not in ("model", "messages")} == {
        "stream": False,
        "temperature": 0.7,
        "max_tokens": 32,
        "seed": 1,
    }
    assert {k: v for k, v in second.items() if k not in ("model", "messages")} == {
        "stream": False,
        "temperature": 0.0,  # the call's setting wins over the model's
        "top_p": 0.5,
        "max_tokens": 8,  # extra_body goes in as it is, over everything
        "seed": 1,
        "stop": ["\n\n", "END"],
        "tool_choice": {"type": "function", "function": {"name": "add"}},
        "parallel_tool_calls": False,
        "top_k": 40,
        "cache_prompt": True,
    }


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_modes_are_sent_as_strings(server: FakeServer, choice: str) -> None:
    server.script(Reply(body=completion()))
    with OpenAICompatibleModel(server.base_url, "m") as m:
        m.complete(ModelRequest([user_message("hi")], settings=ModelSettings(tool_choice=choice)))
    assert server.received[0].json["tool_choice"] == choice


def test_headers_replace_defaults_and_extra_headers_go_on_the_call(server: FakeServer) -> None:
    server.script(Reply(body=completion()), Reply(body=completion()))
    headers = {"User-Agent": "my-router/1.0", "X-Team": "a"}
    with OpenAICompatibleModel(server.base_url, "m", api_key="k", headers=headers) as m:
        m.complete(ask())
        extra = ModelSettings(extra_headers={"x-team": "b", "X-Trace": "t1"})
        m.complete(ModelRequest([user_message("hi")], settings=extra))
    first, second = (got.headers for got in server.received)
    assert first["user-agent"] == "my-router/1.0"
    assert first["x-team"] == "a"
    assert first["authorization"] == "Bearer k"
    assert first["content-type"] == "application/json"
    assert (second["x-team"], second["x-trace"]) == ("b", "t1")
    assert second["user-agent"] == "my-router/1.0"


def test_default_user_agent_names_the_library(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    server.script(Reply(body=completion()))
    model.complete(ask())
    assert server.received[0].headers["user-agent"].startswith("actor_orch/")


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def test_structured_output_json_object_mode(server: FakeServer) -> None:
    server.script(Reply(body=completion('{"n": 1}')))
    with OpenAICompatibleModel(server.base_url, "m", structured_output="json_object") as m:
        m.complete(ModelRequest([user_message("n?")], output_schema=SCHEMA))
    assert server.received[0].json["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_structured_output_prompt_mode_puts_the_schema_in_the_system_prompt(
    server: FakeServer,
) -> None:
    server.script(Reply(body=completion('{"n": 1}')), Reply(body=completion('{"n": 1}')))
    with OpenAICompatibleModel(server.base_url, "m", structured_output="prompt") as m:
        m.complete(ModelRequest([user_message("n?")], "Be exact.", output_schema=SCHEMA))
        m.complete(ModelRequest([user_message("n?")], output_schema=SCHEMA))
    with_prompt, without = (got.json for got in server.received)
    assert "response_format" not in with_prompt
    system = with_prompt["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("Be exact.\n\n")
    assert json.dumps(SCHEMA, separators=(",", ":")) in system["content"]
    assert without["messages"][0]["role"] == "system"
    assert without["messages"][1] == {"role": "user", "content": "n?"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"structured_output": "xml"}, "structured_output"),
        ({"settings": {"max_tokens": 3}}, "settings"),
        ({"headers": {"X": 1}}, "headers"),
    ],
)
def test_constructor_errors_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        OpenAICompatibleModel("http://127.0.0.1:9/v1", "m", **kwargs)


def test_repr_shows_settings_and_header_names_but_no_secrets() -> None:
    m = OpenAICompatibleModel(
        "http://127.0.0.1:9/v1",
        "m",
        api_key="sk-secret",
        settings=ModelSettings(max_tokens=5),
        headers={"X-Api-Token": "hidden-value"},
        max_connections=8,
        structured_output="json_object",
    )
    text = repr(m)
    assert "sk-secret" not in text and "hidden-value" not in text
    assert "ModelSettings(max_tokens=5)" in text
    assert "X-Api-Token" in text and "max_connections=8" in text and "json_object" in text


# --- retry classification ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504, 599])
def test_retryable_statuses_are_network_errors(
    server: FakeServer, model: OpenAICompatibleModel, status: int
) -> None:
    server.script(Reply(status, {"error": {"message": "try later"}}))
    with pytest.raises(NetworkError, match=f"HTTP {status}.*try later") as info:
        model.complete(ask())
    assert info.value.is_retryable()
    assert info.value.retry_after is None


@pytest.mark.parametrize("status", [400, 404, 422, 501])
def test_permanent_statuses_are_not_retried(
    server: FakeServer, model: OpenAICompatibleModel, status: int
) -> None:
    server.script(Reply(status, {"error": {"message": "no such thing"}}, {"Retry-After": "1"}))
    with pytest.raises(StreamError, match=f"HTTP {status}.*no such thing") as info:
        model.complete(ask())
    assert not info.value.is_retryable()


def test_retry_after_is_honoured_on_any_retryable_status(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    server.script(
        Reply(503, b"busy", {"Retry-After": "3"}),
        Reply(429, b"", {"retry-after-ms": "250", "Retry-After": "9"}),
        Reply(408, b"", {"retry-after-ms": "nonsense", "Retry-After": "2"}),
    )
    with pytest.raises(NetworkError) as unavailable:
        model.complete(ask())
    assert unavailable.value.retry_after == 3.0
    with pytest.raises(ModelThrottled) as throttled:
        model.complete(ask())
    assert throttled.value.retry_after == 0.25  # retry-after-ms is the more precise one
    with pytest.raises(NetworkError) as timeout:
        model.complete(ask())
    assert timeout.value.retry_after == 2.0


def test_llama_cpp_python_json_schema_500_is_not_retried_forever(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    # One 500 is one NetworkError (the agent's retry policy bounds the retries), but a
    # prompt that exceeds the context is never retried, whatever the status.
    server.script(
        Reply(500, {"error": {"message": "the request exceeds the available context size"}})
    )
    with pytest.raises(ContextWindowOverflow):
        model.complete(ask())


# --- tolerant decoding ------------------------------------------------------------------------


def test_usage_null_and_content_as_a_list_of_parts(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    body = completion(None)
    body["usage"] = None
    body["choices"][0]["message"]["content"] = [
        {"type": "text", "text": "Hello, "},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "world"},
    ]
    server.script(Reply(body=body))
    reply = model.complete(ask())
    assert reply.content == [TextContent("Hello, world")]
    assert reply.usage == Usage()


def test_usage_with_null_counts(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(
        Reply(body=completion("x", usage={"prompt_tokens": 4, "completion_tokens": None}))
    )  # type: ignore[dict-item]
    assert model.complete(ask()).usage == Usage(4, 0)


@pytest.mark.parametrize(
    ("error", "expected", "retryable"),
    [
        ({"code": 429, "message": "slow down"}, ModelThrottled, True),
        ({"code": 500, "message": "kv cache full", "type": "server_error"}, NetworkError, True),
        ({"code": "503", "message": "loading model"}, NetworkError, True),
        ({"type": "rate_limit_exceeded", "message": "slow down"}, ModelThrottled, True),
        ({"type": "invalid_request_error", "message": "bad 'tools'"}, StreamError, False),
        ({"code": 401, "message": "bad key"}, AuthError, False),
        ({"code": "context_length_exceeded", "message": "too long"}, ContextWindowOverflow, False),
        ("model not found", StreamError, False),
    ],
)
def test_an_error_object_in_a_200_is_mapped_like_its_http_error(
    server: FakeServer,
    model: OpenAICompatibleModel,
    error: dict[str, Any] | str,
    expected: type[Exception],
    retryable: bool,
) -> None:
    server.script(Reply(body={"error": error}))
    with pytest.raises(expected) as info:
        model.complete(ask())
    assert info.value.is_retryable() is retryable  # type: ignore[attr-defined]
    message = error if isinstance(error, str) else error["message"]
    if expected in (NetworkError, StreamError, AuthError):
        assert message in str(info.value)  # the server's message is kept


@pytest.mark.parametrize("where", ["message", "content-part"])
def test_a_refusal_raises_content_filtered(
    server: FakeServer, model: OpenAICompatibleModel, where: str
) -> None:
    body = completion(None)
    if where == "message":
        body["choices"][0]["message"]["refusal"] = "I can't help with that."
    else:
        body["choices"][0]["message"]["content"] = [
            {"type": "refusal", "refusal": "I can't help with that."}
        ]
    server.script(Reply(body=body))
    with pytest.raises(ContentFiltered, match="I can't help with that") as info:
        model.complete(ask())
    assert not info.value.is_retryable()


def test_length_finish_keeps_the_text(server: FakeServer, model: OpenAICompatibleModel) -> None:
    server.script(Reply(body=completion("Once upon a", finish_reason="length")))
    reply = model.complete(ask())
    assert (reply.text, reply.stop_reason) == ("Once upon a", StopReason.LENGTH)


def test_tool_arguments_sent_as_an_object_are_accepted(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    call = {"id": "c1", "function": {"name": "add", "arguments": {"a": 1}}}
    server.script(Reply(body=completion(None, finish_reason="tool_calls", tool_calls=[call])))
    assert model.complete(ask()).content == [ToolCall("c1", "add", {"a": 1})]


# --- whole-call timeout -----------------------------------------------------------------------


def test_timeout_bounds_the_whole_call_not_each_read(server: FakeServer) -> None:
    # Each byte arrives well within the timeout, but the body takes far longer than it.
    payload = json.dumps(completion("slow")).encode()
    server.script(Reply(chunks=[bytes([b]) for b in payload], drip=0.05))
    with (
        OpenAICompatibleModel(server.base_url, "m", timeout=0.5) as m,
        pytest.raises(NetworkError, match=r"timeout of 0.5s") as info,
    ):
        m.complete(ask())
    assert info.value.is_retryable()
    server.release.set()  # let the handler notice the closed connection at once
    assert server.completed.get(timeout=10) is False  # we hung up before the server finished


# --- streaming --------------------------------------------------------------------------------


def sse(*events: dict[str, Any] | str, done: bool = True) -> list[bytes]:
    out = [(e if isinstance(e, str) else f"data: {json.dumps(e)}\n\n").encode() for e in events]
    return [*out, b"data: [DONE]\n\n"] if done else out


def chunk(
    content: str | None = None,
    *,
    finish_reason: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def stream_reply(chunks: list[bytes], **kwargs: Any) -> Reply:
    return Reply(chunks=chunks, content_type="text/event-stream", **kwargs)


def collect(
    model: OpenAICompatibleModel, request: ModelRequest | None = None
) -> tuple[list[str], AssistantMessage]:
    deltas: list[str] = []
    final: AssistantMessage | None = None
    for event in model.stream(request or ask()):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            assert isinstance(event, FinalMessage)
            final = event.message
    assert final is not None
    return deltas, final


def test_stream_yields_deltas_then_the_whole_reply_with_usage(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    server.script(
        stream_reply(
            sse(
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                chunk("Hel"),
                ": a comment line\n\n",
                chunk("lo"),
                chunk(" there", finish_reason="stop"),
                usage,
            )
        )
    )
    deltas, final = collect(model)
    assert deltas == ["Hel", "lo", " there"]
    assert final.content == [TextContent("Hello there")]
    assert (final.stop_reason, final.usage) == (StopReason.STOP, Usage(7, 3))
    body = server.received[0].json
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert server.received[0].headers["accept"] == "text/event-stream"


def test_stream_events_split_across_network_chunks_and_crlf(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    raw = b"".join(sse(chunk("a b"), chunk(" c", finish_reason="length"))).replace(b"\n", b"\r\n")
    server.script(stream_reply([raw[i : i + 7] for i in range(0, len(raw), 7)]))
    deltas, final = collect(model)
    assert "".join(deltas) == "a b c"
    assert final.stop_reason is StopReason.LENGTH


def test_stream_assembles_tool_call_deltas_by_index(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    def call(index: int, **function: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": index, "function": function}
        if "name" in function:
            entry["id"] = f"call_{index}_x"
            entry["type"] = "function"
        return entry

    server.script(
        stream_reply(
            sse(
                chunk("Let me check."),
                chunk(tool_calls=[call(0, name="add", arguments="")]),
                chunk(tool_calls=[call(0, arguments='{"a": ')]),
                chunk(tool_calls=[call(1, name="now", arguments="")]),
                chunk(tool_calls=[call(0, arguments="2}")]),
                chunk(tool_calls=[call(1, arguments="{oops")], finish_reason="tool_calls"),
            )
        )
    )
    deltas, final = collect(model)
    assert deltas == ["Let me check."]
    assert final.stop_reason is StopReason.TOOL_USE
    assert final.content == [
        TextContent("Let me check."),
        ToolCall("call_0_x", "add", {"a": 2}),
        ToolCall("call_1_x", "now", {}, raw_arguments="{oops"),
    ]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([chunk("partial"), {"error": {"code": 500, "message": "slot crashed"}}], NetworkError),
        (
            [
                chunk("partial"),
                'event: error\ndata: {"message": "overloaded", "type": "overloaded_error"}\n\n',
            ],
            NetworkError,
        ),
        ([chunk("partial"), {"error": {"code": 400, "message": "bad grammar"}}], StreamError),
        ([chunk("partial"), "data: {not json\n\n"], StreamError),
    ],
    ids=["error-object", "error-event", "permanent", "garbage"],
)
def test_stream_errors_arriving_mid_stream_are_mapped(
    server: FakeServer,
    model: OpenAICompatibleModel,
    events: list[dict[str, Any] | str],
    expected: type[Exception],
) -> None:
    server.script(stream_reply(sse(*events, done=False)))
    events_seen: list[Any] = []
    with pytest.raises(expected):
        events_seen.extend(model.stream(ask()))
    assert events_seen == [TextDelta("partial")]


def test_stream_http_error_is_mapped_before_any_event(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    server.script(Reply(429, {"error": {"message": "slow"}}, {"Retry-After": "1"}))
    with pytest.raises(ModelThrottled) as info:
        next(model.stream(ask()))
    assert info.value.retry_after == 1.0


def test_stream_accepts_a_server_that_answers_with_one_json_body(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    server.script(
        Reply(body=completion("all at once", usage={"prompt_tokens": 1, "completion_tokens": 3}))
    )
    deltas, final = collect(model)
    assert deltas == ["all at once"]
    assert final.usage == Usage(1, 3)


def test_stream_refusal_raises_content_filtered(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    refusal = {"choices": [{"index": 0, "delta": {"refusal": "No."}, "finish_reason": "stop"}]}
    server.script(stream_reply(sse(refusal)))
    with pytest.raises(ContentFiltered, match=r"No."):
        collect(model)


def test_stream_closed_early_closes_its_connection(
    server: FakeServer, model: OpenAICompatibleModel
) -> None:
    server.script(
        stream_reply(sse(*(chunk(f"w{i} ") for i in range(200))), drip=0.01),
        Reply(body=completion("next")),
    )
    events = model.stream(ask())
    assert next(events) == TextDelta("w0 ")
    events.close()  # type: ignore[attr-defined]
    server.release.set()  # stop the drip; the server sees the connection gone
    assert model.complete(ask()).text == "next"
    assert server.connections == 2  # the abandoned stream's connection was not reused
    assert server.completed.get(timeout=10) is False


def test_stream_timeout_bounds_the_whole_stream(server: FakeServer) -> None:
    server.script(stream_reply(sse(*(chunk("x") for _ in range(100))), drip=0.05))
    with (
        OpenAICompatibleModel(server.base_url, "m", timeout=0.5) as m,
        pytest.raises(NetworkError, match=r"timeout of 0.5s"),
    ):
        collect(m)
    server.release.set()
    assert server.completed.get(timeout=10) is False


# --- connections ------------------------------------------------------------------------------


class BarrierServer:
    """Holds every request until `parties` requests are in flight at once, then answers all:
    a client that queued even one request behind another would never fill the barrier."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.barrier = threading.Barrier(parties)
        self.connections = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    if server.parties > 1:
                        server.barrier.wait(timeout=60)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                text = body["messages"][-1]["content"]
                payload = json.dumps(completion(text)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self) -> BarrierServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.barrier.abort()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


@pytest.mark.timeout(120)
def test_256_concurrent_calls_never_wait_for_a_connection_round_after_round() -> None:
    threads, rounds = 256, 4
    with (
        BarrierServer(threads) as server,
        OpenAICompatibleModel(server.base_url, "m", timeout=90) as model,
        ThreadPoolExecutor(max_workers=threads) as pool,
    ):
        for round_ in range(rounds):
            texts = [f"r{round_}-{i}" for i in range(threads)]
            got = list(pool.map(lambda t: model.complete(ask(t)).text, texts))
            assert got == texts
        # Every round had all 256 calls in flight at once, and later rounds reused the
        # first round's connections instead of opening new ones.
        assert server.most_in_flight == threads
        assert server.connections == threads


def test_max_connections_caps_calls_in_flight() -> None:
    with (
        BarrierServer(1) as server,
        OpenAICompatibleModel(server.base_url, "m", max_connections=3) as model,
        ThreadPoolExecutor(max_workers=12) as pool,
    ):
        texts = [f"t{i}" for i in range(48)]
        assert list(pool.map(lambda t: model.complete(ask(t)).text, texts)) == texts
        assert server.most_in_flight <= 3
        assert server.connections <= 3


def test_models_for_the_same_server_share_idle_connections(server: FakeServer) -> None:
    server.script(*(Reply(body=completion(f"r{i}")) for i in range(5)))
    for i in range(5):  # a model built per call, as an options factory per step would
        assert OpenAICompatibleModel(server.base_url, "m").complete(ask()).text == f"r{i}"
    assert server.connections == 1
    OpenAICompatibleModel(server.base_url, "m").close()


def test_pickled_model_keeps_its_options(server: FakeServer) -> None:
    original = OpenAICompatibleModel(
        server.base_url,
        "m",
        settings=ModelSettings(max_tokens=3),
        headers={"X-A": "1"},
        max_connections=2,
        structured_output="prompt",
    )
    copy = pickle.loads(pickle.dumps(original))
    assert repr(copy) == repr(original)
    server.script(Reply(body=completion("ok")))
    with copy:
        assert copy.complete(ask()).text == "ok"
    assert server.received[0].json["max_tokens"] == 3
    assert server.received[0].headers["x-a"] == "1"


def test_an_environment_proxy_is_used(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.base_url.removesuffix("/v1"))
    server.script(Reply(body=completion("via proxy")))
    with OpenAICompatibleModel("http://model.invalid:8000/v1", "m", timeout=5.0) as m:
        assert m.complete(ask()).text == "via proxy"
    # A forward proxy gets the absolute URL of the model server.
    assert server.received[0].path == "http://model.invalid:8000/v1/chat/completions"


def test_prices_give_each_reply_a_cost(server: FakeServer) -> None:
    server.script(
        Reply(body=completion("ok", usage={"prompt_tokens": 1_000, "completion_tokens": 500}))
    )
    model = OpenAICompatibleModel(server.base_url, "m", prices={"m": (2.0, 8.0)})
    reply = model.complete(ask())
    assert reply.cost.input == pytest.approx(0.002)
    assert reply.cost.output == pytest.approx(0.004)
    assert reply.cost.total == pytest.approx(0.006)
    with pytest.raises(ValueError, match="prices"):
        OpenAICompatibleModel(server.base_url, "m", prices={"m": (1.0, -1.0)})
