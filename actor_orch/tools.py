"""Tools: typed Python functions an agent's model may call.

`@tool` reads the function's signature and docstring once: msgspec builds the JSON schema the
model sees and validates the model's arguments before the call. A tool that raises, or is
called with arguments that fail validation, becomes an error tool result naming the problem.

Example:
    >>> @tool
    ... def add(a: int, b: int = 0) -> int:
    ...     '''Add two integers.'''
    ...     return a + b
    >>> add.spec.parameters["required"]
    ['a']
    >>> add.run({"a": 2, "b": 3})
    ('5', False)
    >>> add.run({"a": "two"})[0]
    "invalid arguments for tool 'add': Expected `int`, got `str` - at `$.a`"
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, overload

import msgspec

__all__ = ["Tool", "ToolSpec", "arguments_problem", "tool"]


class ToolSpec(msgspec.Struct, frozen=True):
    """What a model is told about a tool: its name, description and JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


class Tool:
    """A callable tool with its schema; build one with `@tool`.

    Calling the `Tool` calls the function directly. `run(arguments)` is what the agent uses:
    it validates `arguments` (a JSON object) and returns `(text, is_error)`.
    """

    def __init__(
        self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        hints = typing.get_type_hints(fn)
        signature = inspect.signature(fn)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for param in signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise TypeError(
                    f"tool {self.name!r}: parameter {param.name!r} must be a plain or "
                    "keyword argument (no *args, **kwargs or positional-only)"
                )
            annotation = hints.get(param.name, Any)
            if param.default is inspect.Parameter.empty:
                fields.append((param.name, annotation))
            else:
                fields.append((param.name, annotation, param.default))
        self._arguments_type = msgspec.defstruct(
            f"{self.name}_arguments", fields, forbid_unknown_fields=True
        )
        self.spec = ToolSpec(
            name=self.name,
            description=description or inspect.cleandoc(fn.__doc__ or "").strip(),
            parameters=_inline_schema(self._arguments_type),
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def run(self, arguments: dict[str, Any]) -> tuple[str, bool]:
        """Validate `arguments` and call the tool; returns `(result text, is_error)`."""
        try:
            parsed = msgspec.convert(arguments, self._arguments_type)
        except msgspec.ValidationError as err:
            return f"invalid arguments for tool {self.name!r}: {err}", True
        kwargs = {field: getattr(parsed, field) for field in parsed.__struct_fields__}
        try:
            value = self.fn(**kwargs)
            if isinstance(value, str):
                return value, False
            try:
                return msgspec.json.encode(value).decode(), False
            except (TypeError, msgspec.EncodeError):
                return str(value), False
        # BaseException too: a tool calling sys.exit() or raising KeyboardInterrupt on a tool
        # thread must become an error result, not end the agent's (or the actor's) thread.
        except BaseException as err:
            return f"tool {self.name!r} failed: {type(err).__name__}: {err}", True

    def __repr__(self) -> str:
        return f"<Tool {self.name}{inspect.signature(self.fn)}>"


def arguments_problem(raw: str) -> str:
    """Why `raw` (a tool call's argument text) is not a JSON object, in a few words."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        return f"arguments are not valid JSON ({err})"
    return f"arguments must be a JSON object, got {_json_kind(value)}"


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def _inline_schema(arguments_type: type) -> dict[str, Any]:
    """The object schema of the arguments, with its own `$ref` resolved at the top level."""
    schema = msgspec.json.schema(arguments_type)
    defs: dict[str, Any] = schema.pop("$defs", {})
    ref = schema.get("$ref", "")
    top = dict(defs.pop(ref.rsplit("/", 1)[-1], schema))
    top.pop("title", None)
    if defs:  # nested Structs in the arguments keep their definitions
        top["$defs"] = defs
    top.setdefault("required", [])
    return top


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a typed function a `Tool`: `@tool` or `@tool(name=..., description=...)`."""
    if fn is not None:
        return Tool(fn, name=name, description=description)
    return lambda f: Tool(f, name=name, description=description)
