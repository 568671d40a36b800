"""A model backed by a Python function: full control for tests and custom logic."""

from __future__ import annotations

from collections.abc import Callable

from actor_orch.models.base import ModelRequest, as_assistant_message
from actor_orch.types import AssistantMessage

__all__ = ["FunctionModel"]


class FunctionModel:
    """Calls `fn(request)` for every model call; `fn` returns `str` or `AssistantMessage`
    and may raise (an `AgentError` as itself, anything else becomes `StreamError`).

    Example:
        >>> from actor_orch.types import user_message
        >>> m = FunctionModel(lambda req: f"{len(req.messages)} message(s)")
        >>> m.complete(ModelRequest([user_message("hi")])).text
        '1 message(s)'
    """

    def __init__(self, fn: Callable[[ModelRequest], str | AssistantMessage]) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionModel needs a callable, got {fn!r}")
        self.fn = fn

    def complete(self, request: ModelRequest) -> AssistantMessage:
        return as_assistant_message(self.fn(request), source=f"FunctionModel fn {self.fn!r}")

    def __repr__(self) -> str:
        return f"FunctionModel({getattr(self.fn, '__qualname__', self.fn)!r})"
