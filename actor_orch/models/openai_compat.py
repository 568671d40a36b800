"""A model served over the OpenAI chat-completions HTTP API.

Ollama, vLLM, the llama.cpp server, LM Studio and OpenAI itself all speak this protocol, so one
synchronous client covers them. Every failure becomes an `AgentError` from the table in
`actor_orch.errors`, because that is what the agent's retry policy and the supervisor decide on:
429 is `ModelThrottled`, 5xx and transport failures are `NetworkError` (retryable), 401/403 are
`AuthError`, a context-length 400 is `ContextWindowOverflow`, and anything the server says that we
cannot make sense of is a `StreamError` naming what was wrong.

The wire format is described by msgspec Structs below: the request is encoded from them and the
response decoded into them, so a body of the wrong shape fails with msgspec's path (`$.choices[0]`)
rather than a `KeyError` deep in the parser.
"""

from __future__ import annotations

import email.utils
import functools
import math
import ssl
import threading
import time
from datetime import UTC
from typing import Any

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
from actor_orch.models.base import ModelRequest
from actor_orch.tools import ToolSpec
from actor_orch.types import (
    AgentMessage,
    AssistantMessage,
    ContentBlock,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
    text_of,
)

__all__ = ["OpenAICompatibleModel"]


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
    json_schema: _WireJsonSchema
    type: str = "json_schema"


class _ChatRequest(msgspec.Struct):
    model: str
    messages: list[_WireMessage]
    # Explicit, because a few servers stream unless told otherwise and we parse one JSON body.
    stream: bool = False
    tools: list[_WireTool] | UnsetType = UNSET
    response_format: _WireResponseFormat | UnsetType = UNSET


# --- response wire format ---------------------------------------------------------------------
# Only the fields we use are declared; msgspec ignores the rest, so servers that add their own
# extras (timings, system_fingerprint, ...) still decode.


class _FunctionCall(msgspec.Struct):
    name: str
    # OpenAI sends a JSON string; some local servers send the object itself. Accept both.
    arguments: str | dict[str, Any] = ""


class _ToolCallOut(msgspec.Struct):
    function: _FunctionCall
    id: str | None = None


class _ChoiceMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallOut] | None = None


class _Choice(msgspec.Struct):
    message: _ChoiceMessage
    finish_reason: str | None = None


class _CompletionUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatCompletion(msgspec.Struct):
    """The part of a chat-completions response body this client reads."""

    choices: list[_Choice]
    usage: _CompletionUsage | None = None


class _ErrorDetail(msgspec.Struct):
    message: str | None = None
    code: str | int | None = None
    type: str | None = None


class _ErrorBody(msgspec.Struct):
    # OpenAI: {"error": {"message", "code", ...}}; Ollama: {"error": "text"};
    # vLLM: {"object": "error", "message": ..., "code": 400}; FastAPI-style: {"detail": "text"}.
    error: _ErrorDetail | str | None = None
    message: str | None = None
    code: str | int | None = None
    detail: str | None = None


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context_length",
    "context window",
    "context size",  # llama.cpp: "the request exceeds the available context size"
    "maximum context",
    "too many tokens",
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


class OpenAICompatibleModel:
    """A chat model behind an OpenAI-compatible `/chat/completions` endpoint.

    `base_url` is the API root (`http://localhost:11434/v1` for Ollama, `https://api.openai.com/v1`
    for OpenAI); the `Authorization: Bearer` header is sent only when `api_key` is given. `timeout`
    (seconds) bounds connecting, each read and each write. Calls are synchronous; one instance may
    be shared by many threads (they share one connection pool, created on first use). The instance
    pickles without its connection pool, so it can be shipped to another process.

    Example:
        >>> from actor_orch.types import user_message
        >>> model = OpenAICompatibleModel("http://localhost:11434/v1", "llama3.2")
        >>> model
        OpenAICompatibleModel(base_url='http://localhost:11434/v1', model='llama3.2', timeout=60.0)
        >>> with model:  # doctest: +SKIP
        ...     reply = model.complete(ModelRequest([user_message("Say hi")]))
        ...     reply.text
        'Hi!'
    """

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0
    ) -> None:
        # Fail here, not on the first call deep inside an actor, for a URL httpx cannot use.
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as err:
            raise ValueError(f"base_url is not a valid URL: {base_url!r} ({err})") from err
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self._endpoint = f"{self.base_url}/chat/completions"
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    def _get_client(self) -> httpx.Client:
        client = self._client
        if client is not None:
            return client
        with self._lock:  # two threads racing on first use must not build two pools
            if self._client is None:
                headers = {"Accept": "application/json"}
                if self.api_key:
                    headers["Authorization"] = f"Bearer {self.api_key}"
                self._client = httpx.Client(
                    headers=headers, timeout=httpx.Timeout(self.timeout), verify=_ssl_context()
                )
            return self._client

    def close(self) -> None:
        """Close the connection pool; a later `complete` opens a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> OpenAICompatibleModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Sockets and locks do not pickle; the copy builds its own pool on first use.
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        url = httpx.URL(self.base_url)
        # Credentials embedded in the URL are as secret as the API key.
        shown = str(url.copy_with(username="***", password=None)) if url.userinfo else self.base_url
        key = ", api_key='***'" if self.api_key else ""
        return (
            f"OpenAICompatibleModel(base_url={shown!r}, model={self.model!r}{key}, "
            f"timeout={self.timeout!r})"
        )

    # --- the call -----------------------------------------------------------------------------

    def complete(self, request: ModelRequest) -> AssistantMessage:
        """Send `request` and return the model's reply; failures raise an `AgentError`."""
        body = msgspec.json.encode(self._build_request(request))
        logger.debug(
            "POST {} model={} messages={} tools={}",
            self._endpoint,
            self.model,
            len(request.messages),
            len(request.tools),
        )
        try:
            response = self._get_client().post(
                self._endpoint, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError as err:
            # Connect/read/write/pool timeouts, refused or reset connections, protocol errors:
            # the server may well answer the same request later. httpx's own messages can be
            # as bare as "timed out", so the text names the kind of failure and the endpoint.
            logger.warning("{} unreachable: {}: {}", self._endpoint, type(err).__name__, err)
            raise NetworkError(
                f"{type(err).__name__} from {self._endpoint}: {str(err) or 'no detail'}"
            ) from err
        except httpx.HTTPError as err:  # e.g. a body with a broken content-encoding
            raise StreamError(err) from err
        if not response.is_success:
            raise self._http_error(response)
        return self._parse_response(response.content)

    def _build_request(self, request: ModelRequest) -> _ChatRequest:
        messages: list[_WireMessage] = []
        if request.system_prompt:
            messages.append(_WireMessage("system", request.system_prompt))
        messages.extend(_to_wire(message) for message in request.messages)
        payload = _ChatRequest(self.model, messages)
        if request.tools:
            payload.tools = [_to_wire_tool(spec) for spec in request.tools]
        if request.output_schema is not None:
            payload.response_format = _WireResponseFormat(
                _WireJsonSchema("output", request.output_schema)
            )
        return payload

    def _http_error(self, response: httpx.Response) -> AgentError:
        status = response.status_code
        code, message = _error_info(response.content)
        logger.warning("{} answered HTTP {} (code={}): {}", self._endpoint, status, code, message)
        where = f"HTTP {status} from {self._endpoint}"
        if status == 429:
            return ModelThrottled(_parse_retry_after(response.headers.get("Retry-After")))
        if status >= 500:
            return NetworkError(f"{where}: {message}" if message else where)
        if status in (401, 403):
            return AuthError(message or where)
        if status in (400, 413) and _is_context_overflow(code, message):
            return ContextWindowOverflow(self.model)
        return StreamError(f"{where}: {message}" if message else where)

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
        if not completion.choices:
            raise StreamError(f"response from {self._endpoint} has no choices")
        choice = completion.choices[0]
        content: list[ContentBlock] = []
        if choice.message.content:
            content.append(TextContent(choice.message.content))
        for index, call in enumerate(choice.message.tool_calls or ()):
            content.append(
                ToolCall(
                    # Some local servers omit the id; the agent still needs one to pair results.
                    id=call.id or f"call_{index}",
                    name=call.function.name,
                    arguments=_parse_arguments(call.function),
                )
            )
        if choice.finish_reason == "content_filter":
            raise ContentFiltered()
        has_tool_calls = any(isinstance(block, ToolCall) for block in content)
        stop_reason = _FINISH_REASONS.get(
            choice.finish_reason or "", StopReason.TOOL_USE if has_tool_calls else StopReason.STOP
        )
        usage = completion.usage or _CompletionUsage()
        logger.debug(
            "{} finished ({}) in={} out={}",
            self.model,
            stop_reason.value,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        return AssistantMessage(
            content, stop_reason, Usage(usage.prompt_tokens, usage.completion_tokens)
        )


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~50 ms; building it for every client would tax each agent
    # (re)start, since options factories build a fresh model. One context serves all clients.
    # A race on first use at worst builds a spare one.
    return httpx.create_ssl_context()


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
                _WireFunctionCall(call.name, msgspec.json.encode(call.arguments).decode()),
            )
            for call in calls
        ],
    )


def _to_wire_tool(spec: ToolSpec) -> _WireTool:
    return _WireTool(_WireFunction(spec.name, spec.description, spec.parameters))


def _parse_arguments(function: _FunctionCall) -> dict[str, Any]:
    if isinstance(function.arguments, dict):
        return function.arguments
    # A tool without parameters is often called with "" rather than "{}".
    if not function.arguments.strip():
        return {}
    try:
        return msgspec.json.decode(function.arguments, type=dict[str, Any])
    except msgspec.DecodeError as err:
        raise StreamError(
            f"model sent unparsable arguments for tool {function.name!r} ({err}): "
            f"{function.arguments[:_SNIPPET]!r}"
        ) from err


def _error_info(body: bytes) -> tuple[str | None, str]:
    """The error code (if any) and the most helpful message in an error body ("" if none)."""
    if not body.strip():
        return None, ""
    try:
        parsed = msgspec.json.decode(body, type=_ErrorBody)
    except msgspec.DecodeError:
        # Not our JSON shape (an HTML page from a proxy, plain text): quote it as it is.
        return None, _snippet(body)
    code: str | int | None = parsed.code
    message = parsed.message or parsed.detail
    if isinstance(parsed.error, _ErrorDetail):
        code = parsed.error.code if parsed.error.code is not None else code
        message = parsed.error.message or message
    elif isinstance(parsed.error, str):
        message = parsed.error
    return (None if code is None else str(code)), (message or _snippet(body))


def _is_context_overflow(code: str | None, message: str) -> bool:
    haystack = f"{code or ''} {message}".lower()
    return any(marker in haystack for marker in _CONTEXT_MARKERS)


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
