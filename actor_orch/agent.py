"""The agent loop: prompt -> model -> tools -> model ... until a reply without tool calls.

Example:
    >>> from actor_orch.models import EchoModel
    >>> agent = Agent(AgentOptions(EchoModel(), name="echo"))
    >>> agent.prompt_text("hello").text
    'hello'
    >>> len(agent.messages)
    2
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from actor_orch.errors import Aborted, AgentError, PluginError, StreamError
from actor_orch.models.base import Model, ModelRequest
from actor_orch.retry import RetryPolicy
from actor_orch.tools import Tool
from actor_orch.types import (
    AgentMessage,
    AgentResult,
    AssistantMessage,
    Cost,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    Usage,
    check_messages,
    user_message,
)

__all__ = ["Agent", "AgentOptions", "OptionsFactory", "RetryPolicy", "build_options"]

# How often a wait on tool threads looks at the abort flag, in seconds.
_ABORT_POLL_S = 0.05


@dataclasses.dataclass(frozen=True)
class AgentOptions:
    """Everything needed to build an `Agent`. Options factories return a fresh one per spawn.

    `max_turns` caps model calls per prompt (None = no cap); `retry=None` disables per-call
    retry. Plain data (a frozen dataclass), so it pickles whenever its model and tools do.

    Example:
        >>> from actor_orch.models import EchoModel
        >>> AgentOptions(EchoModel(), system_prompt="Be brief.", max_turns=4).max_turns
        4
    """

    model: Model
    system_prompt: str = ""
    tools: Sequence[Tool] = ()
    max_turns: int | None = None
    retry: RetryPolicy | None = dataclasses.field(default_factory=RetryPolicy)
    name: str | None = None

    def __post_init__(self) -> None:
        if not callable(getattr(self.model, "complete", None)):
            raise TypeError(
                f"AgentOptions.model must have a complete(request) method, got {self.model!r}"
            )
        if not isinstance(self.system_prompt, str):
            raise TypeError("AgentOptions.system_prompt must be a str")
        object.__setattr__(self, "tools", tuple(self.tools))
        names: set[str] = set()
        for index, item in enumerate(self.tools):
            if not isinstance(item, Tool):
                raise TypeError(
                    f"AgentOptions.tools[{index}] must be a Tool (decorate it with @tool), "
                    f"got {item!r}"
                )
            if item.name in names:
                raise ValueError(f"AgentOptions.tools: duplicate tool name {item.name!r}")
            names.add(item.name)
        if self.max_turns is not None and (
            not isinstance(self.max_turns, int)
            or isinstance(self.max_turns, bool)
            or self.max_turns < 1
        ):
            raise ValueError(f"AgentOptions.max_turns must be >= 1 or None, got {self.max_turns!r}")
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise TypeError(f"AgentOptions.retry must be a RetryPolicy or None, got {self.retry!r}")

    def replace(self, **changes: Any) -> AgentOptions:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


OptionsFactory = Callable[[], AgentOptions]
"""Returns fresh `AgentOptions`; called on every spawn, restart and step."""


def build_options(name: str, factory: OptionsFactory) -> AgentOptions:
    """Call `factory` for agent `name`; any failure is a `PluginError` naming the agent.

    The factory is user code: whatever it raises (any `BaseException`) is contained.
    """
    try:
        options = factory()
    except BaseException as err:
        raise PluginError(
            "orchestrator", f"options factory of agent '{name}' raised: {err!r}"
        ) from err
    if not isinstance(options, AgentOptions):
        raise PluginError(
            "orchestrator",
            f"options factory of agent '{name}' returned {type(options).__name__}, "
            "expected AgentOptions",
        )
    if options.name is None:
        options = options.replace(name=name)
    return options


class Agent:
    """Runs the tool-calling loop of one conversation; the history persists across prompts.

    One prompt runs at a time (a second concurrent `prompt` raises `RuntimeError`). A prompt
    that raises leaves the history as it was. `abort()` may be called from any thread: the
    running (or, when idle, the next) prompt raises `Aborted` at its next model or tool
    boundary. Pass `abort_event` to share one abort signal between several agents; the agent
    then never clears it.

    Example:
        >>> from actor_orch.models import ScriptedModel
        >>> agent = Agent(AgentOptions(ScriptedModel(["first", "second"])))
        >>> agent.prompt_text("a").text, agent.prompt_text("b").text
        ('first', 'second')
    """

    def __init__(self, options: AgentOptions, *, abort_event: threading.Event | None = None):
        if not isinstance(options, AgentOptions):
            raise TypeError(f"Agent needs AgentOptions, got {type(options).__name__}")
        self.options = options
        self._tools = {t.name: t for t in options.tools}
        self._tool_specs = [t.spec for t in options.tools]
        self._history: list[AgentMessage] = []
        self._abort = abort_event if abort_event is not None else threading.Event()
        self._owns_abort = abort_event is None
        self._running = threading.Lock()
        self._log = logger.bind(agent=options.name or "agent")

    @property
    def messages(self) -> list[AgentMessage]:
        """The conversation so far (a copy)."""
        return list(self._history)

    def abort(self) -> None:
        """Ask the running prompt to stop at its next boundary. Thread-safe."""
        self._abort.set()

    def prompt_text(self, text: str, *, output_schema: dict[str, Any] | None = None) -> AgentResult:
        """`prompt` with one user message holding `text`."""
        return self.prompt([user_message(text)], output_schema=output_schema)

    def prompt(
        self,
        messages: Sequence[AgentMessage] | str,
        *,
        output_schema: dict[str, Any] | None = None,
    ) -> AgentResult:
        """Add `messages` to the conversation and run the loop; raises `AgentError`.

        The result holds the messages this prompt added (its input included), why it stopped
        (`LENGTH` when `max_turns` ran out while the model still asked for tools), and the
        usage and cost summed over its model calls.
        """
        if isinstance(messages, str):
            messages = [user_message(messages)]
        added = check_messages(messages)
        if not self._running.acquire(blocking=False):
            raise RuntimeError("this Agent is already running a prompt (one at a time)")
        history_length = len(self._history)
        try:
            self._history.extend(added)
            return self._run(added, output_schema)
        except BaseException as err:
            del self._history[history_length:]
            if isinstance(err, Aborted) and self._owns_abort:
                self._abort.clear()
            raise
        finally:
            self._running.release()

    def _run(self, added: list[AgentMessage], output_schema: dict[str, Any] | None) -> AgentResult:
        usage, cost = Usage(), Cost()
        max_turns = self.options.max_turns
        turns = 0
        while True:
            self._check_abort()
            reply = self._call_model(
                ModelRequest(
                    list(self._history),
                    self.options.system_prompt,
                    list(self._tool_specs),
                    output_schema,
                )
            )
            turns += 1
            self._history.append(reply)
            added.append(reply)
            usage += reply.usage
            cost += reply.cost
            calls = reply.tool_calls
            if not calls:
                stop = (
                    StopReason.STOP
                    if reply.stop_reason is StopReason.TOOL_USE
                    else reply.stop_reason
                )
                return AgentResult(added, stop, usage, cost)
            self._check_abort()
            results = self._run_tools(calls)
            self._history.extend(results)
            added.extend(results)
            if max_turns is not None and turns >= max_turns:
                self._log.debug("max_turns={} reached with tools still requested", max_turns)
                return AgentResult(added, StopReason.LENGTH, usage, cost)

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise Aborted("agent aborted")

    def _call_model(self, request: ModelRequest) -> AssistantMessage:
        policy = self.options.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = self.options.model.complete(request)
            except AgentError as err:
                if policy is None or not err.is_retryable() or attempt >= policy.max_attempts:
                    raise
                delay = policy.delay(attempt, err)
                self._log.info("model call failed ({}); retry {} in {:.3f}s", err, attempt, delay)
                if self._abort.wait(delay):
                    raise Aborted("agent aborted during retry backoff") from err
                continue
            except Exception as err:
                raise StreamError(err) from err
            if not isinstance(reply, AssistantMessage):
                raise StreamError(
                    f"model {self.options.model!r} returned {type(reply).__name__}, "
                    "expected AssistantMessage"
                )
            return reply

    def _run_tools(self, calls: list[ToolCall]) -> list[ToolResultMessage]:
        if len(calls) == 1:
            return [self._run_tool(calls[0])]
        results: list[ToolResultMessage | None] = [None] * len(calls)

        def run(index: int) -> None:
            results[index] = self._run_tool(calls[index])

        threads = [
            threading.Thread(target=run, args=(i,), name=f"tool-{c.name}", daemon=True)
            for i, c in enumerate(calls)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(_ABORT_POLL_S)
                self._check_abort()
        return [
            r if r is not None else _error_result(c, f"tool {c.name!r} crashed")
            for r, c in zip(results, calls, strict=True)
        ]

    def _run_tool(self, call: ToolCall) -> ToolResultMessage:
        found = self._tools.get(call.name)
        if found is None:
            known = ", ".join(sorted(self._tools)) or "none"
            return _error_result(call, f"unknown tool {call.name!r} (known: {known})")
        text, is_error = found.run(call.arguments)
        if is_error:
            self._log.debug("tool {} returned an error: {}", call.name, text)
        return ToolResultMessage(call.id, [TextContent(text)], is_error)

    def __repr__(self) -> str:
        name = self.options.name or "agent"
        return (
            f"<Agent {name!r} model={self.options.model!r} messages={len(self._history)} "
            f"tools={sorted(self._tools)}>"
        )


def _error_result(call: ToolCall, text: str) -> ToolResultMessage:
    return ToolResultMessage(call.id, [TextContent(text)], is_error=True)
