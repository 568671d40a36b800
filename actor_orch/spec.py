"""The data of a step: what to run ([`AgentStepSpec`][]) and what came of it ([`StepOutcome`][]).

Both are msgspec Structs, so they round-trip through JSON and payloads in the seed's shape
(without the optional fields) still decode.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from actor_orch.types import Usage

__all__ = ["AgentStepSpec", "StepOutcome"]


class AgentStepSpec(msgspec.Struct, omit_defaults=True, frozen=True):
    """One step: run `prompt` on the agent registered as `agent`.

    Optional fields left `None` are omitted from JSON, and payloads written before they
    existed still decode. Decoding checks types and `max_steps >= 1`, and a
    `msgspec.ValidationError` names the offending path (`$.agent`). Specs are immutable
    (hashable too, unless they carry an `output_schema` dict); the `with_*` builders return
    a new spec.

    Example:
        >>> spec = AgentStepSpec("t1", "explore", "scan", "list files")
        >>> capped = spec.with_max_steps(3)
        >>> spec.max_steps, capped.max_steps
        (None, 3)
        >>> msgspec.json.encode(spec)
        b'{"task_id":"t1","agent":"explore","description":"scan","prompt":"list files"}'
        >>> msgspec.json.decode(msgspec.json.encode(capped), type=AgentStepSpec) == capped
        True
        >>> msgspec.json.decode(b'{"task_id":"t","agent":1,"description":"d","prompt":"p"}',
        ...                     type=AgentStepSpec)
        Traceback (most recent call last):
        ...
        msgspec.ValidationError: Expected `str`, got `int` - at `$.agent`
    """

    task_id: str
    agent: str
    description: str
    prompt: str
    max_steps: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Most agent turns for this step; `None` leaves the agent's own limit."""
    parent_session_id: str | None = None
    output_schema: dict[str, Any] | None = None
    """JSON schema the step's output must satisfy; then `StepOutcome.structured` holds it."""

    def __post_init__(self) -> None:
        # Decoding checks all of this already; constructing in Python must not accept less.
        for field in ("task_id", "agent", "description", "prompt"):
            value = getattr(self, field)
            if not isinstance(value, str):
                raise TypeError(f"AgentStepSpec.{field} must be a str, got {value!r}")
        _check_max_steps(self.max_steps)
        if self.parent_session_id is not None and not isinstance(self.parent_session_id, str):
            raise TypeError(
                "AgentStepSpec.parent_session_id must be a str or None, "
                f"got {self.parent_session_id!r}"
            )
        if self.output_schema is not None and not isinstance(self.output_schema, dict):
            raise TypeError(
                f"AgentStepSpec.output_schema must be a dict or None, got {self.output_schema!r}"
            )

    def with_max_steps(self, max_steps: int) -> AgentStepSpec:
        """A copy whose step stops after `max_steps` (>= 1) agent turns."""
        _check_max_steps(max_steps)
        return msgspec.structs.replace(self, max_steps=max_steps)

    def with_parent_session_id(self, parent_session_id: str) -> AgentStepSpec:
        """A copy that records the session this step was spawned from."""
        return msgspec.structs.replace(self, parent_session_id=parent_session_id)

    def with_output_schema(self, schema: dict[str, Any]) -> AgentStepSpec:
        """A copy whose output must be JSON valid against `schema`."""
        return msgspec.structs.replace(self, output_schema=schema)


def _check_max_steps(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"max_steps must be an int >= 1 or None, got {value!r}")


class StepOutcome(msgspec.Struct, omit_defaults=True):
    """What one step produced; `success=False` outcomes carry the reason in `output`.

    Example:
        >>> failed = StepOutcome.failed("t1", "explore", "boom")
        >>> failed.session_id, failed.success, failed.output
        ('task-run-t1', False, 'boom')
        >>> msgspec.json.encode(failed)
        b'{"task_id":"t1","session_id":"task-run-t1","agent":"explore","output":"boom","success":false}'
    """

    task_id: str
    session_id: str
    agent: str
    output: str
    success: bool
    structured: Any | None = None
    """The parsed output when the spec had an `output_schema` and it validated."""
    stop_reason: str | None = None
    """The `StopReason` value of the step's final result: `"stop"`, or `"length"` for a reply
    cut off at the model's token limit (the step succeeds and keeps the text)."""
    usage: Usage | None = None
    """Tokens used by every prompt of the step, restarts and repair prompts included."""
    duration_s: float | None = None
    """Wall time of the step in seconds."""

    @classmethod
    def failed(cls, task_id: str, agent: str, message: str) -> StepOutcome:
        """A failed outcome for `task_id`, with the conventional `task-run-{task_id}` session."""
        return cls(
            task_id=task_id,
            session_id=f"task-run-{task_id}",
            agent=agent,
            output=message,
            success=False,
        )
