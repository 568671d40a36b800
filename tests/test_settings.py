"""ModelSettings: validation naming the field, merge, JSON/TOML decoding; retry_after."""

from __future__ import annotations

import pickle
from typing import Any

import msgspec
import pytest

from actor_orch.errors import NetworkError
from actor_orch.models.settings import ModelSettings, merge_settings
from actor_orch.retry import RetryPolicy
from actor_orch.types import AgentResult, AssistantMessage, StopReason, TextContent, ToolCall


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"max_tokens": 1.5}, TypeError, "max_tokens"),
        ({"max_tokens": True}, TypeError, "max_tokens"),
        ({"temperature": -0.1}, ValueError, "temperature"),
        ({"temperature": float("inf")}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": "hot"}, TypeError, "temperature"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"seed": "1"}, TypeError, "seed"),
        ({"stop": 3}, TypeError, "stop"),
        ({"stop": ["a", 3]}, TypeError, r"stop\[1\]"),
        ({"tool_choice": ""}, ValueError, "tool_choice"),
        ({"tool_choice": 3}, TypeError, "tool_choice"),
        ({"parallel_tool_calls": "yes"}, TypeError, "parallel_tool_calls"),
        ({"extra_body": [1]}, TypeError, "extra_body"),
        ({"extra_headers": {"X": 1}}, TypeError, "extra_headers"),
    ],
)
def test_bad_values_raise_naming_the_field(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=f"ModelSettings.{field}"):
        ModelSettings(**kwargs)


def test_merge_lets_the_other_non_none_fields_win() -> None:
    base = ModelSettings(temperature=1.0, max_tokens=100, extra_body={"a": 1})
    over = ModelSettings(max_tokens=10, extra_body={"b": 2})
    assert base.merge(over) == ModelSettings(temperature=1.0, max_tokens=10, extra_body={"b": 2})
    assert base.merge(None) is base
    assert base.merge(ModelSettings()) is base
    assert merge_settings(None, base, None, over) == base.merge(over)
    assert merge_settings(None, None) is None
    with pytest.raises(TypeError, match="ModelSettings"):
        base.merge({"max_tokens": 1})  # type: ignore[arg-type]


def test_stop_is_stored_as_a_tuple_and_settings_are_frozen_and_hashable() -> None:
    settings = ModelSettings(stop=["a", "b"], max_tokens=3)
    assert settings.stop == ("a", "b")
    with pytest.raises(AttributeError):
        settings.max_tokens = 4  # type: ignore[misc]
    assert hash(settings) == hash(ModelSettings(stop=("a", "b"), max_tokens=3))


def test_decodes_from_json_or_a_toml_table_and_encodes_only_set_fields() -> None:
    table = {"max_tokens": 64, "temperature": 0, "stop": ["\n"], "extra_body": {"top_k": 4}}
    settings = msgspec.convert(table, ModelSettings)
    assert settings == ModelSettings(
        max_tokens=64, temperature=0.0, stop=("\n",), extra_body={"top_k": 4}
    )
    assert msgspec.json.decode(msgspec.json.encode(settings)) == table
    with pytest.raises(msgspec.ValidationError, match="max_tokens"):
        msgspec.convert({"max_tokens": 0}, ModelSettings)
    with pytest.raises(msgspec.ValidationError, match="max_token"):
        msgspec.convert({"max_token": 3}, ModelSettings)  # a typo is not silently ignored
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_repr_shows_only_set_fields() -> None:
    assert repr(ModelSettings()) == "ModelSettings()"
    assert repr(ModelSettings(seed=1, max_tokens=2)) == "ModelSettings(max_tokens=2, seed=1)"


def test_retry_policy_honours_a_network_error_retry_after() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=10.0, jitter=False)
    assert policy.delay(1, NetworkError("HTTP 503", retry_after=4.0)) == 4.0
    assert policy.delay(1, NetworkError("HTTP 503", retry_after=40.0)) == 10.0  # capped
    assert policy.delay(1, NetworkError("reset")) == 0.1


def test_network_error_retry_after_pickles() -> None:
    err = pickle.loads(pickle.dumps(NetworkError("HTTP 503", retry_after=2.0)))
    assert (str(err), err.retry_after) == ("network error: HTTP 503", 2.0)
    assert NetworkError("x").args == ("x",)


def test_tool_call_raw_arguments_round_trip_and_are_omitted_when_unset() -> None:
    call = ToolCall("c", "t", {}, raw_arguments='{"a": ')
    assert msgspec.json.decode(msgspec.json.encode(call), type=ToolCall) == call
    assert b"raw_arguments" not in msgspec.json.encode(ToolCall("c", "t", {"a": 1}))


def test_result_without_messages_is_neither_truncated_nor_at_the_turn_limit() -> None:
    empty = AgentResult([], StopReason.LENGTH)
    assert not empty.truncated and not empty.turn_limit_reached
    cut = AgentResult([AssistantMessage([TextContent("x")], StopReason.LENGTH)], StopReason.LENGTH)
    assert cut.truncated
