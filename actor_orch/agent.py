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

import contextlib
import contextvars
import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

if TYPE_CHECKING:
    from loguru import Logger

from actor_orch import _trace
from actor_orch.errors import Aborted, AgentError, PluginError, StreamError, StructuredOutputFailed
from actor_orch.events import Event, ModelCallFinished, ToolCallFinished
from actor_orch.models.base import FinalMessage, Model, ModelRequest, model_events
from actor_orch.models.settings import ModelSettings, merge_settings
from actor_orch.retry import RetryPolicy
from actor_orch.structured import MAX_STRUCTURED_REPAIRS, InvalidOutput, OutputSpec, repair_prompt
from actor_orch.tools import Tool, arguments_problem
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
    UserMessage,
    check_messages,
    user_message,
)

__all__ = [
    "Agent",
    "AgentOptions",
    "OptionsFactory",
    "RetryPolicy",
    "TextDeltaHook",
    "build_options",
    "trim_history",
]

# Called with each piece of reply text as the model produces it: `Agent.prompt(on_text_delta=)`.
TextDeltaHook = Callable[[str], None]

# How often a wait on tool threads looks at the abort flag, in seconds.
_ABORT_POLL_S = 0.05


@dataclasses.dataclass(frozen=True)
class AgentOptions:
    """Everything needed to build an `Agent`. Options factories return a fresh one per spawn.

    `max_turns` caps model calls per prompt (None = no cap); `retry=None` disables per-call
    retry. `settings` (a `ModelSettings`) applies to every model call of the agent, over the
    model's own settings and under a prompt's `settings=`. `history_limit` is the most messages
    the conversation keeps: older whole turns are dropped first (see `trim_history`).
    Plain data (a frozen dataclass), so it pickles whenever its model and tools do.

    Example:
        >>> from actor_orch.models import EchoModel, ModelSettings
        >>> options = AgentOptions(EchoModel(), settings=ModelSettings(max_tokens=64), max_turns=4)
        >>> options.max_turns, options.settings.max_tokens
        (4, 64)
    """

    model: Model
    system_prompt: str = ""
    tools: Sequence[Tool] = ()
    max_turns: int | None = None
    retry: RetryPolicy | None = dataclasses.field(default_factory=RetryPolicy)
    name: str | None = None
    settings: ModelSettings | None = None
    history_limit: int | None = None
    delegates: Sequence[str] | bool = ()
    """Agents this one may hand tasks to through a `delegate` tool (API §10): names of agents
    registered with the orchestrator, or `True` for every child registered under it."""

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
        if self.settings is not None and not isinstance(self.settings, ModelSettings):
            raise TypeError(
                f"AgentOptions.settings must be a ModelSettings or None, got {self.settings!r}"
            )
        if self.history_limit is not None and (
            not isinstance(self.history_limit, int)
            or isinstance(self.history_limit, bool)
            or self.history_limit < 1
        ):
            limit = self.history_limit
            raise ValueError(
                f"AgentOptions.history_limit must be an int >= 1 or None, got {limit!r}"
            )
        if not isinstance(self.delegates, bool):
            if isinstance(self.delegates, str):
                raise TypeError("AgentOptions.delegates must be a list of agent names, not a str")
            object.__setattr__(self, "delegates", tuple(self.delegates))
            for index, name in enumerate(self.delegates):
                if not isinstance(name, str) or not name:
                    raise TypeError(
                        f"AgentOptions.delegates[{index}] must be a non-empty str, got {name!r}"
                    )

    def replace(self, **changes: Any) -> AgentOptions:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _listening(on_event: Callable[[Event], object] | None) -> bool:
    """Whether events given to `on_event` reach anybody (an `EventBus` says when not)."""
    return on_event is not None and getattr(on_event, "live", True)


class AbortSignal(Protocol):
    """What aborts a prompt: a `threading.Event`, or anything with its `is_set()`."""

    def is_set(self) -> bool: ...


# The abort signals of the prompt running on this thread (and in its tools' threads).
_prompt_aborts: contextvars.ContextVar[tuple[AbortSignal, ...]] = contextvars.ContextVar(
    "actor_orch_prompt_aborts", default=()
)


def current_prompt_aborts() -> tuple[AbortSignal, ...]:
    """The signals that abort the prompt running on this thread (empty outside a prompt).

    A tool that starts long work of its own (delegated steps) watches them to stop with it.
    """
    return _prompt_aborts.get()


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
        # Validated already (and frozen): a shallow copy with the name, not a revalidation.
        options = copy.copy(options)
        object.__setattr__(options, "name", name)
    return options


class Agent:
    """Runs the tool-calling loop of one conversation; the history persists across prompts.

    One prompt runs at a time (a second concurrent `prompt` raises `RuntimeError`). A prompt
    that raises leaves the history as it was. `abort()` may be called from any thread: the
    running (or, when idle, the next) prompt raises `Aborted` at its next model, tool or
    streamed-text boundary. Pass `abort_event` to share one abort signal between several
    agents; the agent then never clears it.

    Nothing the model or a tool raises escapes as anything but an `AgentError`: a model's
    non-`AgentError` exception (even `KeyboardInterrupt` or `SystemExit`) becomes `StreamError`
    with `__cause__` kept; a tool's becomes an error tool result and the loop goes on.

    Example:
        >>> from actor_orch.models import ScriptedModel
        >>> agent = Agent(AgentOptions(ScriptedModel(["first", "second"])))
        >>> agent.prompt_text("a").text, agent.prompt_text("b").text
        ('first', 'second')
        >>> pieces = []
        >>> Agent(AgentOptions(ScriptedModel(["streamed word by word"]))).prompt(
        ...     "go", on_text_delta=pieces.append
        ... ).text == "".join(pieces)
        True
        >>> pieces
        ['streamed ', 'word ', 'by ', 'word']
    """

    def __init__(
        self,
        options: AgentOptions,
        *,
        abort_event: threading.Event | None = None,
        history: Sequence[AgentMessage] = (),
        on_event: Callable[[Event], object] | None = None,
        task_id: str | None = None,
    ):
        if not isinstance(options, AgentOptions):
            raise TypeError(f"Agent needs AgentOptions, got {type(options).__name__}")
        self.options = options
        self._on_event = on_event  # receives ModelCallFinished / ToolCallFinished
        self._task_id = task_id
        self._name = options.name or "agent"
        self._tools = {t.name: t for t in options.tools}
        self._tool_specs = [t.spec for t in options.tools]
        # `history` continues an earlier conversation (a session loaded from a store).
        self._history: list[AgentMessage] = trim_history(
            check_messages(history), options.history_limit
        )
        self._committed = self._history  # never mutated once a prompt has replaced it
        self._abort = abort_event if abort_event is not None else threading.Event()
        self._owns_abort = abort_event is None
        self._running = threading.Lock()
        self._prompt_abort: AbortSignal | None = None
        # The model's own settings, read once: they sit under the agent's and the call's.
        self._settings = merge_settings(_model_settings(options.model), options.settings)

    @property
    def _log(self) -> Logger:
        return logger.bind(agent=self._name)

    @property
    def messages(self) -> list[AgentMessage]:
        """The conversation so far (a copy)."""
        return list(self._history)

    def abort(self) -> None:
        """Ask the running prompt to stop at its next boundary. Thread-safe."""
        self._abort.set()

    def prompt_text(
        self,
        text: str,
        *,
        output_type: object = None,
        output_schema: dict[str, Any] | None = None,
        settings: ModelSettings | None = None,
        on_text_delta: TextDeltaHook | None = None,
        abort: AbortSignal | None = None,
    ) -> AgentResult:
        """`prompt` with one user message holding `text`."""
        return self.prompt(
            [user_message(text)],
            output_type=output_type,
            output_schema=output_schema,
            settings=settings,
            on_text_delta=on_text_delta,
            abort=abort,
        )

    def prompt(
        self,
        messages: Sequence[AgentMessage] | str,
        *,
        output_type: object = None,
        output_schema: dict[str, Any] | None = None,
        settings: ModelSettings | None = None,
        on_text_delta: TextDeltaHook | None = None,
        abort: AbortSignal | None = None,
    ) -> AgentResult:
        """Add `messages` to the conversation and run the loop; raises `AgentError`.

        The result holds the messages this prompt added (its input included), why it stopped,
        and the usage and cost summed over its model calls. `stop_reason` is `LENGTH` both when
        `max_turns` ran out while the model still asked for tools and when the final reply was
        cut by the token limit; `AgentResult.turn_limit_reached` / `.truncated` tell them apart.

        `output_type` (a msgspec Struct, dataclass, TypedDict or JSON-schema dict;
        `output_schema` is the same for a dict): the schema is sent to the model, the final
        reply is validated, up to two repair re-prompts ask the model to fix it, and
        `AgentResult.output` holds the typed value; when it cannot be had the prompt raises
        `StructuredOutputFailed` (and the history is left as it was).

        `settings` apply to this prompt's model calls, over the agent's and the model's.
        `on_text_delta(text)` is called on this thread with each piece of every assistant
        message's text, in order, as the model produces it (with `model.stream` when the model
        has one, else once per reply). A failed model call is retried by the retry policy only
        while nothing of its reply has been delivered, so no text is ever delivered twice; an
        error after the first delta fails the prompt. A hook that raises fails the prompt with
        `PluginError("on_text_delta", ...)`. `abort`: an event that aborts this prompt only
        (at its next boundary), besides `abort()`.
        """
        if isinstance(messages, str):
            messages = [user_message(messages)]
        added = check_messages(messages)
        if settings is not None and not isinstance(settings, ModelSettings):
            raise TypeError(f"settings must be a ModelSettings or None, got {settings!r}")
        if on_text_delta is not None and not callable(on_text_delta):
            raise TypeError(f"on_text_delta must be callable or None, got {on_text_delta!r}")
        if output_type is None and output_schema is not None:
            output_type = output_schema
        spec = (
            output_type
            if output_type is None or isinstance(output_type, OutputSpec)
            else OutputSpec(output_type)
        )
        return self.run_checked(added, spec, on_text_delta, abort, settings)

    def run_checked(
        self,
        added: list[AgentMessage],
        spec: OutputSpec | None,
        on_text_delta: TextDeltaHook | None,
        abort: AbortSignal | None,
        settings: ModelSettings | None = None,
    ) -> AgentResult:
        """`prompt` for arguments already checked (the orchestrator's actors call this);
        `added` becomes the result's message list."""
        if not self._running.acquire(blocking=False):
            raise RuntimeError("this Agent is already running a prompt (one at a time)")
        before = self._history
        self._prompt_abort = abort
        aborts = (self._abort,) if abort is None else (self._abort, abort)
        token = _prompt_aborts.set(aborts)
        try:
            # A new list: the one a caller may still hold (`history_snapshot`) never changes.
            self._history = trim_history([*before, *added], self.options.history_limit)
            if spec is None:
                result = self._run(added, None, settings, on_text_delta)
            else:
                result = self._run_typed(added, spec, settings, on_text_delta)
            # Aborted during its last model call: the caller was told so (a cancelled stream,
            # a send that timed out), so the exchange must not enter the conversation.
            self._check_abort()
            self._history = trim_history(self._history, self.options.history_limit)
            self._committed = self._history
            return result
        except BaseException as err:
            self._history = before
            if isinstance(err, Aborted) and self._owns_abort:
                self._abort.clear()
            raise
        finally:
            _prompt_aborts.reset(token)
            self._prompt_abort = None
            self._running.release()

    def history_snapshot(self) -> list[AgentMessage]:
        """The conversation as of the last finished prompt, safe to read from any thread
        while a prompt runs: a list no prompt changes later (no copy; do not modify it)."""
        return self._committed

    def _run_typed(
        self,
        added: list[AgentMessage],
        spec: OutputSpec,
        settings: ModelSettings | None,
        on_text_delta: TextDeltaHook | None,
    ) -> AgentResult:
        result = self._run(added, spec.schema, settings, on_text_delta)
        usage, cost = result.usage, result.cost
        for attempt in range(1, MAX_STRUCTURED_REPAIRS + 2):
            try:
                value = spec.parse(result.text)
            except InvalidOutput as err:
                if attempt > MAX_STRUCTURED_REPAIRS:
                    raise StructuredOutputFailed(attempt, str(err)) from None
                self._log.debug("typed output invalid ({}); repair {}", err, attempt)
                repair = [user_message(repair_prompt(str(err)))]
                self._history.extend(repair)
                added.extend(repair)
                result = self._run(added, spec.schema, settings, on_text_delta)
                usage, cost = usage + result.usage, cost + result.cost
                continue
            return AgentResult(result.messages, result.stop_reason, usage, cost, output=value)
        raise AssertionError("unreachable: the loop returns or raises on its last attempt")

    def _run(
        self,
        added: list[AgentMessage],
        output_schema: dict[str, Any] | None,
        settings: ModelSettings | None,
        on_text_delta: TextDeltaHook | None,
    ) -> AgentResult:
        usage, cost = Usage(), Cost()
        max_turns = self.options.max_turns
        merged = merge_settings(self._settings, settings)
        turns = 0
        while True:
            self._check_abort()
            request = ModelRequest(
                list(self._history),
                self.options.system_prompt,
                list(self._tool_specs),
                output_schema,
                merged,
            )
            reply = self._observed_model_call(request, on_text_delta)
            self._check_abort()  # aborted while the model ran: its reply is discarded
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
        prompt_abort = self._prompt_abort
        if self._abort.is_set() or (prompt_abort is not None and prompt_abort.is_set()):
            raise Aborted("agent aborted")

    def _call_model(
        self, request: ModelRequest, on_text_delta: TextDeltaHook | None
    ) -> AssistantMessage:
        policy = self.options.retry
        attempt = 0
        while True:
            attempt += 1
            delivered = [False]  # set once a delta reached the hook: no retry after that
            try:
                if on_text_delta is None:
                    reply = self._complete(request)
                else:
                    reply = self._stream(request, on_text_delta, delivered)
            except AgentError as err:
                if (
                    policy is None
                    or not err.is_retryable()
                    or attempt >= policy.max_attempts
                    or delivered[0]
                ):
                    if delivered[0] and err.is_retryable():
                        self._log.info("model stream failed after text was delivered: {}", err)
                    raise
                delay = policy.delay(attempt, err)
                self._log.info("model call failed ({}); retry {} in {:.3f}s", err, attempt, delay)
                if self._abort.wait(delay):
                    raise Aborted("agent aborted during retry backoff") from err
                continue
            return reply

    def _complete(self, request: ModelRequest) -> AssistantMessage:
        model = self.options.model
        try:
            reply = model.complete(request)
        except AgentError:
            raise
        except BaseException as err:  # contained like any failure: see the class docstring
            raise StreamError(err) from err
        if not isinstance(reply, AssistantMessage):
            raise StreamError(
                f"model {model!r} returned {type(reply).__name__}, expected AssistantMessage"
            )
        return reply

    def _stream(
        self, request: ModelRequest, on_text_delta: TextDeltaHook, delivered: list[bool]
    ) -> AssistantMessage:
        events = model_events(self.options.model, request)
        try:
            with contextlib.closing(events):
                for event in events:
                    if isinstance(event, FinalMessage):
                        return event.message
                    self._check_abort()
                    if not event.text:
                        continue
                    delivered[0] = True
                    try:
                        on_text_delta(event.text)
                    except BaseException as err:
                        raise PluginError("on_text_delta", err) from err
                    self._check_abort()
        except AgentError:
            raise
        except BaseException as err:
            raise StreamError(err) from err
        raise StreamError("model stream ended without a final message")  # model_events checks

    def _observed_model_call(
        self, request: ModelRequest, on_text_delta: TextDeltaHook | None
    ) -> AssistantMessage:
        """`_call_model`, reported as a `ModelCallFinished` event and a `chat` span."""
        hooks = _trace.HOOKS
        listening = _listening(self._on_event)
        if hooks is None and not listening:
            return self._call_model(request, on_text_delta)
        started = time.monotonic()
        scope = None if hooks is None else hooks.start_chat(_model_name(self.options.model))
        try:
            reply = self._call_model(request, on_text_delta)
        except BaseException as err:
            if hooks is not None:
                hooks.end(scope, err)
            if listening:
                duration = time.monotonic() - started
                self._emit(
                    ModelCallFinished(self._name, self._task_id, duration, Usage(), None, str(err))
                )
            raise
        if hooks is not None:
            hooks.end_chat(scope, reply)
        if listening:
            duration = time.monotonic() - started
            self._emit(
                ModelCallFinished(
                    self._name, self._task_id, duration, reply.usage, reply.stop_reason
                )
            )
        return reply

    def _emit(self, event: Event) -> None:
        on_event = self._on_event
        if on_event is not None:
            try:
                on_event(event)
            except BaseException:  # user callbacks behind it are contained; this is a guard
                self._log.opt(exception=True).error("event delivery failed for {!r}", event)

    def _observed_tool(self, call: ToolCall) -> ToolResultMessage:
        """`_run_tool`, reported as a `ToolCallFinished` event and an `execute_tool` span."""
        hooks = _trace.HOOKS
        listening = _listening(self._on_event)
        if hooks is None and not listening:
            return self._run_tool(call)
        started = time.monotonic()
        if hooks is None:
            result = self._run_tool(call)
        else:
            scope = hooks.start_tool(call.name, call.id)
            try:
                result = self._run_tool(call)
            except BaseException as err:
                hooks.end(scope, err)
                raise
            hooks.end(scope, "tool_error" if result.is_error else None)
        if listening:
            duration = time.monotonic() - started
            self._emit(
                ToolCallFinished(self._name, self._task_id, call.name, duration, result.is_error)
            )
        return result

    def _run_tools(self, calls: list[ToolCall]) -> list[ToolResultMessage]:
        if len(calls) == 1:
            return [self._observed_tool(calls[0])]
        results: list[ToolResultMessage | None] = [None] * len(calls)

        def run(index: int) -> None:
            results[index] = self._observed_tool(calls[index])

        # Each tool thread runs in a copy of this thread's context, so a tool sees what the
        # prompt sees (its abort events, the step it belongs to, the pool place it may lend).
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run,
                args=(run, i),
                name=f"tool-{c.name}",
                daemon=True,
            )
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
        try:
            found = self._tools.get(call.name)
            if found is None:
                known = ", ".join(sorted(self._tools)) or "none"
                return _error_result(call, f"unknown tool {call.name!r} (known: {known})")
            if call.raw_arguments is not None:
                problem = arguments_problem(call.raw_arguments)
                return _error_result(call, f"invalid arguments for tool {call.name!r}: {problem}")
            text, is_error = found.run(call.arguments)
        except BaseException as err:  # Tool.run contains the tool; this guards the rest
            return _error_result(call, f"tool {call.name!r} failed: {type(err).__name__}: {err}")
        if is_error:
            self._log.debug("tool {} returned an error: {}", call.name, text)
        return ToolResultMessage(call.id, [TextContent(text)], is_error)

    def __repr__(self) -> str:
        name = self.options.name or "agent"
        return (
            f"<Agent {name!r} model={self.options.model!r} messages={len(self._history)} "
            f"tools={sorted(self._tools)}>"
        )


def trim_history(messages: list[AgentMessage], limit: int | None) -> list[AgentMessage]:
    """`messages` without its oldest whole turns, so that at most `limit` remain.

    A turn starts at a `UserMessage`, so a tool call is never separated from its result and
    the kept conversation starts with a user message (chat templates want that). The newest
    turn is kept whole even when it alone is longer than `limit`. `None` keeps everything.

    Example:
        >>> from actor_orch.types import user_message
        >>> reply = AssistantMessage([TextContent("ok")])
        >>> kept = trim_history([user_message("1"), reply, user_message("2"), reply], 3)
        >>> [type(m).__name__ for m in kept]
        ['UserMessage', 'AssistantMessage']
    """
    if limit is None or len(messages) <= limit:
        return messages
    excess = len(messages) - limit
    last_turn = 0
    for index, message in enumerate(messages):
        if isinstance(message, UserMessage):
            if index >= excess:
                return messages[index:]
            last_turn = index
    return messages[last_turn:]


def _model_name(model: object) -> str:
    """The model's name for spans: its `model` attribute (HTTP models), else its class."""
    name = getattr(model, "model", None)
    return name if isinstance(name, str) and name else type(model).__name__


def _model_settings(model: object) -> ModelSettings | None:
    settings = getattr(model, "settings", None)
    return settings if isinstance(settings, ModelSettings) else None


def _error_result(call: ToolCall, text: str) -> ToolResultMessage:
    return ToolResultMessage(call.id, [TextContent(text)], is_error=True)
