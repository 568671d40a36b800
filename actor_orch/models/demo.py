"""An offline model that shows delegation at work: it plans, hands out tasks, and sums up.

Selected in workflow files with `model = "demo"` (see `examples/delegation.toml`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from actor_orch.models.base import ModelRequest, ModelStreamEvent, stream_message
from actor_orch.tools import ToolSpec
from actor_orch.types import (
    AgentMessage,
    AssistantMessage,
    StopReason,
    TextContent,
    ToolCall,
    ToolResultMessage,
    UserMessage,
    text_of,
)

__all__ = ["DemoModel"]

# How much of a task's text becomes its `description` (the prompt keeps it all).
_DESCRIPTION_CHARS = 60


class _Reported(msgspec.Struct):
    """The part of a `delegate` tool result entry the summary reads."""

    agent: str
    success: bool
    output: str


class DemoModel:
    """Plays a lead agent without a network, to show delegation's mechanics.

    - When the agent has a `delegate` tool and the latest user message has not been delegated
      yet, the reply calls `delegate` with one task per non-empty line of that message. A line
      `NAME: text` goes to delegate NAME (when NAME is one of the agents the tool allows);
      other lines go to the allowed agents in turn.
    - Once the tool result is in, the reply sums it up: how many tasks succeeded, then one
      line per task, `- AGENT: OUTPUT` (or `- AGENT failed: REASON`).
    - Without a `delegate` tool (or with nothing to delegate) it replies like `EchoModel`.

    Deterministic and stateless; `stream` yields the text word by word.

    Example:
        >>> from actor_orch import AgentOptions, AgentOrchestrator, EchoModel
        >>> with AgentOrchestrator() as orch:
        ...     orch.add_agent("lead", lambda: AgentOptions(DemoModel(), delegates=True))
        ...     orch.add_child("critic", "lead", lambda: AgentOptions(EchoModel()))
        ...     result = orch.spawn("lead").send_message("check the draft", timeout=10)
        >>> print(result.text)
        1 of 1 delegated tasks succeeded:
        - critic: check the draft
    """

    def complete(self, request: ModelRequest) -> AssistantMessage:
        latest = _latest_user_turn(request.messages)
        if latest is None:
            return _reply("")
        prompt, turn = latest
        results = [message for message in turn if isinstance(message, ToolResultMessage)]
        if results:
            return _reply(_summary(results[-1]))
        agents = _delegates(request.tools)
        lines = [line.strip() for line in prompt.splitlines() if line.strip()]
        if not agents or not lines:
            return _reply(prompt)
        tasks = [_task(line, agents, index) for index, line in enumerate(lines)]
        call = ToolCall(f"demo-delegate-{len(request.messages)}", "delegate", {"tasks": tasks})
        return AssistantMessage([call], StopReason.TOOL_USE)

    def stream(self, request: ModelRequest) -> Iterator[ModelStreamEvent]:
        return stream_message(self.complete(request))

    def __repr__(self) -> str:
        return "DemoModel()"


def _reply(text: str) -> AssistantMessage:
    return AssistantMessage([TextContent(text)], StopReason.STOP)


def _latest_user_turn(
    messages: Sequence[AgentMessage],
) -> tuple[str, Sequence[AgentMessage]] | None:
    """The text of the last user message and the messages after it."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, UserMessage):
            return text_of(message.content), messages[index + 1 :]
    return None


def _delegates(tools: Sequence[ToolSpec]) -> list[str]:
    """The agents the `delegate` tool allows (the enum of its tasks' `agent`), or []."""
    for spec in tools:
        if spec.name != "delegate":
            continue
        items: Any = spec.parameters.get("properties", {}).get("tasks", {}).get("items", {})
        reference = items.get("$ref", "")
        if reference.startswith("#/$defs/"):
            items = spec.parameters.get("$defs", {}).get(reference.removeprefix("#/$defs/"), {})
        names = items.get("properties", {}).get("agent", {}).get("enum", [])
        return [name for name in names if isinstance(name, str)]
    return []


def _task(line: str, agents: list[str], index: int) -> dict[str, str]:
    name, colon, rest = line.partition(":")
    if colon and name.strip() in agents and rest.strip():
        agent, text = name.strip(), rest.strip()
    else:
        agent, text = agents[index % len(agents)], line
    description = text
    if len(text) > _DESCRIPTION_CHARS:
        description = text[: _DESCRIPTION_CHARS - 3] + "..."
    return {"agent": agent, "description": description, "prompt": text}


def _summary(result: ToolResultMessage) -> str:
    text = text_of(result.content)
    if result.is_error:
        return f"delegation failed: {text}"
    try:
        outcomes = msgspec.json.decode(text, type=list[_Reported])
    except msgspec.DecodeError:
        return f"delegation returned: {text}"
    succeeded = sum(outcome.success for outcome in outcomes)
    lines = [f"{succeeded} of {len(outcomes)} delegated tasks succeeded:"]
    for outcome in outcomes:
        output = " ".join(outcome.output.split())  # one line per task, whatever the output
        status = "" if outcome.success else " failed"
        lines.append(f"- {outcome.agent}{status}: {output}")
    return "\n".join(lines)
