"""The workflow file format read by `actor-orch run`: agents to register and steps to run.

A workflow is TOML (`.toml`) or JSON (`.json`) holding an `[agents]` table and a `steps`
array. Each step is a [`WorkflowStep`][]: the fields of an
[`AgentStepSpec`][actor_orch.AgentStepSpec] plus `needs`, the task ids it needs (see
`actor_orch.graph` for the templates a prompt may use). Everything is checked before anything
runs: types (msgspec, so the error names the path), unknown keys (typos are errors, not
silently ignored settings), steps naming an undefined agent, duplicate task ids, an empty
`steps` array, output schemas that are not valid JSON schemas, unknown needs, cycles, and
templates naming a step that is not needed.

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> path = folder / "wf.toml"
    >>> _ = path.write_text('''
    ... [agents.writer]
    ... system_prompt = "Be brief."
    ... [[steps]]
    ... task_id = "t1"
    ... agent = "writer"
    ... description = "greet"
    ... prompt = "Say hello"
    ... ''')
    >>> workflow = load_workflow(path)
    >>> list(workflow.agents), [step.task_id for step in workflow.steps]
    (['writer'], ['t1'])
    >>> _ = path.write_text(path.read_text().replace('agent = "writer"', 'agent = "nobody"'))
    >>> load_workflow(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    actor_orch.workflow.WorkflowError: .../wf.toml: $.steps[0].agent: agent 'nobody' is not \
defined in [agents]
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Annotated, Any, Literal

import msgspec

from actor_orch.graph import GraphError, check_graph
from actor_orch.models.settings import ModelSettings
from actor_orch.spec import AgentStepSpec
from actor_orch.structured import InvalidOutput, check_schema

__all__ = [
    "AgentSpec",
    "ModelKind",
    "Workflow",
    "WorkflowError",
    "WorkflowStep",
    "load_workflow",
    "registration_order",
]

ModelKind = Literal["echo", "openai", "demo"]
"""Which model an agent runs: the offline `EchoModel`, an OpenAI-compatible server, or the
offline `DemoModel` (delegates one task per line of its prompt, then sums up the results)."""

_BARE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
# Fields that only mean something for an agent on an OpenAI-compatible server.
_SERVER_FIELDS = ("model_name", "base_url", "api_key_env")


class AgentSpec(
    msgspec.Struct,
    forbid_unknown_fields=True,
    frozen=True,
    omit_defaults=True,
    repr_omit_defaults=True,
):
    """One `[agents.NAME]` table: how to build the agent registered as NAME.

    - `model` left out means the run's default (`actor-orch run --model`).
    - `model_name`, `base_url`, `api_key_env`: for an agent on an OpenAI-compatible server,
      override `--model-name`, `--base-url` and `--api-key-env` (ignored when the agent runs
      the echo model by default; an error with `model = "echo"`). Agents on the same server
      (URL, model name and key) share one model object.
    - `max_turns` caps model calls per step (`None` = no cap, a step's `max_steps` overrides
      it); `history_limit` is `AgentOptions.history_limit`.
    - `settings`, the `[agents.NAME.settings]` table: an `actor_orch.ModelSettings`
      (`max_tokens`, `temperature`, ...), sent with every model call of the agent.
    - `delegates`: the agents this one may hand tasks to through a `delegate` tool (a list of
      names defined in `[agents]`), or `true` for every agent whose `parent` it is
      (`AgentOptions.delegates`).
    - `parent`: registers the agent as a child of that agent (`add_child`), so `delegates =
      true` of the parent covers it. Parents must be defined and form no cycle.
    """

    system_prompt: str = ""
    model: ModelKind | None = None
    model_name: _NonEmpty | None = None
    base_url: _NonEmpty | None = None
    api_key_env: _NonEmpty | None = None
    max_turns: Annotated[int, msgspec.Meta(ge=1)] | None = None
    history_limit: Annotated[int, msgspec.Meta(ge=1)] | None = None
    settings: ModelSettings | None = None
    delegates: tuple[_NonEmpty, ...] | bool = ()
    parent: _NonEmpty | None = None


class WorkflowStep(AgentStepSpec, frozen=True, omit_defaults=True):
    """One `[[steps]]` table: an `AgentStepSpec` plus `needs`, the task ids it needs.

    The step starts once every step it needs has succeeded; its prompt may read their
    results with `{{ steps.ID.output }}` and `{{ steps.ID.structured.FIELD }}`.

    Example:
        >>> step = WorkflowStep("w", "writer", "write", "Use {{ steps.r.output }}", needs=("r",))
        >>> step.needs, isinstance(step, AgentStepSpec)
        (('r',), True)
    """

    needs: tuple[str, ...] = ()


# Keys a step table may hold: exactly the fields of WorkflowStep, whatever they become.
_STEP_KEYS = frozenset(field.encode_name for field in msgspec.structs.fields(WorkflowStep))


class Workflow(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A whole workflow file. `max_parallel` is the most steps run at once (`None` = default)."""

    agents: dict[Annotated[str, msgspec.Meta(min_length=1)], AgentSpec]
    steps: list[WorkflowStep]
    max_parallel: Annotated[int, msgspec.Meta(ge=1)] | None = None

    @property
    def needs(self) -> dict[str, tuple[str, ...]]:
        """What each step needs, by task id (steps that need nothing are left out); the
        `needs` argument of `actor_orch.execute_graph`."""
        return {step.task_id: step.needs for step in self.steps if step.needs}


class WorkflowError(ValueError):
    """A workflow file that cannot be run; the message names the file, then what is wrong.

    `file` is the path as given; `problem` is the rest of the message, starting with the
    JSON path of the offending value when there is one (`$.steps[1].agent: ...`).
    """

    def __init__(self, file: str | os.PathLike[str], problem: str) -> None:
        self.file = os.fspath(file)
        self.problem = problem
        super().__init__(f"{self.file}: {problem}")


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read, decode and cross-check the workflow at `path` (`.toml` or `.json`).

    Raises:
        WorkflowError: the file is missing or unreadable, is not TOML/JSON, does not match
            the format (msgspec's message with the path), or fails a cross-check.
    """
    raw = _parse(path)
    try:
        workflow = msgspec.convert(raw, type=Workflow)
    except msgspec.ValidationError as err:
        raise WorkflowError(path, _name_the_agent(str(err), raw)) from None
    _check(path, raw, workflow)
    return workflow


def _parse(path: str | os.PathLike[str]) -> Any:
    """The file's content as plain data (dicts, lists, scalars), before any type check."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in (".toml", ".json"):
        raise WorkflowError(path, "unsupported workflow format (expected a .toml or .json file)")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise WorkflowError(path, f"cannot read the file: {err.strerror or err}") from None
    if suffix == ".json":
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError as err:
            raise WorkflowError(path, f"not valid JSON: {err}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise WorkflowError(path, f"not valid TOML: not UTF-8 text ({err.reason})") from None
    except tomllib.TOMLDecodeError as err:
        raise WorkflowError(path, f"not valid TOML: {err}") from None


def _name_the_agent(message: str, raw: Any) -> str:
    """`message` with msgspec's `$.agents[...]` replaced by the path of the agent at fault.

    msgspec does not spell out dict keys in its paths, but "which agent" is the whole point
    of the message. It reports the first invalid entry in order, so that is the one sought.
    """
    marker = "$.agents[...]"
    agents = raw.get("agents") if isinstance(raw, dict) else None
    if marker not in message or not isinstance(agents, dict):
        return message
    for name, table in agents.items():
        try:
            msgspec.convert(table, type=AgentSpec)
        except msgspec.ValidationError:
            return message.replace(marker, _agent_path(name))
    return message


def _agent_path(name: str) -> str:
    # `$.agents.writer` reads best; a name that is not a bare word is quoted so the path stays
    # unambiguous (`$.agents["two words"]`).
    if _BARE_NAME.fullmatch(name):
        return f"$.agents.{name}"
    return f"$.agents[{msgspec.json.encode(name).decode()}]"


def _check(path: str | os.PathLike[str], raw: Any, workflow: Workflow) -> None:
    """The checks a type cannot express; the first problem found is raised."""
    for name, agent in workflow.agents.items():
        _check_agent(path, name, agent)
    _check_delegation(path, workflow.agents)
    if not workflow.steps:
        raise WorkflowError(path, "$.steps: the workflow has no steps")
    first_seen: dict[str, int] = {}
    for index, (step, table) in enumerate(zip(workflow.steps, raw["steps"], strict=True)):
        where = f"$.steps[{index}]"
        # AgentStepSpec accepts unknown keys (for compatibility of stored specs); in a file a
        # person edits, an unknown key is a typo such as `max_step`, so it is refused here.
        unknown = sorted(set(table) - _STEP_KEYS)
        if unknown:
            raise WorkflowError(
                path, f"Object contains unknown field `{unknown[0]}` - at `{where}`"
            )
        if step.agent not in workflow.agents:
            raise WorkflowError(
                path, f"{where}.agent: agent {step.agent!r} is not defined in [agents]"
            )
        if step.task_id in first_seen:
            raise WorkflowError(
                path,
                f"{where}.task_id: duplicate task id {step.task_id!r} "
                f"(first used at $.steps[{first_seen[step.task_id]}])",
            )
        first_seen[step.task_id] = index
        if step.output_schema is not None:
            try:
                check_schema(step.output_schema)
            except InvalidOutput as err:
                raise WorkflowError(path, f"{where}.output_schema: {err}") from None
    try:
        check_graph(workflow.steps, workflow.needs)
    except GraphError as err:
        raise WorkflowError(path, err.at("$.steps")) from None


def _check_agent(path: str | os.PathLike[str], name: str, agent: AgentSpec) -> None:
    where = _agent_path(name)
    if agent.model in ("echo", "demo"):
        for field in _SERVER_FIELDS:
            if getattr(agent, field) is not None:
                raise WorkflowError(
                    path, f'{where}.{field}: only used by model = "openai", not "{agent.model}"'
                )
    if agent.base_url is not None and not agent.base_url.startswith(("http://", "https://")):
        raise WorkflowError(
            path, f"{where}.base_url: must be an http:// or https:// URL, got {agent.base_url!r}"
        )


def _check_delegation(path: str | os.PathLike[str], agents: dict[str, AgentSpec]) -> None:
    """`parent` and `delegates` name defined agents, parents form no cycle, and
    `delegates = true` has children to delegate to."""
    for name, agent in agents.items():
        where = _agent_path(name)
        if agent.parent is not None and agent.parent not in agents:
            raise WorkflowError(
                path, f"{where}.parent: agent {agent.parent!r} is not defined in [agents]"
            )
        if isinstance(agent.delegates, bool):
            continue
        seen: set[str] = set()
        for index, delegate in enumerate(agent.delegates):
            if delegate not in agents:
                raise WorkflowError(
                    path,
                    f"{where}.delegates[{index}]: agent {delegate!r} is not defined in [agents]",
                )
            if delegate in seen:
                raise WorkflowError(
                    path, f"{where}.delegates[{index}]: {delegate!r} is listed twice"
                )
            seen.add(delegate)
    for name in agents:
        _check_no_parent_cycle(path, name, agents)
    children = {agent.parent for agent in agents.values() if agent.parent is not None}
    for name, agent in agents.items():
        if agent.delegates is True and name not in children:
            raise WorkflowError(
                path,
                f"{_agent_path(name)}.delegates: true delegates to the agents whose parent is "
                f"{name!r}, and there are none (set their parent, or list the delegates)",
            )


def _check_no_parent_cycle(
    path: str | os.PathLike[str], name: str, agents: dict[str, AgentSpec]
) -> None:
    chain = [name]
    parent = agents[name].parent
    while parent is not None:
        if parent == name:
            cycle = " -> ".join([*chain, name])
            raise WorkflowError(path, f"{_agent_path(name)}.parent: parent cycle: {cycle}")
        if parent in chain:
            return  # a cycle that does not pass through `name`: reported for one of its members
        chain.append(parent)
        parent = agents[parent].parent


def registration_order(agents: dict[str, AgentSpec]) -> list[str]:
    """The agents' names with every parent before its children (otherwise in file order),
    the order in which `add_agent`/`add_child` can register them. The parents must form no
    cycle (`load_workflow` checks it)."""
    ordered: list[str] = []
    placed: set[str] = set()
    for name in agents:
        chain = []
        current: str | None = name
        while current is not None and current not in placed:
            chain.append(current)
            current = agents[current].parent
        for member in reversed(chain):
            ordered.append(member)
            placed.add(member)
    return ordered
