"""The `actor-orch` command: run or check a workflow file, or chat with one of its agents.

`actor-orch run WORKFLOW` loads the workflow (see `actor_orch.workflow`), registers its agents
on an `AgentOrchestrator` supervised by a `DefaultSupervisor`, runs the steps as a graph
(`actor_orch.execute_graph`) on a `LocalExecutor`, and writes one JSON line per
`StepOutcome`, in step order, to `--out` or stdout, each as soon as it and every step before
it have finished. `actor-orch validate WORKFLOW` checks a file without running anything.

`actor-orch chat WORKFLOW AGENT` registers the agents the same way and talks with one of them
(see `actor_orch.chat`); its exit code is 0, or 2 for bad usage or a bad workflow file.

Exit codes: 0 every step succeeded, 1 some step failed (or the outcomes could not be
written), 2 bad usage or a bad workflow file (rejected before anything runs, with one
`error: ...` line), 130 interrupted with Ctrl-C, 143 stopped by SIGTERM. Whatever stops the
run, every step has exactly one outcome line: finished steps as they ended, the others failed
(`"cancelled"` when they never started, `"interrupted before the step ended"` otherwise).

Signals: the handlers only record the signal; the main thread, which alone writes the
outcomes, acts on it. The first Ctrl-C cancels (steps not started are cancelled, running ones
aborted at their next model or tool boundary, and waited for); a second Ctrl-C, or SIGTERM,
stops waiting and writes what is left as failed. However the signals race, no line is lost
or written twice.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import msgspec
from loguru import logger
from tqdm import tqdm

from actor_orch._run_files import RunFiles, RunFilesError, holding_signals
from actor_orch.agent import AgentOptions
from actor_orch.chat import DEFAULT_SESSION, Chat
from actor_orch.checkpoint import CheckpointStore, SqliteCheckpointStore, spec_digest
from actor_orch.events import StepStarted
from actor_orch.executor import (
    DEFAULT_MAX_PARALLEL_TASKS,
    AgentExecutor,
    AgentStepSpec,
    LocalExecutor,
    StepOutcome,
)
from actor_orch.graph import execute_graph
from actor_orch.models import DemoModel, EchoModel, Model, OpenAICompatibleModel
from actor_orch.orchestrator import AgentOrchestrator
from actor_orch.sessions import SqliteSessionStore
from actor_orch.supervisor import DefaultSupervisor
from actor_orch.workflow import (
    AgentSpec,
    Workflow,
    WorkflowError,
    _agent_path,
    load_workflow,
    registration_order,
)

__all__ = ["main"]

EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_USAGE = 2
# What shells report for a process ended by SIGINT (128 + 2) / SIGTERM (128 + 15).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

DEFAULT_BASE_URL = "http://127.0.0.1:11434/v1"  # Ollama's OpenAI-compatible endpoint
DEFAULT_MODEL_NAME = "llama3.2"
DEFAULT_CHECKPOINT_DB = Path(".actor_orch") / "checkpoints.sqlite"  # beside the workflow
# Per HTTP request. Generous because a local model on a CPU can take minutes for one reply;
# `--timeout` bounds the whole run independently (a step still waiting then fails).
DEFAULT_REQUEST_TIMEOUT_S = 300.0
# How long the main thread waits for the next outcome before it looks at signals again.
_WAIT_SLICE_S = 0.1
# The progress bar is redrawn at most this often (a redraw per step slows big runs down).
_PROGRESS_INTERVAL_S = 0.1
# Bound on the final orchestrator.shutdown(). Steps run on agents of their own, not on
# spawned handles, so there is normally nothing left for it to wait for.
_SHUTDOWN_TIMEOUT_S = 5.0
_INTERRUPTED = "interrupted before the step ended"


class UsageError(Exception):
    """A command line that cannot run (exit code 2); the message is the whole explanation."""


class OutputError(Exception):
    """The outcomes could not be written (a full disk, a closed pipe); exit code 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default `sys.argv[1:]`); returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except (UsageError, WorkflowError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_STEP_FAILED
    except KeyboardInterrupt:
        # Ctrl-C before the steps started (or after they were written): nothing to report.
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- the command line ---------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    from actor_orch import __version__  # noqa: PLC0415 (the package imports this module's deps)

    parser = argparse.ArgumentParser(
        prog="actor-orch",
        description=(
            "Run LLM agents as supervised actors: execute or check a workflow file, or chat "
            "with one of its agents."
        ),
    )
    parser.add_argument("--version", action="version", version=f"actor-orch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # One function per subcommand: it adds its parser and sets `handler`.
    for add_command in (_add_run_command, _add_validate_command, _add_chat_command):
        add_command(commands)
    return parser


Commands = Any  # argparse's _SubParsersAction, which is private


def _add_run_command(commands: Commands) -> None:
    run = commands.add_parser(
        "run",
        help="run every step of a workflow file and print one JSON outcome per step",
        description=(
            "Run the steps of WORKFLOW (.toml or .json), each as soon as the steps it needs "
            "have succeeded, and write one JSON line per step outcome, in step order. Exit "
            "code: 0 all steps succeeded, 1 some step failed, 2 bad usage or workflow file, "
            "130 interrupted, 143 terminated."
        ),
    )
    run.set_defaults(handler=_run_command)
    run.add_argument("workflow", metavar="WORKFLOW", help="workflow file (.toml or .json)")
    run.add_argument(
        "--resume",
        action="store_true",
        help=(
            "checkpoint successful steps and, on a rerun, run only the steps that did not "
            "succeed or whose spec changed"
        ),
    )
    run.add_argument(
        "--checkpoint-db",
        metavar="PATH",
        help=(
            "SQLite file of --resume (default: .actor_orch/checkpoints.sqlite beside the "
            "workflow; implies --resume)"
        ),
    )
    _add_model_arguments(run)
    run.add_argument(
        "--max-parallel",
        type=_positive_int,
        metavar="N",
        help=(
            "most steps running at once (default: the workflow's max_parallel, else "
            f"{DEFAULT_MAX_PARALLEL_TASKS})"
        ),
    )
    run.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="overall time limit; steps unfinished by then fail (default: none)",
    )
    run.add_argument("--out", metavar="PATH", help="write the outcomes here instead of stdout")
    run.add_argument(
        "--events",
        metavar="PATH",
        help="write every event of the run to PATH as JSON lines, as they happen",
    )
    run.add_argument(
        "--report",
        metavar="PATH",
        help=(
            "write an HTML report to PATH at the end (timeline, dependency graph, tokens per "
            "agent; one file, viewable offline)"
        ),
    )
    run.add_argument(
        "--no-progress", action="store_true", help="no progress bar (shown only on a terminal)"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")


def _add_model_arguments(command: argparse.ArgumentParser) -> None:
    """The options that choose the model of agents whose table sets none (`run`, `chat`)."""
    command.add_argument(
        "--model",
        choices=["echo", "openai", "demo"],
        default="echo",
        help="model of agents whose table sets none (default: echo, offline)",
    )
    command.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        metavar="URL",
        help=f"OpenAI-compatible API root for --model openai (default: {DEFAULT_BASE_URL})",
    )
    command.add_argument(
        "--model-name",
        default=DEFAULT_MODEL_NAME,
        metavar="NAME",
        help=f"model name sent to the server (default: {DEFAULT_MODEL_NAME})",
    )
    command.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the API key (default: send no key)",
    )


def _add_validate_command(commands: Commands) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a workflow file without running it",
        description=(
            "Check WORKFLOW as `run` would (types, unknown keys, agents, needs, cycles, "
            "templates) and print a one-line summary. Exit code 0 valid, 2 invalid."
        ),
    )
    validate.set_defaults(handler=_validate_command)
    validate.add_argument("workflow", metavar="WORKFLOW", help="workflow file (.toml or .json)")


def _add_chat_command(commands: Commands) -> None:
    chat = commands.add_parser(
        "chat",
        help="chat with one agent of a workflow file, replies streamed as they are produced",
        description=(
            "Chat with AGENT of WORKFLOW (.toml or .json; its steps are not run). Each line "
            "is one message; the reply is printed as the model produces it. Commands: "
            "/history, /reset, /help, /exit. Ctrl-C aborts a streaming reply, Ctrl-D leaves. "
            "Exit code: 0, or 2 for bad usage or a bad workflow file."
        ),
    )
    chat.set_defaults(handler=_chat_command)
    chat.add_argument("workflow", metavar="WORKFLOW", help="workflow file (.toml or .json)")
    chat.add_argument("agent", metavar="AGENT", help="the agent to chat with (an [agents] name)")
    chat.add_argument(
        "--session",
        default=DEFAULT_SESSION,
        type=_session_id,
        metavar="ID",
        help=f"conversation to talk in (default: {DEFAULT_SESSION!r})",
    )
    chat.add_argument(
        "--sessions-db",
        metavar="PATH",
        help="keep conversations in this SQLite file, to continue them later (default: memory)",
    )
    _add_model_arguments(chat)
    chat.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="time limit of each reply (default: none)",
    )
    chat.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")


def _session_id(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


# --- validate -------------------------------------------------------------------------------


def _validate_command(args: argparse.Namespace) -> int:
    workflow = load_workflow(args.workflow)
    needs = sum(len(step.needs) for step in workflow.steps)
    print(
        f"{args.workflow}: ok: {len(workflow.agents)} agents, {len(workflow.steps)} steps, "
        f"{needs} needs, longest chain {_longest_chain(workflow)}"
    )
    return EXIT_OK


def _longest_chain(workflow: Workflow) -> int:
    """Steps in the longest chain of needs (1 when no step needs another)."""
    depth: dict[str, int] = {}
    steps = {step.task_id: step for step in workflow.steps}

    def depth_of(task_id: str) -> int:  # the graph is checked acyclic; memoised, iterative
        stack = [task_id]
        while stack:
            current = stack[-1]
            missing = [n for n in steps[current].needs if n not in depth]
            if missing:
                stack.extend(missing)
                continue
            depth[current] = 1 + max((depth[n] for n in steps[current].needs), default=0)
            stack.pop()
        return depth[task_id]

    return max(depth_of(task_id) for task_id in steps)


# --- run ------------------------------------------------------------------------------------


def _run_command(args: argparse.Namespace) -> int:
    if args.verbose:
        _enable_logging()
    workflow = load_workflow(args.workflow)
    log = logger.bind(workflow=args.workflow)
    log.debug("loaded {} agents, {} steps", len(workflow.agents), len(workflow.steps))
    agents = _resolve_agents(args, workflow)
    max_parallel = args.max_parallel or workflow.max_parallel or DEFAULT_MAX_PARALLEL_TASKS
    store = _checkpoint_store(args) if args.resume or args.checkpoint_db else None
    workflow_id = str(Path(args.workflow).resolve())
    # Opened before the run so an unwritable --out, --events or --report costs nothing.
    with (
        _open_run_files(args) as files,
        _open_output(args.out) as out,
        contextlib.ExitStack() as held,
    ):
        orchestrator = AgentOrchestrator(supervisor=DefaultSupervisor())
        files.attach(orchestrator)
        try:
            _register_agents(orchestrator, workflow, agents)
            executor = LocalExecutor(orchestrator, max_parallel_tasks=max_parallel)
            orchestrator.with_executor(executor)
            run = _Run(
                executor,
                workflow,
                out,
                timeout=args.timeout,
                progress=not args.no_progress and sys.stderr.isatty(),
                store=store,
                workflow_id=workflow_id,
                step_key=_step_key({name: agent.fingerprint for name, agent in agents.items()}),
            )
            # From here on a signal that the run does not handle (the run installs handlers
            # of its own and restores these) waits until the report and the event log are
            # complete, then takes effect.
            held.enter_context(holding_signals())
            outcomes = run.execute()
            files.run_ended()
        finally:
            orchestrator.shutdown(timeout=_SHUTDOWN_TIMEOUT_S)
            if isinstance(store, SqliteCheckpointStore):
                store.close()  # commits the steps still waiting for the writer thread
        summary = run.summary(outcomes)
        print(summary, file=sys.stderr)
        files.write_report(
            workflow, outcomes, title=args.workflow, summary=summary, max_parallel=max_parallel
        )
        files.close()
        for problem in files.problems:
            print(f"error: {problem}", file=sys.stderr)
    if run.output_error is not None:
        raise OutputError(run.output_error)
    if run.stopped_by == signal.SIGTERM:
        return EXIT_TERMINATED
    if run.stopped_by == signal.SIGINT:
        return EXIT_INTERRUPTED
    failed = bool(files.problems) or any(not o.success for o in outcomes)
    return EXIT_STEP_FAILED if failed else EXIT_OK


def _open_run_files(args: argparse.Namespace) -> RunFiles:
    """The `--events` and `--report` files, open for writing (a bad path is a usage error)."""
    try:
        return RunFiles.open(
            events=args.events,
            report=args.report,
            others={"--out": args.out, "the workflow file": args.workflow},
        )
    except RunFilesError as err:
        raise UsageError(str(err)) from None


def _enable_logging() -> None:
    """Turn the library's logs on, at DEBUG, on stderr, without tearing the progress bar."""
    logger.remove()
    # tqdm.write prints above a running bar instead of through it; without a bar it is a
    # plain write to stderr.
    logger.add(lambda message: tqdm.write(str(message), file=sys.stderr, end=""), level="DEBUG")
    logger.enable("actor_orch")


# --- chat -------------------------------------------------------------------------------------


def _chat_command(args: argparse.Namespace) -> int:
    if args.verbose:
        _enable_logging()
    workflow = load_workflow(args.workflow)
    if args.agent not in workflow.agents:
        raise UsageError(
            f"agent {args.agent!r} is not defined in {args.workflow} "
            f"(its agents: {', '.join(workflow.agents)})"
        )
    agents = _resolve_agents(args, workflow)
    sessions = None
    if args.sessions_db is not None:
        sessions = SqliteSessionStore(args.sessions_db)
        if sessions.problem is not None:
            raise UsageError(f"--sessions-db {args.sessions_db}: {sessions.problem}")
    orchestrator = AgentOrchestrator(supervisor=DefaultSupervisor(), sessions=sessions)
    try:
        _register_agents(orchestrator, workflow, agents)
        max_parallel = workflow.max_parallel or DEFAULT_MAX_PARALLEL_TASKS
        orchestrator.with_executor(LocalExecutor(orchestrator, max_parallel_tasks=max_parallel))
        chat = Chat(
            lambda: orchestrator.spawn(args.agent), session=args.session, timeout=args.timeout
        )
        return chat.run()
    finally:
        orchestrator.shutdown(timeout=_SHUTDOWN_TIMEOUT_S)
        if sessions is not None:
            sessions.close()


# --- agents and their models ---------------------------------------------------------------


@dataclass(frozen=True)
class _Agent:
    """An agent of the workflow with its model resolved against the command line."""

    spec: AgentSpec
    model: Model
    fingerprint: str  # what a checkpointed step of this agent depends on besides its spec

    def options_factory(self, name: str) -> Callable[[], AgentOptions]:
        spec, model = self.spec, self.model

        def build() -> AgentOptions:
            return AgentOptions(
                model,
                system_prompt=spec.system_prompt,
                max_turns=spec.max_turns,
                name=name,
                settings=spec.settings,
                history_limit=spec.history_limit,
                delegates=spec.delegates,
            )

        return build


def _register_agents(
    orchestrator: AgentOrchestrator, workflow: Workflow, agents: dict[str, _Agent]
) -> None:
    """Register every agent of the workflow, parents first; an agent with a `parent` is
    registered as its child."""
    for name in registration_order(workflow.agents):
        factory = agents[name].options_factory(name)
        parent = workflow.agents[name].parent
        if parent is None:
            orchestrator.add_agent(name, factory)
        else:
            orchestrator.add_child(name, parent, factory)


def _resolve_agents(args: argparse.Namespace, workflow: Workflow) -> dict[str, _Agent]:
    """Every agent with its model. Agents on one server (URL, model name, key) share one
    `OpenAICompatibleModel`; servers are built only when used, so an echo-only run never
    needs a URL or an API key."""
    # The offline models are stateless, so one instance is as good as one per agent.
    offline: dict[str, Model] = {"echo": EchoModel(), "demo": DemoModel()}
    servers: dict[tuple[str, str, str | None], OpenAICompatibleModel] = {}
    agents = {}
    for name, spec in workflow.agents.items():
        kind = spec.model or args.model
        if kind in offline:
            model: Model = offline[kind]
            server: tuple[str, ...] = (kind,)
        else:
            base_url = spec.base_url or args.base_url
            model_name = spec.model_name or args.model_name
            key_env = spec.api_key_env or args.api_key_env
            api_key = _api_key(args, name, spec)
            if (base_url, model_name, api_key) not in servers:
                servers[base_url, model_name, api_key] = _openai_model(
                    args, name, spec=spec, base_url=base_url, model_name=model_name, api_key=api_key
                )
            model = servers[base_url, model_name, api_key]
            server = ("openai", base_url, model_name, key_env or "")
        identity = msgspec.json.encode([server, spec], order="sorted")
        agents[name] = _Agent(spec, model, hashlib.sha256(identity).hexdigest())
    return agents


def _api_key(args: argparse.Namespace, name: str, spec: AgentSpec) -> str | None:
    variable = spec.api_key_env or args.api_key_env
    if variable is None:
        return None
    api_key = os.environ.get(variable)
    if api_key:
        return api_key
    problem = f"environment variable {variable} is not set or empty"
    if spec.api_key_env is not None:
        raise WorkflowError(args.workflow, f"{_agent_path(name)}.api_key_env: {problem}")
    raise UsageError(f"--api-key-env: {problem}")


def _openai_model(
    args: argparse.Namespace,
    name: str,
    *,
    spec: AgentSpec,
    base_url: str,
    model_name: str,
    api_key: str | None,
) -> OpenAICompatibleModel:
    try:
        return OpenAICompatibleModel(base_url, model_name, api_key, DEFAULT_REQUEST_TIMEOUT_S)
    except ValueError as err:
        if spec.base_url is not None:
            raise WorkflowError(args.workflow, f"{_agent_path(name)}.base_url: {err}") from None
        raise UsageError(f"--base-url: {err}") from None


def _step_key(fingerprints: dict[str, str]) -> Callable[[AgentStepSpec], str]:
    """The checkpoint key of a step: its spec (prompt as rendered) and its agent's setup, so
    changing an agent's model, server or settings runs its steps again too."""

    def key(spec: AgentStepSpec) -> str:
        return f"{spec_digest(spec)}:{fingerprints.get(spec.agent, '')[:16]}"

    return key


def _checkpoint_store(args: argparse.Namespace) -> CheckpointStore:
    if args.checkpoint_db is not None:
        path = Path(args.checkpoint_db)
    else:
        path = Path(args.workflow).resolve().parent / DEFAULT_CHECKPOINT_DB
    with contextlib.suppress(OSError):  # the store reports a folder it cannot use
        path.parent.mkdir(parents=True, exist_ok=True)
    store = SqliteCheckpointStore(path)
    if store.problem is not None:
        print(
            f"warning: checkpoints {path}: {store.problem}; running without them",
            file=sys.stderr,
        )
    return store


# --- output -------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[IO[bytes]]:
    """stdout, or the file at `path` opened for writing (an unwritable path is a usage error)."""
    if path is None:
        if sys.stdout is None:
            raise UsageError("stdout is closed; use --out PATH")
        yield sys.stdout.buffer
        return
    try:
        file = open(path, "wb")  # noqa: SIM115 (closed below, after the run)
    except OSError as err:
        raise UsageError(f"--out {path}: {err.strerror or err}") from None
    with file:
        yield file


class _Progress:
    """A tqdm bar on stderr, moved only by the main thread, redrawn at most 10 times a second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar: Any = (
            tqdm(
                total=total,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=_PROGRESS_INTERVAL_S,
            )
            if enabled
            else None
        )
        self._pending = 0
        self._failed = 0
        self._drawn_at = 0.0

    def advance(self, finished: int, failed: int) -> None:
        if self._bar is None:
            return
        self._pending += finished
        self._failed += failed
        now = time.monotonic()
        if now - self._drawn_at >= _PROGRESS_INTERVAL_S:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        self._bar.set_postfix(failed=self._failed, refresh=False)
        self._bar.update(self._pending)
        self._pending = 0

    def write(self, text: str) -> None:
        if self._bar is None:
            print(text, file=sys.stderr, flush=True)
        else:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._draw(time.monotonic())
            self._bar.close()


class _Run:
    """One `actor-orch run`: the graph runs on a thread of its own; the main thread owns the
    output, the progress bar and the signals, and writes each outcome as soon as it and every
    step before it have finished."""

    def __init__(
        self,
        executor: AgentExecutor,
        workflow: Workflow,
        out: IO[bytes],
        *,
        timeout: float | None,
        progress: bool,
        store: CheckpointStore | None,
        workflow_id: str,
        step_key: Callable[[AgentStepSpec], str],
    ) -> None:
        self.executor = executor
        self.workflow = workflow
        self.steps = workflow.steps
        self.out = out
        self.timeout = timeout
        self.store = store
        self.workflow_id = workflow_id
        self.step_key = step_key
        self.progress = _Progress(len(self.steps), progress)
        self.cancel = threading.Event()
        # Filled by other threads, read by the main thread: the graph's outcomes, the ids of
        # steps that started (from events), and the signals received (by the handlers).
        self.reports: queue.SimpleQueue[tuple[int, StepOutcome] | BaseException | None] = (
            queue.SimpleQueue()
        )
        self.started: set[str] = set()
        self.signals: list[int] = []
        self.outcomes: list[StepOutcome | None] = [None] * len(self.steps)
        self.written = 0  # outcomes written so far: always a prefix of the steps
        self.stopped_by: int | None = None  # the signal that stopped the run
        self.output_error: str | None = None
        self.began = time.monotonic()
        self.elapsed = 0.0
        self.encoder = msgspec.json.Encoder()

    # -- threads other than the main one ----------------------------------------------------

    def _graph(self) -> None:
        try:
            execute_graph(
                self.executor,
                self.steps,
                self.workflow.needs,
                self._on_event,
                timeout=self.timeout,
                cancel=self.cancel,
                on_outcome=lambda index, outcome: self.reports.put((index, outcome)),
                store=self.store,
                workflow_id=self.workflow_id if self.store is not None else None,
                step_key=self.step_key,
                # Ctrl-C waits for running steps to reach a boundary; a second one stops that.
                cancel_grace=math.inf,
            )
            self.reports.put(None)
        except BaseException as err:  # reported by the main thread, which owns the exit
            self.reports.put(err)

    def _on_event(self, event: object) -> None:
        if isinstance(event, StepStarted):
            self.started.add(event.task_id)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only record it: the main thread acts on it between two outcomes, so a signal that
        # arrives while another is handled (or while a line is written) cannot lose a line.
        self.signals.append(signum)

    # -- the main thread --------------------------------------------------------------------

    def execute(self) -> list[StepOutcome]:
        """Run every step; one outcome per step, in order, every one of them written."""
        previous = self._install_signal_handlers()
        try:
            threading.Thread(target=self._graph, name="actor-orch-graph", daemon=True).start()
            self._collect()
        finally:
            self.elapsed = time.monotonic() - self.began
            self.progress.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return [outcome for outcome in self.outcomes if outcome is not None]

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # main() called from a thread (tests, embedding): no handlers there
        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _collect(self) -> None:
        handled = 0
        while self.written < len(self.steps):
            while handled < len(self.signals):
                if self._on_stop_signal(self.signals[handled]):
                    self._give_up()
                    return
                handled += 1
            try:
                report = self.reports.get(timeout=_WAIT_SLICE_S)
            except queue.Empty:
                continue
            self._take(report)
            if not self._write_ready():
                self._give_up()
                return

    def _on_stop_signal(self, signum: int) -> bool:
        """Act on one signal; True when the run should stop waiting for running steps."""
        self.cancel.set()
        if signum == signal.SIGTERM:
            self.stopped_by = signal.SIGTERM
            self.progress.write("terminated: not waiting for running steps")
            return True
        if self.stopped_by is None:
            self.stopped_by = signal.SIGINT
            self.progress.write(
                "interrupted: cancelling; waiting for running steps to stop "
                "(Ctrl-C again to stop waiting)"
            )
            return False
        self.progress.write("interrupted again: not waiting for running steps")
        return True

    def _take(self, report: tuple[int, StepOutcome] | BaseException | None) -> None:
        """Record `report` and whatever else is queued (re-raising a crash of the graph)."""
        finished = failed = 0
        while True:
            if isinstance(report, BaseException):
                raise report
            if report is not None:
                index, outcome = report
                if self.outcomes[index] is None:
                    self.outcomes[index] = outcome
                    finished += 1
                    failed += not outcome.success
            try:
                report = self.reports.get_nowait()
            except queue.Empty:
                break
        self.progress.advance(finished, failed)

    def _write_ready(self) -> bool:
        """Write the outcomes that complete the prefix; False when the output failed."""
        end = self.written
        while end < len(self.outcomes) and self.outcomes[end] is not None:
            end += 1
        if end == self.written:
            return True
        lines = b"".join(
            self.encoder.encode(outcome) + b"\n"
            for outcome in self.outcomes[self.written : end]
            if outcome is not None
        )
        try:
            self.out.write(lines)
            self.out.flush()
        except OSError as err:
            self._output_failed(err)
            return False
        self.written = end
        return True

    def _give_up(self) -> None:
        """Stop waiting: take what has arrived, fail the rest, write everything left."""
        self.cancel.set()
        with contextlib.suppress(queue.Empty):
            while True:
                report = self.reports.get_nowait()
                if isinstance(report, tuple) and self.outcomes[report[0]] is None:
                    self.outcomes[report[0]] = report[1]
        for index, step in enumerate(self.steps):
            if self.outcomes[index] is None:
                message = _INTERRUPTED if step.task_id in self.started else "cancelled"
                self.outcomes[index] = StepOutcome.failed(step.task_id, step.agent, message)
        if self.output_error is None:
            self._write_ready()

    def _output_failed(self, err: OSError) -> None:
        self.output_error = (
            f"cannot write the outcomes to {_name_of(self.out)}: {err.strerror or err}"
        )
        self.cancel.set()  # nobody will read them: stop running steps
        if self.out is getattr(sys.stdout, "buffer", None):
            # Keep the interpreter from failing again when it flushes stdout at exit.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)

    def summary(self, outcomes: list[StepOutcome]) -> str:
        failed = [outcome.task_id for outcome in outcomes if not outcome.success]
        head = "done"
        if self.stopped_by is not None:
            head = "terminated" if self.stopped_by == signal.SIGTERM else "interrupted"
        # Tokens of the steps run this time (not those restored from the checkpoint).
        ran = [o.usage for o in outcomes if o.usage is not None and o.task_id in self.started]
        text = (
            f"{head}: {len(outcomes)} steps, {len(outcomes) - len(failed)} succeeded, "
            f"{len(failed)} failed in {self.elapsed:.2f}s, tokens "
            f"{sum(u.input_tokens for u in ran)} in / {sum(u.output_tokens for u in ran)} out"
        )
        if self.store is not None:
            restored = sum(1 for o in outcomes if o.success and o.task_id not in self.started)
            text += f", {restored} restored from the checkpoint"
        if failed:
            shown = ", ".join(failed[:10]) + (", ..." if len(failed) > 10 else "")
            text += f" (failed: {shown})"
        return text


def _name_of(out: IO[bytes]) -> str:
    if out is getattr(sys.stdout, "buffer", None):
        return "stdout"
    return str(getattr(out, "name", "the output"))
