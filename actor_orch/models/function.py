"""A model backed by a Python function: full control for tests and custom logic."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from actor_orch.models.base import (
    FinalMessage,
    ModelRequest,
    ModelStreamEvent,
    TextDelta,
    as_assistant_message,
)
from actor_orch.types import AssistantMessage, StopReason, TextContent

__all__ = ["FunctionModel"]

FunctionModelReply = str | AssistantMessage | Iterable[str]


class FunctionModel:
    """Calls `fn(request)` for every model call; `fn` returns `str` or `AssistantMessage`, or
    an iterable of `str` pieces to stream, and may raise (an `AgentError` as itself, anything
    else becomes `StreamError`). `complete` joins streamed pieces; `stream` yields each piece
    as a `TextDelta` (a `str` or `AssistantMessage` reply is one delta).

    Example:
        >>> from actor_orch.types import user_message
        >>> m = FunctionModel(lambda req: f"{len(req.messages)} message(s)")
        >>> m.complete(ModelRequest([user_message("hi")])).text
        '1 message(s)'
        >>> pieces = FunctionModel(lambda req: iter(["Hel", "lo"]))
        >>> [getattr(e, "text", "end") for e in pieces.stream(ModelRequest([user_message("hi")]))]
        ['Hel', 'lo', 'end']
    """

    def __init__(self, fn: Callable[[ModelRequest], FunctionModelReply]) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionModel needs a callable, got {fn!r}")
        self.fn = fn

    def complete(self, request: ModelRequest) -> AssistantMessage:
        reply = self.fn(request)
        if isinstance(reply, str | AssistantMessage):
            return as_assistant_message(reply, source=self._source)
        return _text_reply("".join(self._pieces(reply)))

    def stream(self, request: ModelRequest) -> Iterator[ModelStreamEvent]:
        reply = self.fn(request)  # called now, so it raises at the call like `complete`
        return self._events(reply)

    def _events(self, reply: FunctionModelReply) -> Iterator[ModelStreamEvent]:
        if isinstance(reply, str | AssistantMessage):
            message = as_assistant_message(reply, source=self._source)
            if message.text:
                yield TextDelta(message.text)
            yield FinalMessage(message)
            return
        pieces: list[str] = []
        for piece in self._pieces(reply):
            if piece:
                pieces.append(piece)
                yield TextDelta(piece)
        yield FinalMessage(_text_reply("".join(pieces)))

    def _pieces(self, reply: object) -> Iterator[str]:
        try:
            iterator = iter(reply)  # type: ignore[call-overload]
        except TypeError:
            raise TypeError(
                f"{self._source} must return str, AssistantMessage or an iterable of str, "
                f"got {type(reply).__name__}"
            ) from None
        for index, piece in enumerate(iterator):
            if not isinstance(piece, str):
                raise TypeError(
                    f"{self._source} streamed piece {index} of type {type(piece).__name__}, "
                    "expected str"
                )
            yield piece

    @property
    def _source(self) -> str:
        return f"FunctionModel fn {self.fn!r}"

    def __repr__(self) -> str:
        return f"FunctionModel({getattr(self.fn, '__qualname__', self.fn)!r})"


def _text_reply(text: str) -> AssistantMessage:
    return AssistantMessage([TextContent(text)], StopReason.STOP)
