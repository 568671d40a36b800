"""`ModelSettings`: the request options of a model call (max_tokens, temperature, ...).

Settings come from three places, merged in this order (later non-`None` fields win): the model's
own `settings`, the agent's `AgentOptions.settings`, and the `settings=` of one `Agent.prompt`
call. The merged value reaches the model as `ModelRequest.settings`.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

__all__ = ["ModelSettings", "merge_settings"]

# The `tool_choice` strings every OpenAI-compatible server understands; any other string is
# taken as the name of the one tool the model must call.
TOOL_CHOICE_MODES = ("auto", "none", "required")


class ModelSettings(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Options of a model call; a `None` field is not sent, so the server's default applies.

    - `max_tokens`: the most tokens the reply may have (>= 1). Set it: a model that does not
      stop on its own otherwise runs to its context limit. A reply cut by it ends with
      `StopReason.LENGTH` and keeps its text.
    - `temperature` (>= 0), `top_p` (0..1), `seed` (an int, for servers that sample
      reproducibly), `stop` (a string or a sequence of strings that end the reply).
    - `tool_choice`: `"auto"`, `"none"`, `"required"`, the name of a tool the model must call,
      or a raw JSON object sent as it is. `parallel_tool_calls`: allow several calls per turn.
    - `extra_body`: keys merged into the JSON request body as they are (server-specific
      options such as `{"top_k": 40}`); `extra_headers`: HTTP headers added to the call.

    Validated on construction (a `ValueError` / `TypeError` names the field); decodes from JSON
    or TOML with `msgspec.convert(data, ModelSettings)`.

    Example:
        >>> base = ModelSettings(max_tokens=256, temperature=0.2)
        >>> base.merge(ModelSettings(temperature=0.0, stop=["\\n\\n"]))
        ModelSettings(temperature=0.0, max_tokens=256, stop=('\\n\\n',))
        >>> ModelSettings(max_tokens=0)
        Traceback (most recent call last):
        ...
        ValueError: ModelSettings.max_tokens must be an int >= 1, got 0
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | tuple[str, ...] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    extra_body: dict[str, Any] | None = None
    extra_headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, low=0.0)
        _check_number("top_p", self.top_p, low=0.0, high=1.0)
        _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("seed", self.seed, low=None)
        if self.stop is not None and not isinstance(self.stop, str):
            if isinstance(self.stop, bytes | dict) or not _is_sequence(self.stop):
                raise TypeError(
                    f"ModelSettings.stop must be a str or a sequence of str, got {self.stop!r}"
                )
            stop = tuple(self.stop)
            for index, item in enumerate(stop):
                if not isinstance(item, str):
                    raise TypeError(f"ModelSettings.stop[{index}] must be a str, got {item!r}")
            msgspec.structs.force_setattr(self, "stop", stop)  # a list would be mutable
        if self.tool_choice is not None:
            if isinstance(self.tool_choice, str):
                if not self.tool_choice.strip():
                    raise ValueError("ModelSettings.tool_choice must not be an empty string")
            elif not isinstance(self.tool_choice, dict):
                raise TypeError(
                    "ModelSettings.tool_choice must be 'auto', 'none', 'required', a tool name "
                    f"or a dict, got {self.tool_choice!r}"
                )
        parallel = self.parallel_tool_calls
        if parallel is not None and not isinstance(parallel, bool):
            raise TypeError(f"ModelSettings.parallel_tool_calls must be a bool, got {parallel!r}")
        body, headers = self.extra_body, self.extra_headers
        if body is not None and (
            not isinstance(body, dict) or not all(isinstance(key, str) for key in body)
        ):
            raise TypeError(f"ModelSettings.extra_body must be a dict with str keys, got {body!r}")
        if headers is not None and (
            not isinstance(headers, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise TypeError(
                f"ModelSettings.extra_headers must be a dict of str to str, got {headers!r}"
            )

    def merge(self, other: ModelSettings | None) -> ModelSettings:
        """A copy where the non-`None` fields of `other` win (field by field, not key by key)."""
        if other is None:
            return self
        if not isinstance(other, ModelSettings):
            raise TypeError(f"merge needs ModelSettings, got {type(other).__name__}")
        changes = {
            name: value
            for name in other.__struct_fields__
            if (value := getattr(other, name)) is not None
        }
        return msgspec.structs.replace(self, **changes) if changes else self

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={value!r}"
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not None
        )
        return f"ModelSettings({shown})"


def merge_settings(*layers: ModelSettings | None) -> ModelSettings | None:
    """Merge `layers` left to right (later non-`None` fields win); `None` when all are `None`."""
    merged: ModelSettings | None = None
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, ModelSettings):
            raise TypeError(f"settings must be ModelSettings or None, got {layer!r}")
        merged = layer if merged is None else merged.merge(layer)
    return merged


def _is_sequence(value: object) -> bool:
    return isinstance(value, list | tuple)


def _check_number(name: str, value: object, *, low: float, high: float | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"ModelSettings.{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bound = f">= {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise ValueError(f"ModelSettings.{name} must be a finite number {bound}, got {value!r}")


def _check_int(name: str, value: object, *, low: int | None) -> None:
    if value is None:
        return
    bound = "" if low is None else f" >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ModelSettings.{name} must be an int{bound}, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"ModelSettings.{name} must be an int{bound}, got {value!r}")
