"""Structured output: read a model's final text as JSON and validate it against a schema.

Example:
    >>> schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    >>> parse_structured('```json\\n{"n": 3}\\n```', schema)
    {'n': 3}
    >>> parse_structured('{"n": "three"}', schema)
    Traceback (most recent call last):
    ...
    actor_orch.structured.InvalidOutput: $.n: 'three' is not of type 'integer'
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import jsonschema.exceptions
import msgspec

__all__ = [
    "MAX_STRUCTURED_REPAIRS",
    "InvalidOutput",
    "OutputSpec",
    "check_schema",
    "parse_structured",
    "repair_prompt",
]

# Repair re-prompts after the first structured answer, so at most 3 answers in all.
MAX_STRUCTURED_REPAIRS = 2

# A reply wrapped in a Markdown code fence, with or without a language tag.
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n(.*?)\n?\s*```", re.DOTALL)


class InvalidOutput(ValueError):
    """The text is not JSON, or not valid against the schema; the message says where."""


def check_schema(schema: dict[str, Any]) -> None:
    """Raise `InvalidOutput` when `schema` itself is not a valid JSON schema."""
    validator = jsonschema.validators.validator_for(schema)
    try:
        validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as err:
        raise InvalidOutput(f"invalid output_schema: {err.message}") from err


def _json_text(text: str) -> str:
    candidate = text.strip()
    fenced = _FENCE.search(candidate)
    if fenced is not None:
        candidate = fenced.group(1).strip()
    return candidate


def parse_structured(text: str, schema: dict[str, Any]) -> Any:
    """The JSON value in `text` (a fenced code block is tolerated), validated against `schema`."""
    try:
        value = msgspec.json.decode(_json_text(text))
    except msgspec.DecodeError as err:
        raise InvalidOutput(f"reply is not valid JSON ({err})") from err
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        raise InvalidOutput(f"{error.json_path}: {error.message}")
    return value


def repair_prompt(problem: str) -> str:
    """The message that asks the model to try again after `problem`."""
    return (
        f"Your previous reply does not satisfy the required JSON schema: {problem}. "
        "Reply again with only the corrected JSON value, no prose."
    )


class OutputSpec:
    """What a typed reply must be: its JSON schema (sent to the model) and how to read it.

    `output_type` is a msgspec Struct, a dataclass, a TypedDict (validated and converted by
    msgspec) or a JSON-schema dict (validated with jsonschema; the value stays plain JSON).

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class City:
        ...     name: str
        ...     population: int
        >>> spec = OutputSpec(City)
        >>> spec.schema["$defs"]["City"]["required"]
        ['name', 'population']
        >>> spec.parse('```json\\n{"name": "Oslo", "population": 700000}\\n```')
        City(name='Oslo', population=700000)
        >>> spec.parse('{"name": "Oslo"}')
        Traceback (most recent call last):
        ...
        actor_orch.structured.InvalidOutput: Object missing required field `population`
    """

    def __init__(self, output_type: object) -> None:
        if isinstance(output_type, dict):
            check_schema(output_type)
            self.schema: dict[str, Any] = output_type
            self._type: Any = None
            return
        try:
            self.schema = msgspec.json.schema(output_type)
        except (TypeError, ValueError) as err:
            raise TypeError(
                "output_type must be a msgspec Struct, a dataclass, a TypedDict or a JSON "
                f"schema dict, got {output_type!r} ({err})"
            ) from None
        self._type = output_type

    def parse(self, text: str) -> Any:
        """The typed value in `text`; `InvalidOutput` says what is wrong (with its path)."""
        if self._type is None:
            return parse_structured(text, self.schema)
        try:
            return msgspec.json.decode(_json_text(text), type=self._type)
        except msgspec.ValidationError as err:
            raise InvalidOutput(str(err)) from err
        except msgspec.DecodeError as err:
            raise InvalidOutput(f"reply is not valid JSON ({err})") from err

    def __repr__(self) -> str:
        kind = "schema" if self._type is None else getattr(self._type, "__name__", "type")
        return f"OutputSpec({kind})"
