"""The AgentError family: retryability, causes, text and pickling."""

from __future__ import annotations

import pickle

import pytest

import actor_orch as ao
from actor_orch.errors import (
    Aborted,
    AgentError,
    AuthError,
    ContentFiltered,
    ContextWindowOverflow,
    ModelThrottled,
    NetworkError,
    PluginError,
    RequestTimeout,
    StreamError,
    StructuredOutputFailed,
)

# One instance of every class in API.md §2, with whether it is retryable.
EXAMPLES: list[tuple[AgentError, bool]] = [
    (ModelThrottled(), True),
    (ModelThrottled(retry_after=2.5), True),
    (NetworkError(ConnectionResetError("connection reset by peer")), True),
    (NetworkError("HTTP 503"), True),
    (ContextWindowOverflow("llama3"), False),
    (StructuredOutputFailed(3, "missing field `x`"), False),
    (AuthError("HTTP 401: bad key"), False),
    (ContentFiltered(), False),
    (ContentFiltered("blocked by policy"), False),
    (StreamError(ValueError("bad chunk")), False),
    (StreamError("unexpected end of stream"), False),
    (Aborted(), False),
    (Aborted("agent aborted"), False),
    (PluginError("orchestrator", "agent not registered: x"), False),
    (PluginError("cache", RuntimeError("disk full")), False),
    (RequestTimeout(), False),
    (RequestTimeout("waited 5s"), False),
]


def example_id(example: tuple[AgentError, bool]) -> str:
    return f"{type(example[0]).__name__}-{example[0]}"


@pytest.mark.parametrize(("error", "retryable"), EXAMPLES, ids=[example_id(e) for e in EXAMPLES])
def test_only_throttling_and_network_errors_are_retryable(
    error: AgentError, retryable: bool
) -> None:
    assert isinstance(error, AgentError)
    assert isinstance(error, Exception)
    assert error.is_retryable() is retryable


def test_the_base_agent_error_is_not_retryable() -> None:
    assert AgentError("x").is_retryable() is False


def test_exactly_the_two_retryable_classes_are_retryable() -> None:
    retryable = {type(e).__name__ for e, _ in EXAMPLES if e.is_retryable()}
    assert retryable == {"ModelThrottled", "NetworkError"}


def test_every_contract_error_class_is_exported_and_an_agent_error() -> None:
    for name in [
        "AgentError",
        "ModelThrottled",
        "NetworkError",
        "ContextWindowOverflow",
        "StructuredOutputFailed",
        "AuthError",
        "ContentFiltered",
        "StreamError",
        "Aborted",
        "PluginError",
        "RequestTimeout",
    ]:
        cls = getattr(ao, name)
        assert issubclass(cls, AgentError), name


def test_model_throttled_keeps_retry_after() -> None:
    assert ModelThrottled(retry_after=2.5).retry_after == 2.5
    assert ModelThrottled(0).retry_after == 0
    assert ModelThrottled().retry_after is None
    assert "2.5" in str(ModelThrottled(retry_after=2.5))


def test_stream_error_keeps_its_cause() -> None:
    cause = ValueError("bad chunk")
    err = StreamError(cause)
    assert err.__cause__ is cause
    assert err.cause is cause
    assert "bad chunk" in str(err)


def test_stream_error_raised_from_keeps_cause_in_traceback_chain() -> None:
    cause = KeyError("k")

    def wrap() -> None:
        try:
            raise cause
        except KeyError as err:
            raise StreamError(err) from err

    with pytest.raises(StreamError) as info:
        wrap()
    assert info.value.__cause__ is cause


def test_stream_error_from_text_has_no_cause() -> None:
    err = StreamError("unexpected end")
    assert err.__cause__ is None
    assert "unexpected end" in str(err)


def test_network_error_keeps_its_cause() -> None:
    cause = ConnectionResetError("reset")
    err = NetworkError(cause)
    assert err.__cause__ is cause
    assert "reset" in str(err)


def test_plugin_error_text_contains_its_name_and_cause() -> None:
    text = str(PluginError("orchestrator", "agent not registered: writer"))
    assert "orchestrator" in text
    assert "agent not registered: writer" in text


def test_plugin_error_with_exception_cause_names_it_and_keeps_it() -> None:
    cause = RuntimeError("disk full")
    err = PluginError("checkpoint-store", cause)
    assert "checkpoint-store" in str(err)
    assert "disk full" in str(err)
    assert err.__cause__ is cause
    assert err.name == "checkpoint-store"


def test_request_timeout_is_a_builtin_timeout_error_and_an_agent_error() -> None:
    err = RequestTimeout()
    assert isinstance(err, TimeoutError)
    assert isinstance(err, AgentError)
    with pytest.raises(TimeoutError):
        raise RequestTimeout("too slow")


def test_error_attributes_are_kept() -> None:
    assert ContextWindowOverflow("gpt").model == "gpt"
    failed = StructuredOutputFailed(3, "bad json")
    assert (failed.attempts, failed.last_error) == (3, "bad json")
    assert "3" in str(failed)
    assert "bad json" in str(failed)
    assert "bad key" in str(AuthError("bad key"))
    assert "gpt" in str(ContextWindowOverflow("gpt"))


@pytest.mark.parametrize(("error", "retryable"), EXAMPLES, ids=[example_id(e) for e in EXAMPLES])
def test_every_error_pickles_with_the_same_type_and_text(
    error: AgentError, retryable: bool
) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args or str(copy.args) == str(error.args)
    assert copy.is_retryable() is retryable


def test_pickled_throttle_keeps_retry_after() -> None:
    copy = pickle.loads(pickle.dumps(ModelThrottled(retry_after=1.25)))
    assert copy.retry_after == 1.25


def test_pickled_stream_error_keeps_a_cause_of_the_same_type() -> None:
    copy = pickle.loads(pickle.dumps(StreamError(ValueError("bad chunk"))))
    assert isinstance(copy.__cause__, ValueError)
    assert str(copy.__cause__) == "bad chunk"


def test_pickled_plugin_error_keeps_its_name() -> None:
    copy = pickle.loads(pickle.dumps(PluginError("orchestrator", "gone")))
    assert copy.name == "orchestrator"
    assert copy.cause == "gone"
