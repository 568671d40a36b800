"""A model that replays a script: the workhorse of tests and failure injection."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from actor_orch.errors import StreamError
from actor_orch.models.base import (
    ModelRequest,
    ModelStreamEvent,
    as_assistant_message,
    stream_message,
)
from actor_orch.types import AssistantMessage

__all__ = ["ScriptedModel"]


class ScriptedModel:
    """Replays `responses` in order: a `str` or `AssistantMessage` is the reply, an exception
    instance is raised when reached. Raises `StreamError` once the script is exhausted.
    `stream` replays the same script, each reply's text word by word.

    Thread-safe; one instance shared by an options factory keeps its place across restarts,
    which is how a test scripts "fail, then succeed after the restart".

    Example:
        >>> from actor_orch.errors import NetworkError
        >>> from actor_orch.types import user_message
        >>> m = ScriptedModel(["one", NetworkError("reset")])
        >>> m.complete(ModelRequest([user_message("hi")])).text
        'one'
        >>> m.remaining
        1
    """

    def __init__(self, responses: Iterable[str | AssistantMessage | BaseException]) -> None:
        self._responses = list(responses)
        for index, item in enumerate(self._responses):
            if not isinstance(item, str | AssistantMessage | BaseException):
                raise TypeError(
                    f"ScriptedModel responses[{index}] must be str, AssistantMessage or an "
                    f"exception instance, got {type(item).__name__}"
                )
        self._position = 0
        self._lock = threading.Lock()
        self.requests: list[ModelRequest] = []

    def __getstate__(self) -> dict[str, object]:
        # A copy sent to another process replays from the same place, with its own lock.
        with self._lock:
            state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        """How many scripted replies are left."""
        return len(self._responses) - self._position

    def complete(self, request: ModelRequest) -> AssistantMessage:
        with self._lock:
            self.requests.append(request)
            if self._position >= len(self._responses):
                raise StreamError(f"ScriptedModel exhausted after {len(self._responses)} replies")
            item = self._responses[self._position]
            self._position += 1
        if isinstance(item, BaseException):
            raise item
        return as_assistant_message(item, source="ScriptedModel")

    def stream(self, request: ModelRequest) -> Iterator[ModelStreamEvent]:
        # Taken from the script at the call, not at the first next(): like `complete`.
        return stream_message(self.complete(request))

    def __repr__(self) -> str:
        return f"ScriptedModel(position={self._position}, total={len(self._responses)})"
