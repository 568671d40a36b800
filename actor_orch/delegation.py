"""Delegation (API §10): a parent agent hands tasks to other agents through a `delegate` tool.

An agent whose options name `delegates` gets a tool `delegate(tasks)`; each task
(`agent`, `description`, `prompt`) becomes an `AgentStepSpec` with `parent_session_id` set to
the calling conversation, and the tasks run as parallel steps on the orchestrator's executor:
supervised like any step, bounded by the executor's limit, outcomes in task order.

No deadlock at any limit or depth: a delegate call made by a step (on a pool worker) runs the
delegated steps in the place its own step holds while it waits (see `actor_orch.pool`), so a
waiting parent never holds a place its delegates need. A spawned agent holds no place at all.
Cancelling or timing out the parent's request aborts its delegated steps: the tool watches the
abort events of the prompt it runs in.

Example:
    >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel, ScriptedModel
    >>> from actor_orch.types import AssistantMessage, StopReason, ToolCall
    >>> ask = AssistantMessage([ToolCall("c1", "delegate", {"tasks": [
    ...     {"agent": "helper", "description": "shout", "prompt": "hello"}]})],
    ...     StopReason.TOOL_USE)
    >>> with AgentOrchestrator() as orch:
    ...     orch.add_agent("lead", lambda: AgentOptions(ScriptedModel([ask, "done"]),
    ...                                                 delegates=True))
    ...     orch.add_child("helper", "lead", lambda: AgentOptions(EchoModel()))
    ...     result = orch.spawn("lead").send_message("go", timeout=10)
    >>> result.text
    'done'
    >>> print(result.messages[2].content[0].text)  # the tool result the model read
    [{"task_id":"agent:lead/delegate-1-0","agent":"helper","success":true,"output":"hello"}]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import msgspec

from actor_orch.agent import AbortSignal, AgentOptions, current_prompt_aborts
from actor_orch.spec import AgentStepSpec, StepOutcome
from actor_orch.tools import Tool

if TYPE_CHECKING:
    from actor_orch.orchestrator import AgentOrchestrator

__all__ = ["DelegatedOutcome", "delegate_tool", "with_delegation"]


class DelegatedOutcome(msgspec.Struct):
    """One task's outcome as the `delegate` tool reports it (a JSON list of these)."""

    task_id: str
    agent: str
    success: bool
    output: str


_ENCODER = msgspec.json.Encoder()


class _AnyEvent:
    """Set when any of the events is set; what `execute_steps_parallel(cancel=)` polls."""

    def __init__(self, events: Sequence[AbortSignal]) -> None:
        self._events = tuple(events)

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)


def delegate_tool(
    orchestrator: AgentOrchestrator,
    caller: str,
    delegates: Sequence[str],
    *,
    parent_session_id: str,
    depth: int,
    task_prefix: str | None = None,
) -> Tool:
    """The `delegate` tool of agent `caller` talking in conversation `parent_session_id`;
    its tasks get ids `{task_prefix}/delegate-{call}-{index}` (prefix: the conversation)."""
    prefix = parent_session_id if task_prefix is None else task_prefix
    allowed = tuple(delegates)
    counter = itertools.count(1)
    task_type = msgspec.defstruct(
        "DelegatedTask",
        [
            ("agent", Literal[allowed]),
            ("description", str),
            ("prompt", str),
        ],
        forbid_unknown_fields=True,
    )

    def delegate(tasks: list[task_type]) -> str:  # type: ignore[valid-type]
        if depth >= orchestrator.max_delegation_depth:
            raise ValueError(
                f"delegation depth limit reached ({orchestrator.max_delegation_depth}): "
                f"agent '{caller}' may not delegate further"
            )
        if not tasks:
            raise ValueError("tasks must name at least one task")
        call = next(counter)
        specs = [
            AgentStepSpec(
                f"{prefix}/delegate-{call}-{index}",
                task.agent,  # type: ignore[attr-defined]
                task.description,  # type: ignore[attr-defined]
                task.prompt,  # type: ignore[attr-defined]
                parent_session_id=parent_session_id,
            )
            for index, task in enumerate(tasks)
        ]
        outcomes = orchestrator._run_delegated(specs, depth + 1, _AnyEvent(current_prompt_aborts()))
        return _ENCODER.encode([_reported(outcome) for outcome in outcomes]).decode()

    delegate.__annotations__ = {"tasks": list[task_type], "return": str}  # type: ignore[valid-type]
    names = ", ".join(allowed)
    return Tool(
        delegate,
        name="delegate",
        description=(
            f"Hand tasks to other agents ({names}); they run in parallel and the result lists "
            "each task's outcome in order (task_id, agent, success, output)."
        ),
    )


def _reported(outcome: StepOutcome) -> DelegatedOutcome:
    return DelegatedOutcome(outcome.task_id, outcome.agent, outcome.success, outcome.output)


def with_delegation(
    orchestrator: AgentOrchestrator,
    options: AgentOptions,
    caller: str,
    *,
    parent_session_id: str,
    depth: int,
    task_prefix: str | None = None,
) -> AgentOptions:
    """`options` with a `delegate` tool when they name delegates (else unchanged)."""
    wanted = options.delegates
    if wanted is False or wanted == ():
        return options
    names = (orchestrator.children_of(caller) or []) if wanted is True else list(wanted)
    if not names:
        return options
    tool = delegate_tool(
        orchestrator,
        caller,
        names,
        parent_session_id=parent_session_id,
        depth=depth,
        task_prefix=task_prefix,
    )
    tools = [t for t in options.tools if t.name != "delegate"]
    return options.replace(tools=(*tools, tool))
