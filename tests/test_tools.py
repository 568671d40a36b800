"""@tool: JSON schema from the signature, validated arguments, errors as tool results."""

from __future__ import annotations

import json
from typing import Any

import pytest

import actor_orch as ao
from actor_orch.tools import Tool, ToolSpec, tool


@tool
def forecast(
    city: str,
    days: int = 3,
    units: list[str] | None = None,
    ratio: float = 1.0,
    detailed: bool = False,
) -> dict[str, Any]:
    """Weather forecast for a city.

    Returns one entry per day.
    """
    return {"city": city, "days": days, "units": units, "ratio": ratio, "detailed": detailed}


def test_tool_decorator_returns_a_tool_with_a_spec() -> None:
    assert isinstance(forecast, Tool)
    assert isinstance(forecast.spec, ToolSpec)
    assert forecast.name == "forecast"
    assert forecast.spec.name == "forecast"
    assert ao.tool is tool


def test_schema_marks_parameters_without_defaults_as_required() -> None:
    params = forecast.spec.parameters
    assert params["type"] == "object"
    assert params["required"] == ["city"]
    assert set(params["properties"]) == {"city", "days", "units", "ratio", "detailed"}


def test_schema_types_come_from_annotations() -> None:
    props = forecast.spec.parameters["properties"]
    assert props["city"]["type"] == "string"
    assert props["days"]["type"] == "integer"
    assert props["ratio"]["type"] == "number"
    assert props["detailed"]["type"] == "boolean"
    assert {"type": "array", "items": {"type": "string"}} in props["units"]["anyOf"]
    assert {"type": "null"} in props["units"]["anyOf"]


def test_schema_carries_defaults_of_optional_parameters() -> None:
    props = forecast.spec.parameters["properties"]
    assert props["days"]["default"] == 3
    assert props["units"]["default"] is None
    assert "default" not in props["city"]


def test_schema_is_self_contained_and_forbids_unknown_arguments() -> None:
    params = forecast.spec.parameters
    assert "$ref" not in params
    assert "title" not in params
    assert params["additionalProperties"] is False
    json.dumps(params)  # plain JSON


def test_description_is_the_cleaned_docstring() -> None:
    assert forecast.spec.description == "Weather forecast for a city.\n\nReturns one entry per day."


def test_tool_without_docstring_or_parameters() -> None:
    @tool
    def ping() -> str:
        return "pong"

    assert ping.spec.description == ""
    assert ping.spec.parameters["properties"] == {}
    assert ping.spec.parameters["required"] == []
    assert ping.run({}) == ("pong", False)


def test_tool_with_name_and_description_overrides() -> None:
    @tool(name="web_search", description="Search the web.")
    def search(query: str) -> str:
        """Ignored docstring."""
        return f"results for {query}"

    assert search.name == "web_search"
    assert search.spec.name == "web_search"
    assert search.spec.description == "Search the web."
    assert search.spec.parameters["required"] == ["query"]
    assert search.run({"query": "x"}) == ("results for x", False)


def test_tool_with_only_a_name_keeps_the_docstring() -> None:
    @tool(name="renamed")
    def original(x: int) -> int:
        """Doubles x."""
        return 2 * x

    assert original.spec.name == "renamed"
    assert original.spec.description == "Doubles x."


def test_calling_a_tool_calls_the_function_directly() -> None:
    assert forecast("Oslo", days=1)["days"] == 1


def test_run_validates_and_passes_defaults() -> None:
    text, is_error = forecast.run({"city": "Oslo"})
    assert is_error is False
    assert json.loads(text) == {
        "city": "Oslo",
        "days": 3,
        "units": None,
        "ratio": 1.0,
        "detailed": False,
    }


def test_run_accepts_all_arguments() -> None:
    args = {"city": "Rome", "days": 5, "units": ["C"], "ratio": 0.5, "detailed": True}
    text, is_error = forecast.run(args)
    assert is_error is False
    assert json.loads(text) == args


def test_wrong_argument_type_is_an_error_naming_the_field_and_tool() -> None:
    text, is_error = forecast.run({"city": "Oslo", "days": "three"})
    assert is_error is True
    assert "forecast" in text
    assert "$.days" in text


def test_wrong_nested_argument_type_names_the_path() -> None:
    text, is_error = forecast.run({"city": "Oslo", "units": ["C", 3]})
    assert is_error is True
    assert "$.units[1]" in text


def test_missing_required_argument_is_an_error_naming_it() -> None:
    text, is_error = forecast.run({"days": 2})
    assert is_error is True
    assert "city" in text
    assert "forecast" in text


def test_unknown_argument_is_an_error_naming_it() -> None:
    text, is_error = forecast.run({"city": "Oslo", "colour": "blue"})
    assert is_error is True
    assert "colour" in text


def test_invalid_arguments_do_not_call_the_function() -> None:
    calls: list[int] = []

    @tool
    def record(n: int) -> str:
        calls.append(n)
        return "ok"

    assert record.run({"n": "x"})[1] is True
    assert calls == []


def test_raising_tool_gives_error_text_naming_tool_and_error() -> None:
    @tool
    def explode(reason: str) -> str:
        raise ValueError(f"cannot do {reason}")

    text, is_error = explode.run({"reason": "that"})
    assert is_error is True
    assert "explode" in text
    assert "ValueError" in text
    assert "cannot do that" in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}),
        ([1, "two", None], [1, "two", None]),
        (42, 42),
        (2.5, 2.5),
        (True, True),
        (None, None),
    ],
)
def test_non_str_results_are_json_encoded(value: object, expected: object) -> None:
    @tool
    def give() -> object:
        return value

    text, is_error = give.run({})
    assert is_error is False
    assert json.loads(text) == expected


def test_str_results_are_returned_unchanged() -> None:
    @tool
    def say() -> str:
        return '"quoted" text'

    assert say.run({}) == ('"quoted" text', False)


def test_results_json_cannot_encode_fall_back_to_str() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque-value"

    @tool
    def give() -> object:
        return Opaque()

    assert give.run({}) == ("opaque-value", False)


def test_var_positional_parameters_are_rejected() -> None:
    def f(*args: int) -> int:
        return 0

    with pytest.raises(TypeError, match="args"):
        tool(f)


def test_var_keyword_parameters_are_rejected() -> None:
    def f(a: int, **kwargs: int) -> int:
        return a

    with pytest.raises(TypeError, match="kwargs"):
        tool(f)


def test_positional_only_parameters_are_rejected() -> None:
    def f(a: int, /) -> int:
        return a

    with pytest.raises(TypeError, match="'a'"):
        tool(f)


def test_keyword_only_parameters_are_allowed() -> None:
    @tool
    def f(*, a: int, b: int = 1) -> int:
        return a + b

    assert f.spec.parameters["required"] == ["a"]
    assert f.run({"a": 2}) == ("3", False)


def test_unannotated_parameters_accept_anything() -> None:
    @tool
    def f(x, y=1):  # type: ignore[no-untyped-def]
        return [x, y]

    assert f.spec.parameters["required"] == ["x"]
    assert json.loads(f.run({"x": {"k": "v"}})[0]) == [{"k": "v"}, 1]
