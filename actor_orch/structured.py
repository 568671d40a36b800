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

__all__ = ["InvalidOutput", "check_schema", "parse_structured", "repair_prompt"]

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


def parse_structured(text: str, schema: dict[str, Any]) -> Any:
    """The JSON value in `text` (a fenced code block is tolerated), validated against `schema`."""
    candidate = text.strip()
    fenced = _FENCE.search(candidate)
    if fenced is not None:
        candidate = fenced.group(1).strip()
    try:
        value = msgspec.json.decode(candidate)
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
