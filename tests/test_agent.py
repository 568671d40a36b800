"""The agent loop with offline models: tools, turns, history, retry, abort, usage."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import actor_orch as ao
from actor_orch.agent import Agent, AgentOptions
from actor_orch.errors import (
    Aborted,
    AgentError,
    AuthError,
    ContextWindowOverflow,
    ModelThrottled,
    NetworkError,
    StreamError,
)
from actor_orch.models import EchoModel, FunctionModel, ModelRequest, ScriptedModel
from actor_orch.retry import RetryPolicy
from actor_orch.tools import tool
from actor_orch.types import (
    AssistantMessage,
    Cost,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
    user_message,
)

NO_WAIT = RetryPolicy(max_attempts=3, base_delay=0, max_delay=0)
WAIT_S = 5.0  # upper bound for Event waits; never reached when things work


def calls(*items: tuple[str, str, dict[str, Any]], text: str = "") -> AssistantMessage:
    content: list[Any] = [TextContent(text)] if text else []
    content += [ToolCall(call_id, name, args) for call_id, name, args in items]
    return AssistantMessage(content, StopReason.TOOL_USE)


def tool_results(messages: list[Any]) -> list[ToolResultMessage]:
    return [m for m in messages if isinstance(m, ToolResultMessage)]


def result_text(message: ToolResultMessage) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextContent))


@tool
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


@tool
def fail(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"failed because {reason}")


def make_agent(model: Any, **options: Any) -> Agent:
    options.setdefault("retry", NO_WAIT)
    return Agent(AgentOptions(model, **options))


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


# --- replies and tools ------------------------------------------------------------------------


def test_text_reply_returns_stop_with_the_text() -> None:
    agent = make_agent(ScriptedModel(["hello there"]))
    result = agent.prompt_text("hi")
    assert result.text == "hello there"
    assert result.stop_reason is StopReason.STOP
    assert [type(m) for m in result.messages] == [UserMessage, AssistantMessage]
    assert result.messages[0].content == [TextContent("hi")]
    assert result.error is None


def test_prompt_accepts_a_string_or_a_message_list() -> None:
    agent = make_agent(EchoModel())
    assert agent.prompt("as string").text == "as string"
    assert agent.prompt([user_message("as list")]).text == "as list"


def test_prompt_rejects_things_that_are_not_messages() -> None:
    agent = make_agent(EchoModel())
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        agent.prompt([{"role": "user"}])  # type: ignore[list-item]
    assert agent.messages == []


def test_tool_call_round_trip_sends_result_back_and_returns_final_text() -> None:
    model = ScriptedModel(
        [calls(("c1", "add", {"a": 2, "b": 3}), text="computing"), "the sum is 5"]
    )
    agent = make_agent(model, system_prompt="Be precise.", tools=[add])
    result = agent.prompt_text("what is 2 + 3?")

    assert result.text == "the sum is 5"
    assert result.stop_reason is StopReason.STOP
    assert [type(m) for m in result.messages] == [
        UserMessage,
        AssistantMessage,
        ToolResultMessage,
        AssistantMessage,
    ]
    tool_result = result.messages[2]
    assert tool_result.tool_call_id == "c1"
    assert result_text(tool_result) == "5"
    assert tool_result.is_error is False

    assert len(model.requests) == 2
    first, second = model.requests
    assert isinstance(first, ModelRequest)
    assert first.system_prompt == "Be precise."
    assert first.tools == [add.spec]
    assert first.output_schema is None
    assert [type(m) for m in first.messages] == [UserMessage]
    assert second.system_prompt == "Be precise."
    assert second.tools == [add.spec]
    assert second.messages[-1] == tool_result


def test_a_model_mutating_its_request_does_not_change_later_requests() -> None:
    seen: list[list[str]] = []

    def model(request: ModelRequest) -> str | AssistantMessage:
        seen.append([spec.name for spec in request.tools])
        request.tools.clear()
        request.messages.clear()
        if len(seen) == 1:
            return calls(("c1", "add", {"a": 1}))
        return "done"

    make_agent(FunctionModel(model), tools=[add]).prompt_text("go")
    assert seen == [["add"], ["add"]]


def test_model_request_carries_output_schema() -> None:
    model = ScriptedModel(['{"x": 1}'])
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    make_agent(model).prompt_text("json please", output_schema=schema)
    assert model.requests[0].output_schema == schema


def test_several_tool_calls_run_concurrently_and_results_come_back_in_call_order() -> None:
    barrier = threading.Barrier(2, timeout=2)
    second_done = threading.Event()
    finish_order: list[str] = []

    @tool
    def meet(who: str) -> str:
        """Both calls must be running at once to pass the barrier."""
        barrier.wait()
        if who == "first":
            # Finish after the second call, so completion order differs from call order.
            assert second_done.wait(WAIT_S)
        finish_order.append(who)
        if who == "second":
            second_done.set()
        return f"met {who}"

    model = ScriptedModel(
        [calls(("c1", "meet", {"who": "first"}), ("c2", "meet", {"who": "second"})), "done"]
    )
    result = make_agent(model, tools=[meet]).prompt_text("go")

    results = tool_results(result.messages)
    assert [r.tool_call_id for r in results] == ["c1", "c2"]
    assert [result_text(r) for r in results] == ["met first", "met second"]
    assert [r.is_error for r in results] == [False, False]
    assert finish_order == ["second", "first"]
    assert result.text == "done"
    assert model.requests[1].messages[-2:] == results


def test_raising_tool_bad_arguments_and_unknown_tool_become_error_results_and_loop_goes_on() -> (
    None
):
    model = ScriptedModel(
        [
            calls(
                ("c1", "fail", {"reason": "testing"}),
                ("c2", "add", {"a": "not a number"}),
                ("c3", "nonexistent", {}),
                ("c4", "add", {"a": 1, "b": 1}),
            ),
            "recovered",
        ]
    )
    result = make_agent(model, tools=[add, fail]).prompt_text("try everything")

    assert result.text == "recovered"
    assert result.stop_reason is StopReason.STOP
    results = tool_results(result.messages)
    assert [r.tool_call_id for r in results] == ["c1", "c2", "c3", "c4"]
    assert [r.is_error for r in results] == [True, True, True, False]
    texts = [result_text(r) for r in results]
    assert "fail" in texts[0]
    assert "failed because testing" in texts[0]
    assert "add" in texts[1]
    assert "$.a" in texts[1]
    assert "nonexistent" in texts[2]
    assert texts[3] == "2"
    # The model saw the error results.
    assert model.requests[1].messages[-4:] == results


def test_single_raising_tool_becomes_an_error_result() -> None:
    model = ScriptedModel([calls(("c1", "fail", {"reason": "x"})), "ok"])
    result = make_agent(model, tools=[fail]).prompt_text("go")
    (only,) = tool_results(result.messages)
    assert only.is_error is True
    assert "failed because x" in result_text(only)
    assert result.text == "ok"


def test_unknown_tool_with_no_tools_configured_is_an_error_result() -> None:
    model = ScriptedModel([calls(("c1", "ghost", {})), "fine"])
    result = make_agent(model).prompt_text("go")
    (only,) = tool_results(result.messages)
    assert only.is_error is True
    assert "ghost" in result_text(only)
    assert result.text == "fine"


def test_max_turns_reached_while_model_asks_for_tools_returns_length() -> None:
    requests: list[ModelRequest] = []

    def always_tools(request: ModelRequest) -> AssistantMessage:
        requests.append(request)
        return calls((f"c{len(requests)}", "add", {"a": len(requests)}))

    agent = make_agent(FunctionModel(always_tools), tools=[add], max_turns=3)
    result = agent.prompt_text("loop forever")

    assert result.stop_reason is StopReason.LENGTH
    assert len(requests) == 3
    assert len(tool_results(result.messages)) == 3
    assert isinstance(result.messages[-1], ToolResultMessage)
    assert agent.messages == result.messages


def test_max_turns_one_allows_a_plain_text_reply() -> None:
    result = make_agent(ScriptedModel(["short"]), max_turns=1).prompt_text("hi")
    assert result.stop_reason is StopReason.STOP
    assert result.text == "short"


def test_tool_use_stop_reason_without_tool_calls_ends_as_stop() -> None:
    reply = AssistantMessage([TextContent("nothing to call")], StopReason.TOOL_USE)
    result = make_agent(ScriptedModel([reply])).prompt_text("hi")
    assert result.stop_reason is StopReason.STOP


def test_model_length_stop_reason_is_passed_through() -> None:
    reply = AssistantMessage([TextContent("trunc")], StopReason.LENGTH)
    result = make_agent(ScriptedModel([reply])).prompt_text("hi")
    assert result.stop_reason is StopReason.LENGTH
    assert result.text == "trunc"


# --- history ----------------------------------------------------------------------------------


def test_history_persists_across_prompts() -> None:
    requests: list[ModelRequest] = []

    def model(request: ModelRequest) -> str:
        requests.append(request)
        return f"reply {len(requests)}"

    agent = make_agent(FunctionModel(model))
    first = agent.prompt_text("first question")
    second = agent.prompt_text("second question")

    assert first.text == "reply 1"
    assert second.text == "reply 2"
    seen = requests[1].messages
    assert [type(m) for m in seen] == [UserMessage, AssistantMessage, UserMessage]
    assert seen[0].content == [TextContent("first question")]
    assert seen[1].text == "reply 1"
    assert seen[2].content == [TextContent("second question")]
    assert agent.messages == first.messages + second.messages
    # Each result holds only the messages its own prompt added.
    assert len(second.messages) == 2


def test_messages_property_is_a_copy() -> None:
    agent = make_agent(EchoModel())
    agent.prompt_text("x")
    agent.messages.clear()
    assert len(agent.messages) == 2


def test_failed_prompt_leaves_history_unchanged() -> None:
    model = ScriptedModel(["ok", AuthError("bad key")])
    agent = make_agent(model)
    agent.prompt_text("first")
    before = agent.messages

    with pytest.raises(AuthError):
        agent.prompt_text("second")
    assert agent.messages == before


def test_prompt_failing_after_tool_calls_leaves_history_unchanged() -> None:
    model = ScriptedModel(["ok", calls(("c1", "add", {"a": 1})), ContextWindowOverflow("m")])
    agent = make_agent(model, tools=[add])
    agent.prompt_text("first")
    before = agent.messages

    with pytest.raises(ContextWindowOverflow):
        agent.prompt_text("second")
    assert agent.messages == before
    # The model saw the tool result before failing; it is gone from history now.
    assert isinstance(model.requests[-1].messages[-1], ToolResultMessage)


def test_agent_works_again_after_a_failed_prompt() -> None:
    model = ScriptedModel([AuthError("x"), "recovered"])
    agent = make_agent(model)
    with pytest.raises(AuthError):
        agent.prompt_text("one")
    result = agent.prompt_text("two")
    assert result.text == "recovered"
    assert [m.content for m in model.requests[1].messages] == [[TextContent("two")]]


# --- retry ------------------------------------------------------------------------------------


def test_retryable_errors_are_retried_until_success() -> None:
    model = ScriptedModel([NetworkError("reset"), ModelThrottled(), "finally"])
    result = make_agent(model, retry=NO_WAIT).prompt_text("hi")
    assert result.text == "finally"
    assert len(model.requests) == 3
    # A retried call does not add messages: the result holds one user and one reply.
    assert len(result.messages) == 2


def test_retryable_errors_are_raised_after_max_attempts() -> None:
    model = ScriptedModel([NetworkError("1"), NetworkError("2"), NetworkError("3"), "unreached"])
    agent = make_agent(model, retry=NO_WAIT)
    with pytest.raises(NetworkError, match="3"):
        agent.prompt_text("hi")
    assert len(model.requests) == 3
    assert model.remaining == 1
    assert agent.messages == []


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_max_attempts_counts_the_first_call(attempts: int) -> None:
    model = ScriptedModel([ModelThrottled()] * 10)
    policy = RetryPolicy(max_attempts=attempts, base_delay=0, max_delay=0)
    with pytest.raises(ModelThrottled):
        make_agent(model, retry=policy).prompt_text("hi")
    assert len(model.requests) == attempts


def test_retry_none_means_no_retry() -> None:
    model = ScriptedModel([NetworkError("reset"), "unreached"])
    with pytest.raises(NetworkError):
        make_agent(model, retry=None).prompt_text("hi")
    assert len(model.requests) == 1


@pytest.mark.parametrize(
    "error",
    [AuthError("denied"), ContextWindowOverflow("m"), StreamError("broken"), Aborted("stop")],
    ids=lambda e: type(e).__name__,
)
def test_non_retryable_errors_are_not_retried(error: AgentError) -> None:
    model = ScriptedModel([error, "unreached"])
    with pytest.raises(type(error)) as info:
        make_agent(model, retry=NO_WAIT).prompt_text("hi")
    assert info.value is error
    assert len(model.requests) == 1


def test_default_retry_policy_is_three_attempts() -> None:
    assert AgentOptions(EchoModel()).retry == RetryPolicy()


def test_retry_after_is_honoured_between_attempts() -> None:
    times: list[float] = []

    def model(request: ModelRequest) -> str:
        times.append(time.monotonic())
        if len(times) == 1:
            raise ModelThrottled(retry_after=0.05)
        return "ok"

    policy = RetryPolicy(max_attempts=2, base_delay=0, max_delay=1.0, jitter=False)
    result = make_agent(FunctionModel(model), retry=policy).prompt_text("hi")
    assert result.text == "ok"
    assert len(times) == 2
    assert times[1] - times[0] >= 0.045


def test_backoff_delays_grow_between_attempts() -> None:
    times: list[float] = []

    def model(request: ModelRequest) -> str:
        times.append(time.monotonic())
        if len(times) < 3:
            raise NetworkError("flaky")
        return "ok"

    policy = RetryPolicy(max_attempts=3, base_delay=0.02, max_delay=1.0, jitter=False)
    make_agent(FunctionModel(model), retry=policy).prompt_text("hi")
    assert times[1] - times[0] >= 0.018
    assert times[2] - times[1] >= 0.038


# --- model failures ---------------------------------------------------------------------------


def test_unexpected_model_exception_becomes_stream_error_with_cause() -> None:
    boom = ZeroDivisionError("division by zero")

    def model(request: ModelRequest) -> str:
        raise boom

    with pytest.raises(StreamError) as info:
        make_agent(FunctionModel(model)).prompt_text("hi")
    assert info.value.__cause__ is boom
    assert "ZeroDivisionError" in str(info.value)


def test_unexpected_exception_is_not_retried() -> None:
    model = ScriptedModel([KeyError("k"), "unreached"])
    with pytest.raises(StreamError) as info:
        make_agent(model, retry=NO_WAIT).prompt_text("hi")
    assert isinstance(info.value.__cause__, KeyError)
    assert len(model.requests) == 1


def test_function_model_returning_a_wrong_type_is_a_stream_error() -> None:
    with pytest.raises(StreamError) as info:
        make_agent(FunctionModel(lambda request: 42)).prompt_text("hi")  # type: ignore[arg-type,return-value]
    assert isinstance(info.value.__cause__, TypeError)


def test_function_model_may_return_an_assistant_message() -> None:
    reply = AssistantMessage([TextContent("structured")], usage=Usage(1, 2))
    result = make_agent(FunctionModel(lambda request: reply)).prompt_text("hi")
    assert result.text == "structured"
    assert result.usage == Usage(1, 2)


def test_scripted_model_exhaustion_raises_stream_error() -> None:
    model = ScriptedModel(["only one"])
    agent = make_agent(model)
    assert agent.prompt_text("a").text == "only one"
    with pytest.raises(StreamError, match="exhausted"):
        agent.prompt_text("b")


def test_scripted_model_rejects_bad_script_items() -> None:
    with pytest.raises(TypeError, match=r"responses\[1\]"):
        ScriptedModel(["ok", 42])  # type: ignore[list-item]


def test_echo_model_echoes_the_last_user_message() -> None:
    agent = Agent(AgentOptions(EchoModel()))
    assert agent.prompt_text("ping").text == "ping"
    assert agent.prompt_text("pong").text == "pong"
    direct = EchoModel().complete(ModelRequest([user_message("a"), user_message("b")]))
    assert direct.text == "b"
    assert EchoModel().complete(ModelRequest([])).text == ""


# --- abort ------------------------------------------------------------------------------------


def test_abort_from_another_thread_stops_at_next_boundary_and_later_prompt_works() -> None:
    started = threading.Event()
    release = threading.Event()

    @tool
    def slow() -> str:
        """Blocks until released."""
        started.set()
        assert release.wait(WAIT_S)
        return "slow done"

    model = ScriptedModel([calls(("c1", "slow", {})), "unreached", "after abort"])
    agent = make_agent(model, tools=[slow])
    thread, outcome = run_in_thread(lambda: agent.prompt_text("start"))

    assert started.wait(WAIT_S)
    agent.abort()
    release.set()
    thread.join(WAIT_S)
    assert not thread.is_alive()

    assert isinstance(outcome.get("error"), Aborted)
    assert len(model.requests) == 1  # the model was not called after the abort
    assert agent.messages == []
    assert agent.prompt_text("again").text == "unreached"


def test_abort_does_not_wait_for_concurrent_tools_to_finish() -> None:
    started = threading.Barrier(3, timeout=2)
    release = threading.Event()

    @tool
    def hang(n: int) -> str:
        """Blocks until released."""
        started.wait()
        release.wait(WAIT_S)
        return "late"

    model = ScriptedModel([calls(("c1", "hang", {"n": 1}), ("c2", "hang", {"n": 2}))])
    agent = make_agent(model, tools=[hang])
    thread, outcome = run_in_thread(lambda: agent.prompt_text("start"))
    try:
        started.wait()
        agent.abort()
        thread.join(WAIT_S)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), Aborted)
        assert not release.is_set()
    finally:
        release.set()


def test_abort_during_retry_backoff_raises_aborted_promptly() -> None:
    called = threading.Event()

    def model(request: ModelRequest) -> str:
        called.set()
        raise NetworkError("down")

    policy = RetryPolicy(max_attempts=5, base_delay=30.0, max_delay=30.0, jitter=False)
    agent = make_agent(FunctionModel(model), retry=policy)
    thread, outcome = run_in_thread(lambda: agent.prompt_text("hi"))
    assert called.wait(WAIT_S)
    agent.abort()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, Aborted)
    assert isinstance(error.__cause__, NetworkError)


def test_abort_while_idle_aborts_only_the_next_prompt() -> None:
    model = ScriptedModel(["works"])
    agent = make_agent(model)
    agent.abort()
    with pytest.raises(Aborted):
        agent.prompt_text("first")
    assert model.requests == []
    assert agent.prompt_text("second").text == "works"


def test_shared_abort_event_is_never_cleared_by_the_agent() -> None:
    shared = threading.Event()
    agents = [Agent(AgentOptions(EchoModel(), retry=None), abort_event=shared) for _ in range(2)]
    shared.set()
    for agent in agents:
        with pytest.raises(Aborted):
            agent.prompt_text("x")
    assert shared.is_set()


def test_second_concurrent_prompt_raises_runtime_error() -> None:
    started = threading.Event()
    release = threading.Event()

    @tool
    def block() -> str:
        """Blocks until released."""
        started.set()
        release.wait(WAIT_S)
        return "ok"

    agent = make_agent(ScriptedModel([calls(("c1", "block", {})), "done"]), tools=[block])
    thread, outcome = run_in_thread(lambda: agent.prompt_text("first"))
    try:
        assert started.wait(WAIT_S)
        with pytest.raises(RuntimeError, match="already running"):
            agent.prompt_text("second")
    finally:
        release.set()
    thread.join(WAIT_S)
    assert outcome["result"].text == "done"


# --- usage and cost ---------------------------------------------------------------------------


def test_usage_and_cost_are_summed_over_turns() -> None:
    first = AssistantMessage(
        [ToolCall("c1", "add", {"a": 1})],
        StopReason.TOOL_USE,
        usage=Usage(10, 2, 1, 0),
        cost=Cost(0.25, 0.125, 0.125),
    )
    second = AssistantMessage(
        [TextContent("done")], usage=Usage(20, 3, 0, 4), cost=Cost(0.5, 0.25, 0.25)
    )
    result = make_agent(ScriptedModel([first, second]), tools=[add]).prompt_text("go")
    assert result.usage == Usage(30, 5, 1, 4)
    assert result.cost == Cost(0.75, 0.375, 0.375)


def test_usage_is_per_prompt_not_cumulative() -> None:
    replies = [AssistantMessage([TextContent(t)], usage=Usage(5, 5)) for t in ("a", "b")]
    agent = make_agent(ScriptedModel(replies))
    agent.prompt_text("1")
    assert agent.prompt_text("2").usage == Usage(5, 5)


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3"])
def test_bad_max_turns_raises_naming_the_field(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_turns"):
        AgentOptions(EchoModel(), max_turns=bad)


def test_non_tool_in_tools_raises_naming_the_field() -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"tools\[1\]"):
        AgentOptions(EchoModel(), tools=[add, plain])  # type: ignore[list-item]


def test_duplicate_tool_names_raise_naming_the_tool() -> None:
    other = tool(name="add")(lambda a: a)
    with pytest.raises(ValueError, match="duplicate tool name 'add'"):
        AgentOptions(EchoModel(), tools=[add, other])


def test_model_without_complete_raises_naming_the_field() -> None:
    with pytest.raises(TypeError, match="model"):
        AgentOptions(object())  # type: ignore[arg-type]


def test_bad_retry_raises_naming_the_field() -> None:
    with pytest.raises(TypeError, match="retry"):
        AgentOptions(EchoModel(), retry=3)  # type: ignore[arg-type]


def test_bad_system_prompt_raises_naming_the_field() -> None:
    with pytest.raises(TypeError, match="system_prompt"):
        AgentOptions(EchoModel(), system_prompt=None)  # type: ignore[arg-type]


def test_options_defaults_and_replace_revalidates() -> None:
    options = AgentOptions(EchoModel())
    assert options.system_prompt == ""
    assert options.tools == ()
    assert options.max_turns is None
    assert options.name is None
    assert options.replace(max_turns=2).max_turns == 2
    with pytest.raises(ValueError, match="max_turns"):
        options.replace(max_turns=0)


def test_agent_needs_agent_options() -> None:
    with pytest.raises(TypeError, match="AgentOptions"):
        Agent(EchoModel())  # type: ignore[arg-type]


def test_agent_names_are_exported() -> None:
    assert ao.Agent is Agent
    assert ao.AgentOptions is AgentOptions
    assert ao.RetryPolicy is RetryPolicy
