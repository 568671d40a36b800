"""A model served over the OpenAI chat-completions HTTP API.

Ollama, vLLM, the llama.cpp server, llama-cpp-python's server, LM Studio and OpenAI itself all
speak this protocol, so one synchronous client covers them. Every failure becomes an `AgentError`
from the table in `actor_orch.errors`, because that is what the agent's retry policy and the
supervisor decide on:

| what the server did | error | retried |
|---|---|---|
| 429 | `ModelThrottled(retry_after)` | yes |
| 408, 409, 5xx but 501, connection refused/reset, timeout | `NetworkError` | yes |
| 401, 403 | `AuthError` | no |
| a prompt longer than the context (400/413, any status naming it) | `ContextWindowOverflow` | no |
| a refusal, `finish_reason: "content_filter"` | `ContentFiltered` | no |
| any other status, a body we cannot read | `StreamError` naming what was wrong | no |

`Retry-After` (seconds or an HTTP date) and `retry-after-ms` are read on every retryable status
and carried as `retry_after`, which retry policies honour. An error object inside a 200 reply (or
in the middle of a stream) is mapped like the HTTP status it names, its message kept.

The wire format is described by msgspec Structs below: the request is encoded from them and the
response decoded into them, so a body of the wrong shape fails with msgspec's path (`$.choices[0]`)
rather than a `KeyError` deep in the parser. Shapes real servers send are accepted: `"usage":
null`, content as a list of parts, tool-call arguments as an object instead of a string.
"""

from __future__ import annotations

import email.utils
import functools
import importlib.metadata
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC
from typing import Any, Literal

import httpcore
import httpx
import msgspec
from loguru import logger
from msgspec import UNSET, UnsetType

from actor_orch.errors import (
    AgentError,
    AuthError,
    ContentFiltered,
    ContextWindowOverflow,
    ModelThrottled,
    NetworkError,
    StreamError,
)
from actor_orch.models import _http
from actor_orch.models.base import FinalMessage, ModelRequest, ModelStreamEvent, TextDelta
from actor_orch.models.settings import TOOL_CHOICE_MODES, ModelSettings
from actor_orch.tools import ToolSpec
from actor_orch.types import (
    AgentMessage,
    AssistantMessage,
    ContentBlock,
    Cost,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
    text_of,
)

__all__ = ["STRUCTURED_OUTPUT_MODES", "OpenAICompatibleModel", "StructuredOutputMode"]

StructuredOutputMode = Literal["json_schema", "json_object", "prompt"]
STRUCTURED_OUTPUT_MODES: tuple[StructuredOutputMode, ...] = ("json_schema", "json_object", "prompt")


# --- request wire format ----------------------------------------------------------------------
# UNSET fields are left out of the JSON entirely; `None` is sent as `null`. The distinction
# matters: an assistant turn that only calls tools must carry `"content": null`, while a user turn
# must not carry `tool_calls` at all (some servers reject unknown or null keys).


class _WireFunctionCall(msgspec.Struct):
    name: str
    arguments: str  # the protocol wants the arguments as a JSON *string*, not an object


class _WireToolCall(msgspec.Struct):
    id: str
    function: _WireFunctionCall
    type: str = "function"


class _WireMessage(msgspec.Struct):
    role: str
    content: str | UnsetType | None = UNSET
    tool_calls: list[_WireToolCall] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET


class _WireFunction(msgspec.Struct):
    name: str
    description: str
    parameters: dict[str, Any]


class _WireTool(msgspec.Struct):
    function: _WireFunction
    type: str = "function"


class _WireJsonSchema(msgspec.Struct):
    name: str
    schema: dict[str, Any]


class _WireResponseFormat(msgspec.Struct):
    type: str
    json_schema: _WireJsonSchema | UnsetType = UNSET  # "json_schema" mode
    schema: dict[str, Any] | UnsetType = UNSET  # "json_object" mode (llama-cpp-python)


class _StreamOptions(msgspec.Struct):
    include_usage: bool = True


class _ChatRequest(msgspec.Struct):
    model: str
    messages: list[_WireMessage]
    # Explicit, because a few servers stream unless told otherwise.
    stream: bool = False
    stream_options: _StreamOptions | UnsetType = UNSET
    tools: list[_WireTool] | UnsetType = UNSET
    response_format: _WireResponseFormat | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    max_tokens: int | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    stop: str | list[str] | UnsetType = UNSET
    tool_choice: str | dict[str, Any] | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET


# --- response wire format ---------------------------------------------------------------------
# Only the fields we use are declared; msgspec ignores the rest, so servers that add their own
# extras (timings, system_fingerprint, ...) still decode.


class _FunctionCall(msgspec.Struct):
    name: str = ""
    # OpenAI sends a JSON string; some local servers send the object itself. Accept anything and
    # sort it out in `_tool_call`, so one odd call cannot make the whole reply unreadable.
    arguments: Any = ""


class _ToolCallOut(msgspec.Struct):
    function: _FunctionCall
    id: str | None = None


class _ContentPart(msgspec.Struct):
    type: str = "text"
    text: str | None = None
    refusal: str | None = None


class _ChoiceMessage(msgspec.Struct):
    content: str | list[_ContentPart] | None = None
    tool_calls: list[_ToolCallOut] | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    message: _ChoiceMessage
    finish_reason: str | None = None


class _CompletionUsage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0

    def to_usage(self) -> Usage:
        return Usage(self.prompt_tokens or 0, self.completion_tokens or 0)


class _ErrorDetail(msgspec.Struct):
    message: str | None = None
    code: str | int | None = None
    type: str | None = None


class ChatCompletion(msgspec.Struct):
    """The part of a chat-completions response body this client reads."""

    choices: list[_Choice] | UnsetType = UNSET
    usage: _CompletionUsage | None = None
    # A 200 that is really an error: {"error": {...}} (OpenAI-style) or {"error": "text"}.
    error: _ErrorDetail | str | None = None


class _DeltaFunction(msgspec.Struct):
    name: str | None = None
    arguments: Any = None


class _DeltaToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _DeltaFunction | None = None


class _Delta(msgspec.Struct):
    content: str | list[_ContentPart] | None = None
    tool_calls: list[_DeltaToolCall] | None = None
    refusal: str | None = None


class _StreamChoice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None
    index: int = 0


class _StreamChunk(msgspec.Struct):
    choices: list[_StreamChoice] = msgspec.field(default_factory=list)
    usage: _CompletionUsage | None = None
    error: _ErrorDetail | str | None = None


class _ErrorBody(msgspec.Struct):
    # OpenAI: {"error": {"message", "code", ...}}; Ollama: {"error": "text"};
    # vLLM: {"object": "error", "message": ..., "code": 400}; FastAPI-style: {"detail": "text"}.
    error: _ErrorDetail | str | None = None
    message: str | None = None
    code: str | int | None = None
    type: str | None = None
    detail: str | None = None


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context_length",
    "context window",
    "context size",  # llama.cpp: "the request exceeds the available context size"
    "exceed_context_size",  # llama.cpp's error type
    "maximum context",
    "too many tokens",
)

# Words in an error's `type`/`code` that say which HTTP status it stands for, when it has no
# numeric code: the OpenAI, Anthropic-style and llama.cpp spellings.
_ERROR_KIND_STATUS = (
    ("rate_limit", 429),
    ("too_many_requests", 429),
    ("overloaded", 503),
    ("unavailable", 503),
    ("server_error", 500),
    ("internal", 500),
    ("timeout", 408),
    ("authentication", 401),
    ("invalid_api_key", 401),
    ("unauthorized", 401),
    ("permission", 403),
    ("not_found", 404),
    ("invalid_request", 400),
)

_FINISH_REASONS = {
    "stop": StopReason.STOP,
    "length": StopReason.LENGTH,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
}

# How much of an unparsable body to quote in an error: enough to recognise an HTML error page or
# a proxy's message, not so much that a log line becomes a wall.
_SNIPPET = 200

_STRUCTURED_PROMPT = (
    "Reply with only a JSON value, no prose and no code fence, that is valid against this "
    "JSON schema:\n{schema}"
)


class OpenAICompatibleModel:
    """A chat model behind an OpenAI-compatible `/chat/completions` endpoint.

    - `base_url`: the API root (`http://localhost:11434/v1` for Ollama,
      `https://api.openai.com/v1` for OpenAI); `model`: the model name the server knows.
    - `api_key`: sent as `Authorization: Bearer ...`, only when given.
    - `timeout` (seconds) bounds each whole call, from sending the first byte to reading the
      last one, streamed calls included; a call past it raises a retryable `NetworkError`.
    - `settings`: this model's `ModelSettings` (an agent's and a prompt's settings go over them).
    - `headers`: sent on every call; they may replace the defaults (`User-Agent`, ...).
      Per-call headers come from `ModelSettings.extra_headers`.
    - `max_connections`: `None` (the default) never makes a caller wait for a connection,
      whatever the number of threads: each call uses a keep-alive connection of its own, and
      idle connections to the same server are shared by every model in the process (so a model
      built in each options factory costs no new connection). A number caps this model's calls
      in flight; the others wait for a free one, at most their `timeout`.
    - `structured_output`: how an `output_schema` is sent: `"json_schema"` (OpenAI, vLLM,
      Ollama, llama-server), `"json_object"` (`{"type": "json_object", "schema": ...}`, for
      llama-cpp-python's server) or `"prompt"` (the schema goes into the system prompt, for
      servers with neither). The reply is validated on our side in every mode.

    One instance is meant to be shared by every agent and thread that talks to the server: it
    is thread-safe and holds no connection itself. It pickles (for the Ray backend).
    `complete` returns the whole reply; `stream` yields it as it is generated (server-sent
    events) and always closes its connection, even when the consumer stops early.

    Example:
        >>> from actor_orch.types import user_message
        >>> model = OpenAICompatibleModel(
        ...     "http://localhost:11434/v1", "llama3.2", settings=ModelSettings(max_tokens=256)
        ... )
        >>> model.settings
        ModelSettings(max_tokens=256)
        >>> model.complete(ModelRequest([user_message("Say hi")])).text  # doctest: +SKIP
        'Hi!'
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        settings: ModelSettings | None = None,
        headers: dict[str, str] | None = None,
        max_connections: int | None = None,
        structured_output: StructuredOutputMode = "json_schema",
        prices: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        # Fail here, not on the first call deep inside an actor, for a URL we cannot use.
        if not isinstance(base_url, str):
            raise TypeError(f"base_url must be a str, got {base_url!r}")
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as err:
            raise ValueError(f"base_url is not a valid URL: {base_url!r} ({err})") from err
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError("api_key must be a str or None")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if settings is not None and not isinstance(settings, ModelSettings):
            raise TypeError(f"settings must be a ModelSettings or None, got {settings!r}")
        if headers is not None and (
            not isinstance(headers, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise TypeError(f"headers must be a dict of str to str, got {headers!r}")
        if max_connections is not None and (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ValueError(
                f"max_connections must be an int >= 1 or None, got {max_connections!r}"
            )
        if structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(
                f"structured_output must be one of {', '.join(STRUCTURED_OUTPUT_MODES)}, "
                f"got {structured_output!r}"
            )
        self.prices = _check_prices(prices)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.settings = settings
        self.headers = dict(headers or {})
        self.max_connections = max_connections
        self.structured_output: StructuredOutputMode = structured_output
        self._prepare()

    def _prepare(self) -> None:
        """Everything derived from the public attributes that a call needs (not pickled)."""
        self._endpoint = f"{self.base_url}/chat/completions"
        self._url = httpcore.URL(self._endpoint)
        headers: dict[str, tuple[str, str]] = {}
        for name, value in (
            ("Host", httpx.URL(self._endpoint).netloc.decode("ascii")),
            ("User-Agent", _user_agent()),
            ("Accept", "application/json"),
            *([("Authorization", f"Bearer {self.api_key}")] if self.api_key else []),
            *self.headers.items(),
            ("Content-Type", "application/json"),
        ):
            headers[name.lower()] = (name, value)
        self._header_map = headers
        self._base_headers = _encode_headers(headers.values())
        self._source: _http.ConnectionSource | None = None
        self._source_lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    def _connections(self) -> _http.ConnectionSource:
        source = self._source
        if source is not None:
            return source
        # Locked: two sources of our own would each allow `max_connections` calls.
        with self._source_lock:
            if self._source is None:
                url = httpx.URL(self.base_url)
                if self.max_connections is None:
                    self._source = _http.shared_source(url)
                else:
                    self._source = _http.own_source(url, self.max_connections)
            return self._source

    def close(self) -> None:
        """Close the idle connections to this model's server; calls in flight finish.

        Optional: idle connections also close on their own after a few seconds of disuse.
        A later call opens a new connection.
        """
        if self._source is not None:
            self._source.close_idle()

    def __enter__(self) -> OpenAICompatibleModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        public = (
            "base_url",
            "model",
            "api_key",
            "timeout",
            "settings",
            "headers",
            "max_connections",
            "prices",
            "structured_output",
        )
        return {name: self.__dict__[name] for name in public}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._prepare()

    def __repr__(self) -> str:
        url = httpx.URL(self.base_url)
        # Credentials embedded in the URL are as secret as the API key.
        shown = str(url.copy_with(username="***", password=None)) if url.userinfo else self.base_url
        extra = ", api_key='***'" if self.api_key else ""
        extra += f", timeout={self.timeout!r}"
        if self.settings is not None:
            extra += f", settings={self.settings!r}"
        if self.headers:
            extra += f", headers={sorted(self.headers)!r}"  # names only: values may be secrets
        if self.max_connections is not None:
            extra += f", max_connections={self.max_connections}"
        if self.structured_output != "json_schema":
            extra += f", structured_output={self.structured_output!r}"
        return f"OpenAICompatibleModel(base_url={shown!r}, model={self.model!r}{extra})"

    # --- the calls ----------------------------------------------------------------------------

    def complete(self, request: ModelRequest) -> AssistantMessage:
        """Send `request` and return the model's whole reply; failures raise an `AgentError`."""
        body, headers = self._encode(request, stream=False)
        try:
            with self._connections().request(
                self._url, headers, body, timeout=self.timeout
            ) as response:
                if not 200 <= response.status < 300:
                    raise self._http_error(response.status, response.headers, response.read())
                return self._priced(self._parse_response(response.read()))
        except httpcore.TimeoutException as err:
            raise self._transport_error(err) from err
        except (httpcore.NetworkError, httpcore.RemoteProtocolError, httpcore.ProxyError) as err:
            raise self._transport_error(err) from err
        except (httpcore.LocalProtocolError, httpcore.UnsupportedProtocol) as err:
            raise StreamError(f"{type(err).__name__} from {self._endpoint}: {err}") from err

    def _priced(self, message: AssistantMessage) -> AssistantMessage:
        """`message` with its `cost` from `prices` (per million tokens), when a price is set."""
        price = self.prices.get(self.model)
        if price is None:
            return message
        per_input, per_output = price
        cost_in = message.usage.input_tokens * per_input / 1e6
        cost_out = message.usage.output_tokens * per_output / 1e6
        message.cost = Cost(total=cost_in + cost_out, input=cost_in, output=cost_out)
        return message

    def stream(self, request: ModelRequest) -> Iterator[ModelStreamEvent]:
        """Send `request` with `"stream": true` and yield `TextDelta`s as the server sends
        them, then one `FinalMessage` with the whole reply (tool calls assembled, usage).

        The request is sent at the first `next()`. The connection is closed when the iterator
        ends, fails or is closed (`close()`, or garbage collection of an abandoned iterator).
        A server that ignores `"stream": true` and answers with one JSON body is accepted.
        """
        body, headers = self._encode(request, stream=True)
        return self._stream(body, headers)

    def _stream(
        self, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Iterator[ModelStreamEvent]:
        try:
            with self._connections().request(
                self._url, headers, body, timeout=self.timeout
            ) as response:
                if not 200 <= response.status < 300:
                    raise self._http_error(response.status, response.headers, response.read())
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    message = self._parse_response(response.read())
                    if message.text:
                        yield TextDelta(message.text)
                    yield FinalMessage(self._priced(message))
                    return
                reply = _StreamedReply(self._endpoint)
                for event, data in _server_sent_events(response.iter_bytes()):
                    if data.strip() == "[DONE]":
                        break
                    text = reply.add(event, data, self._error_object)
                    if text:
                        yield TextDelta(text)
                yield FinalMessage(self._priced(reply.finish(self.model)))
        except httpcore.TimeoutException as err:
            raise self._transport_error(err) from err
        except (httpcore.NetworkError, httpcore.RemoteProtocolError, httpcore.ProxyError) as err:
            raise self._transport_error(err) from err
        except (httpcore.LocalProtocolError, httpcore.UnsupportedProtocol) as err:
            raise StreamError(f"{type(err).__name__} from {self._endpoint}: {err}") from err

    # --- request ------------------------------------------------------------------------------

    def _encode(
        self, request: ModelRequest, *, stream: bool
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        settings = request.settings
        if self.settings is not None:
            settings = self.settings.merge(settings)
        payload = self._build_request(request, settings, stream=stream)
        headers = self._base_headers
        if stream:
            headers = [
                (name, b"text/event-stream") if name == b"Accept" else (name, value)
                for name, value in headers
            ]
        if settings is not None and settings.extra_headers:
            merged = dict(self._header_map)
            if stream:
                merged["accept"] = ("Accept", "text/event-stream")
            for name, value in settings.extra_headers.items():
                merged[name.lower()] = (name, value)
            headers = _encode_headers(merged.values())
        if settings is not None and settings.extra_body:
            body = msgspec.to_builtins(payload)
            body.update(settings.extra_body)
            return msgspec.json.encode(body), headers
        return msgspec.json.encode(payload), headers

    def _build_request(
        self, request: ModelRequest, settings: ModelSettings | None, *, stream: bool
    ) -> _ChatRequest:
        messages: list[_WireMessage] = []
        system_prompt = request.system_prompt
        schema = request.output_schema
        if schema is not None and self.structured_output == "prompt":
            instruction = _STRUCTURED_PROMPT.format(schema=msgspec.json.encode(schema).decode())
            system_prompt = f"{system_prompt}\n\n{instruction}" if system_prompt else instruction
        if system_prompt:
            messages.append(_WireMessage("system", system_prompt))
        messages.extend(_to_wire(message) for message in request.messages)
        payload = _ChatRequest(self.model, messages, stream=stream)
        if stream:
            payload.stream_options = _StreamOptions()
        if request.tools:
            payload.tools = [_to_wire_tool(spec) for spec in request.tools]
        if schema is not None:
            if self.structured_output == "json_schema":
                payload.response_format = _WireResponseFormat(
                    "json_schema", json_schema=_WireJsonSchema("output", schema)
                )
            elif self.structured_output == "json_object":
                payload.response_format = _WireResponseFormat("json_object", schema=schema)
        if settings is not None:
            _apply_settings(payload, settings)
        return payload

    # --- response -----------------------------------------------------------------------------

    def _transport_error(self, err: Exception) -> AgentError:
        # Connect/read/write timeouts, refused or reset connections, protocol errors: the
        # server may well answer the same request later. httpcore's own messages can be as
        # bare as "timed out", so the text names the kind of failure and the endpoint.
        kind = type(err).__name__
        if isinstance(err, httpcore.TimeoutException):
            detail = f"the call exceeded its timeout of {self.timeout:g}s ({err or 'timed out'})"
            if isinstance(err, _http.CallDeadlineExceeded):
                kind = "ReadTimeout"
        else:
            detail = str(err) or "no detail"
        logger.warning("{} unreachable: {}: {}", self._endpoint, kind, detail)
        return NetworkError(f"{kind} from {self._endpoint}: {detail}")

    def _http_error(self, status: int, headers: dict[str, str], body: bytes) -> AgentError:
        code, kind, message = _error_info(body)
        logger.warning("{} answered HTTP {} (code={}): {}", self._endpoint, status, code, message)
        retry_after = _retry_after(headers) if _is_retryable_status(status) else None
        return self._map_error(
            status,
            code=code,
            kind=kind,
            message=message,
            retry_after=retry_after,
            label=f"HTTP {status}",
        )

    def _error_object(self, error: _ErrorDetail | str) -> AgentError:
        """The `AgentError` for an error object found in a 200 reply or in a stream."""
        if isinstance(error, str):
            code, kind, message = None, None, error
        else:
            code = None if error.code is None else str(error.code)
            kind, message = error.type, error.message or ""
        status = _status_of(code, kind)
        logger.warning("{} sent an error (code={}): {}", self._endpoint, code, message)
        label = f"error {code or kind or 'object'} in the reply"
        return self._map_error(
            status, code=code, kind=kind, message=message, retry_after=None, label=label
        )

    def _map_error(
        self,
        status: int | None,
        *,
        code: str | None,
        kind: str | None,
        message: str,
        retry_after: float | None,
        label: str,
    ) -> AgentError:
        where = f"{label} from {self._endpoint}"
        text = f"{where}: {message}" if message else where
        if status == 429:
            return ModelThrottled(retry_after)
        if status not in (401, 403) and _is_context_overflow(code, kind, message):
            return ContextWindowOverflow(self.model)
        if status is not None and _is_retryable_status(status):
            return NetworkError(text, retry_after=retry_after)
        if status in (401, 403):
            return AuthError(message or where)
        return StreamError(text)

    def _parse_response(self, body: bytes) -> AssistantMessage:
        try:
            completion = msgspec.json.decode(body, type=ChatCompletion)
        except msgspec.ValidationError as err:  # before DecodeError: it is a subclass
            raise StreamError(
                f"response body from {self._endpoint} is not a chat completion: {err}"
            ) from err
        except msgspec.DecodeError as err:
            raise StreamError(
                f"response body from {self._endpoint} is not valid JSON ({err}): {_snippet(body)}"
            ) from err
        if completion.error is not None:
            raise self._error_object(completion.error)
        if isinstance(completion.choices, UnsetType):
            raise StreamError(
                f"response body from {self._endpoint} is not a chat completion: "
                f"no `choices` in {_snippet(body)}"
            )
        if not completion.choices:
            raise StreamError(f"response from {self._endpoint} has no choices")
        choice = completion.choices[0]
        text, refusal = _content_text(choice.message.content)
        refusal = choice.message.refusal or refusal
        if refusal:
            raise ContentFiltered(f"the model refused: {refusal}")
        content: list[ContentBlock] = [TextContent(text)] if text else []
        for index, call in enumerate(choice.message.tool_calls or ()):
            content.append(_tool_call(call.id, call.function.name, call.function.arguments, index))
        usage = (completion.usage or _CompletionUsage()).to_usage()
        return _reply(content, choice.finish_reason, usage, self.model)


class _StreamedReply:
    """Assembles a streamed reply from its chunks: text, tool calls by index, usage."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, list[Any]] = {}  # index -> [id, name, argument pieces]
        self._finish_reason: str | None = None
        self._usage = Usage()

    def add(
        self, event: str, data: str, error_object: Callable[[_ErrorDetail | str], AgentError]
    ) -> str:
        """Take one event's data; return the text it adds (`""` if none)."""
        if event == "error":  # `event: error` with the error object (or text) as its data
            code, kind, message = _error_info(data.encode())
            raise error_object(_ErrorDetail(message, code, kind))
        try:
            chunk = msgspec.json.decode(data, type=_StreamChunk)
        except msgspec.DecodeError as err:
            raise StreamError(
                f"stream from {self._endpoint} sent an unreadable event ({err}): "
                f"{_snippet(data.encode())}"
            ) from err
        if chunk.error is not None:
            raise error_object(chunk.error)
        if chunk.usage is not None:
            self._usage = chunk.usage.to_usage()
        added = ""
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.finish_reason:
                self._finish_reason = choice.finish_reason
            delta = choice.delta
            text, refusal = _content_text(delta.content)
            if delta.refusal:
                refusal += delta.refusal
            if refusal:
                self._refusal.append(refusal)
            if text:
                self._text.append(text)
                added += text
            for call in delta.tool_calls or ():
                entry = self._calls.setdefault(call.index, [None, "", []])
                if call.id and not entry[0]:
                    entry[0] = call.id
                if call.function is not None:
                    if call.function.name and not entry[1]:
                        entry[1] = call.function.name
                    if call.function.arguments is not None:
                        entry[2].append(call.function.arguments)
        return added

    def finish(self, model: str) -> AssistantMessage:
        if self._refusal:
            raise ContentFiltered(f"the model refused: {''.join(self._refusal)}")
        text = "".join(self._text)
        content: list[ContentBlock] = [TextContent(text)] if text else []
        for position, index in enumerate(sorted(self._calls)):
            call_id, name, pieces = self._calls[index]
            arguments: Any
            if all(isinstance(piece, str) for piece in pieces):
                arguments = "".join(pieces)
            else:  # a server that streams the arguments object whole
                arguments = pieces[-1]
            content.append(_tool_call(call_id, name, arguments, position))
        return _reply(content, self._finish_reason, self._usage, model)


def _server_sent_events(chunks: Iterator[bytes]) -> Iterator[tuple[str, str]]:
    """`(event name, data)` for each server-sent event in a byte stream (the SSE format:
    `data:` lines joined by newlines, a blank line ends an event, `:` lines are comments)."""
    buffer = b""
    event, data = "", list[str]()
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if data:
                    yield event or "message", "\n".join(data)
                event, data = "", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
    tail = buffer.rstrip(b"\r").decode("utf-8", errors="replace")
    if tail.startswith("data:"):
        data.append(tail[5:].removeprefix(" "))
    if data:
        yield event or "message", "\n".join(data)


def _apply_settings(payload: _ChatRequest, settings: ModelSettings) -> None:
    if settings.temperature is not None:
        payload.temperature = settings.temperature
    if settings.top_p is not None:
        payload.top_p = settings.top_p
    if settings.max_tokens is not None:
        payload.max_tokens = settings.max_tokens
    if settings.seed is not None:
        payload.seed = settings.seed
    if settings.stop is not None:
        payload.stop = settings.stop if isinstance(settings.stop, str) else list(settings.stop)
    if settings.tool_choice is not None:
        choice = settings.tool_choice
        if isinstance(choice, str) and choice not in TOOL_CHOICE_MODES:
            choice = {"type": "function", "function": {"name": choice}}
        payload.tool_choice = choice
    if settings.parallel_tool_calls is not None:
        payload.parallel_tool_calls = settings.parallel_tool_calls


def _reply(
    content: list[ContentBlock], finish_reason: str | None, usage: Usage, model: str
) -> AssistantMessage:
    if finish_reason == "content_filter":
        raise ContentFiltered()
    has_tool_calls = any(isinstance(block, ToolCall) for block in content)
    stop_reason = _FINISH_REASONS.get(
        finish_reason or "", StopReason.TOOL_USE if has_tool_calls else StopReason.STOP
    )
    logger.debug(
        "{} finished ({}) in={} out={}",
        model,
        stop_reason.value,
        usage.input_tokens,
        usage.output_tokens,
    )
    return AssistantMessage(content, stop_reason, usage)


def _content_text(content: str | list[_ContentPart] | None) -> tuple[str, str]:
    """The text and the refusal text of a message's content (a string or a list of parts)."""
    if content is None:
        return "", ""
    if isinstance(content, str):
        return content, ""
    text = "".join(part.text or "" for part in content if part.type in ("text", "output_text"))
    refusal = "".join(part.refusal or part.text or "" for part in content if part.type == "refusal")
    return text, refusal


def _tool_call(call_id: str | None, name: str, arguments: Any, index: int) -> ToolCall:
    # Some local servers omit the id; the agent still needs one to pair the result.
    call_id = call_id or f"call_{index}"
    if isinstance(arguments, dict):
        return ToolCall(call_id, name, arguments)
    if not isinstance(arguments, str):  # an array, a number...: keep it as its JSON text
        return ToolCall(call_id, name, {}, msgspec.json.encode(arguments).decode())
    if not arguments.strip():  # a tool without parameters is often called with ""
        return ToolCall(call_id, name, {})
    try:
        parsed = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return ToolCall(call_id, name, parsed)
    # Truncated or malformed (small models do this): the agent answers with an error result
    # naming the problem, and the text goes back to the server exactly as the model wrote it.
    return ToolCall(call_id, name, {}, arguments)


def _to_wire(message: AgentMessage) -> _WireMessage:
    if isinstance(message, UserMessage):
        return _WireMessage("user", text_of(message.content))
    if isinstance(message, ToolResultMessage):
        return _WireMessage("tool", text_of(message.content), tool_call_id=message.tool_call_id)
    calls = message.tool_calls
    text = message.text
    if not calls:
        return _WireMessage("assistant", text)
    return _WireMessage(
        "assistant",
        # A turn that only calls tools has no text; the protocol spells that `null`.
        text or None,
        tool_calls=[
            _WireToolCall(
                call.id,
                _WireFunctionCall(
                    call.name,
                    call.raw_arguments
                    if call.raw_arguments is not None
                    else msgspec.json.encode(call.arguments).decode(),
                ),
            )
            for call in calls
        ],
    )


def _to_wire_tool(spec: ToolSpec) -> _WireTool:
    return _WireTool(_WireFunction(spec.name, spec.description, spec.parameters))


def _encode_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


@functools.cache
def _user_agent() -> str:
    try:
        version = importlib.metadata.version("actor_orch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        version = "0"
    return f"actor_orch/{version}"


def _is_retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or (status >= 500 and status != 501)


def _status_of(code: str | None, kind: str | None) -> int | None:
    """The HTTP status an error object stands for: its numeric code, else words in its
    type/code; None when it does not say."""
    if code is not None and code.isdigit() and 100 <= int(code) <= 599:
        return int(code)
    words = f"{kind or ''} {code or ''}".lower()
    for word, status in _ERROR_KIND_STATUS:
        if word in words:
            return status
    return None


def _error_info(body: bytes) -> tuple[str | None, str | None, str]:
    """The error code, type (if any) and the most helpful message in an error body."""
    if not body.strip():
        return None, None, ""
    try:
        parsed = msgspec.json.decode(body, type=_ErrorBody)
    except msgspec.DecodeError:
        # Not our JSON shape (an HTML page from a proxy, plain text): quote it as it is.
        return None, None, _snippet(body)
    code: str | int | None = parsed.code
    kind = parsed.type
    message = parsed.message or parsed.detail
    if isinstance(parsed.error, _ErrorDetail):
        code = parsed.error.code if parsed.error.code is not None else code
        kind = parsed.error.type or kind
        message = parsed.error.message or message
    elif isinstance(parsed.error, str):
        message = parsed.error
    return (None if code is None else str(code)), kind, (message or _snippet(body))


def _is_context_overflow(code: str | None, kind: str | None, message: str) -> bool:
    haystack = f"{code or ''} {kind or ''} {message}".lower()
    return any(marker in haystack for marker in _CONTEXT_MARKERS)


def _retry_after(headers: dict[str, str]) -> float | None:
    """The wait a response asks for: `retry-after-ms`, else `Retry-After`; None if unusable."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            value = float(milliseconds)
        except ValueError:
            pass
        else:
            if math.isfinite(value) and value >= 0:
                return value / 1000
    return _parse_retry_after(headers.get("retry-after"))


def _parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read the same way
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _snippet(body: bytes) -> str:
    text = body[:_SNIPPET].decode("utf-8", errors="replace")
    if not text:
        return "<empty body>"
    return repr(text) + ("..." if len(body) > _SNIPPET else "")


def _check_prices(prices: object) -> dict[str, tuple[float, float]]:
    """`prices` as `{model: (input per million tokens, output per million tokens)}`."""
    if prices is None:
        return {}
    if not isinstance(prices, Mapping):
        raise TypeError(
            f"prices must be a mapping of model name to (input, output), got {prices!r}"
        )
    checked: dict[str, tuple[float, float]] = {}
    for name, pair in prices.items():
        if (
            not isinstance(name, str)
            or not isinstance(pair, tuple)
            or len(pair) != 2
            or not all(
                isinstance(v, int | float)
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v >= 0
                for v in pair
            )
        ):
            raise ValueError(
                f"prices[{name!r}] must be (input_per_million, output_per_million) with finite "
                f"numbers >= 0, got {pair!r}"
            )
        checked[name] = (float(pair[0]), float(pair[1]))
    return checked


def _is_price(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
