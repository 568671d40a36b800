"""The `actor-orch` command: run a workflow file's steps in parallel and print their outcomes.

`actor-orch run WORKFLOW` loads the workflow (see `actor_orch.workflow`), registers its agents
on an `AgentOrchestrator` supervised by a `DefaultSupervisor`, runs the steps with
`execute_steps_parallel` on a `LocalExecutor`, and writes one JSON line per `StepOutcome`, in
step order, to `--out` or stdout. A summary goes to stderr, and a progress bar while the steps
run when stderr is a terminal.

Exit codes: 0 every step succeeded, 1 some step failed, 2 bad usage or a bad workflow file
(rejected before anything runs, with one `error: ...` line), 130 interrupted with Ctrl-C (the
outcomes of the steps are still written: unstarted ones "cancelled", running ones aborted at
their next boundary; a second Ctrl-C stops waiting for steps stuck in a model call).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import msgspec
from loguru import logger
from tqdm import tqdm

from actor_orch.agent import AgentOptions
from actor_orch.events import EventCallback, StepFinished, StepStarted
from actor_orch.executor import (
    DEFAULT_MAX_PARALLEL_TASKS,
    AgentExecutor,
    AgentStepSpec,
    LocalExecutor,
    StepOutcome,
    execute_steps_parallel,
)
from actor_orch.models import EchoModel, Model, OpenAICompatibleModel
from actor_orch.orchestrator import AgentOrchestrator
from actor_orch.supervisor import DefaultSupervisor
from actor_orch.workflow import AgentSpec, ModelKind, Workflow, WorkflowError, load_workflow

__all__ = ["main"]

EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_USAGE = 2
# What shells report for a process ended by SIGINT (128 + 2), so scripts can tell it apart.
EXIT_INTERRUPTED = 130

DEFAULT_BASE_URL = "http://127.0.0.1:11434/v1"  # Ollama's OpenAI-compatible endpoint
DEFAULT_MODEL_NAME = "llama3.2"
# Per HTTP request. Generous because a local model on a CPU can take minutes for one reply;
# `--timeout` bounds the whole run independently (a step still waiting then fails).
DEFAULT_REQUEST_TIMEOUT_S = 300.0
# How often the main thread wakes while the steps run. Waiting in slices keeps it responsive
# to Ctrl-C (a signal is handled between slices at the latest).
_WAIT_SLICE_S = 0.1
# Bound on the final orchestrator.shutdown(). Steps run on agents of their own, not on
# spawned handles, so there is normally nothing left for it to wait for.
_SHUTDOWN_TIMEOUT_S = 5.0


class UsageError(Exception):
    """A command line that cannot run (exit code 2); the message is the whole explanation."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default `sys.argv[1:]`); returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as Unix tools do, and keep
        # the interpreter from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_STEP_FAILED
    except (UsageError, WorkflowError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Ctrl-C before the steps started (or after they were written): nothing to report.
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actor-orch",
        description="Run LLM agents as supervised actors: execute a workflow file's steps.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run every step of a workflow file and print one JSON outcome per step",
        description=(
            "Run the steps of WORKFLOW (.toml or .json) in parallel and write one JSON line "
            "per step outcome, in step order. Exit code: 0 all steps succeeded, 1 some step "
            "failed, 2 bad usage or workflow file, 130 interrupted."
        ),
    )
    run.add_argument("workflow", metavar="WORKFLOW", help="workflow file (.toml or .json)")
    run.add_argument(
        "--model",
        choices=["echo", "openai"],
        default="echo",
        help="model of agents whose table sets none (default: echo, offline)",
    )
    run.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        metavar="URL",
        help=f"OpenAI-compatible API root for --model openai (default: {DEFAULT_BASE_URL})",
    )
    run.add_argument(
        "--model-name",
        default=DEFAULT_MODEL_NAME,
        metavar="NAME",
        help=f"model name sent to the server (default: {DEFAULT_MODEL_NAME})",
    )
    run.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the API key (default: send no key)",
    )
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
        "--no-progress", action="store_true", help="no progress bar (shown only on a terminal)"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    return parser


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


def _run(args: argparse.Namespace) -> int:
    if args.verbose:
        _enable_logging()
    workflow = load_workflow(args.workflow)
    log = logger.bind(workflow=args.workflow)
    log.debug("loaded {} agents, {} steps", len(workflow.agents), len(workflow.steps))
    models = _models(args, workflow)
    max_parallel = args.max_parallel or workflow.max_parallel or DEFAULT_MAX_PARALLEL_TASKS
    # Opened before the run so an unwritable --out costs nothing; the outcomes come at the end.
    with _open_output(args.out) as out:
        orchestrator = AgentOrchestrator(supervisor=DefaultSupervisor())
        try:
            for name, agent in workflow.agents.items():
                orchestrator.add_agent(name, _options_factory(name, agent, models[name]))
            executor = LocalExecutor(orchestrator, max_parallel_tasks=max_parallel)
            orchestrator.with_executor(executor)
            started = time.monotonic()
            outcomes, interrupted = _run_steps(
                executor,
                workflow.steps,
                timeout=args.timeout,
                progress=not args.no_progress and sys.stderr.isatty(),
            )
            elapsed = time.monotonic() - started
        finally:
            orchestrator.shutdown(timeout=_SHUTDOWN_TIMEOUT_S)
        _write_outcomes(out, outcomes)
    failed = [outcome.task_id for outcome in outcomes if not outcome.success]
    print(_summary(outcomes, failed, elapsed, interrupted), file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_STEP_FAILED if failed else EXIT_OK


def _enable_logging() -> None:
    """Turn the library's logs on, at DEBUG, on stderr, without tearing the progress bar."""
    logger.remove()
    # tqdm.write prints above a running bar instead of through it; without a bar it is a
    # plain write to stderr.
    logger.add(lambda message: tqdm.write(str(message), file=sys.stderr, end=""), level="DEBUG")
    logger.enable("actor_orch")


def _models(args: argparse.Namespace, workflow: Workflow) -> dict[str, Model]:
    """The model of every agent, by name. One OpenAI client serves all agents that use it."""
    kinds: dict[str, ModelKind] = {
        name: agent.model or args.model for name, agent in workflow.agents.items()
    }
    # Built only when used, so an echo-only run never needs a server URL or an API key.
    shared = _openai_model(args) if "openai" in kinds.values() else None
    echo = EchoModel()  # stateless, so one instance is as good as one per agent
    return {
        name: shared if kind == "openai" and shared is not None else echo
        for name, kind in kinds.items()
    }


def _openai_model(args: argparse.Namespace) -> OpenAICompatibleModel:
    api_key: str | None = None
    if args.api_key_env is not None:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UsageError(
                f"--api-key-env: environment variable {args.api_key_env} is not set or empty"
            )
    try:
        return OpenAICompatibleModel(
            args.base_url, args.model_name, api_key, DEFAULT_REQUEST_TIMEOUT_S
        )
    except ValueError as err:
        raise UsageError(f"--base-url: {err}") from None


def _options_factory(name: str, agent: AgentSpec, model: Model) -> Callable[[], AgentOptions]:
    """A factory for agent `name` (a function, so each agent keeps its own settings)."""

    def build() -> AgentOptions:
        return AgentOptions(
            model, system_prompt=agent.system_prompt, max_turns=agent.max_turns, name=name
        )

    return build


class _Progress:
    """A tqdm bar on stderr driven by step events; events come from worker threads."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._failed = 0
        self._bar: Any = tqdm(
            total=total, unit="step", file=sys.stderr, disable=not enabled, dynamic_ncols=True
        )

    def on_event(self, event: object) -> None:
        # tqdm guards its own writes, but the counters and the bar must move together.
        with self._lock:
            if isinstance(event, StepStarted):
                self._running += 1
            elif isinstance(event, StepFinished):
                self._running -= 1
                self._failed += not event.success
                self._bar.update(1)
            else:
                return
            self._bar.set_postfix(running=self._running, failed=self._failed, refresh=True)

    def close(self) -> None:
        with self._lock:
            self._bar.close()


class _RecordingExecutor(AgentExecutor):
    """Runs steps with `inner` and keeps each outcome as soon as its step ends.

    `execute_steps_parallel` hands back outcomes only when every step is done; these let a
    second Ctrl-C, which stops waiting for that, still report the steps that had finished.
    """

    def __init__(self, inner: AgentExecutor) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._finished: dict[str, StepOutcome] = {}

    def execute_step(self, spec: AgentStepSpec, events: EventCallback | None = None) -> StepOutcome:
        outcome = self._inner.execute_step(spec, events)
        with self._lock:
            self._finished[spec.task_id] = outcome
        return outcome

    def concurrency_hint(self) -> int:
        return self._inner.concurrency_hint()

    def finished(self, spec: AgentStepSpec) -> StepOutcome | None:
        """The outcome of `spec` if its step has ended (task ids are unique in a workflow)."""
        with self._lock:
            return self._finished.get(spec.task_id)


def _run_steps(
    executor: AgentExecutor, steps: list[AgentStepSpec], *, timeout: float | None, progress: bool
) -> tuple[list[StepOutcome], bool]:
    """Run every step; returns one outcome per step, in order, and whether Ctrl-C was pressed.

    The steps run on a daemon thread so that the main thread, which is where Python delivers
    KeyboardInterrupt, stays free to turn the first Ctrl-C into a cancel and then collect
    every outcome. A second Ctrl-C stops waiting for steps stuck in a model call; those are
    reported failed.
    """
    cancel = threading.Event()
    bar = _Progress(len(steps), progress)
    recorder = _RecordingExecutor(executor)
    outcomes: list[StepOutcome] = []
    crashed: list[BaseException] = []
    # Waited on instead of Thread.join: on Python 3.11 a join interrupted by Ctrl-C marks a
    # thread that is still running as finished (the bpo-45274 handler in
    # Thread._wait_for_tstate_lock releases the live thread's lock), losing the outcomes.
    finished = threading.Event()

    def work() -> None:
        try:
            outcomes.extend(
                execute_steps_parallel(
                    recorder, steps, bar.on_event, timeout=timeout, cancel=cancel
                )
            )
        except BaseException as err:  # reported by the main thread, which owns the exit code
            crashed.append(err)
        finally:
            finished.set()

    runner = threading.Thread(target=work, name="actor-orch-run", daemon=True)
    try:
        runner.start()
        while not finished.is_set():
            try:
                finished.wait(_WAIT_SLICE_S)
            except KeyboardInterrupt:
                if cancel.is_set():
                    tqdm.write("interrupted again: not waiting for running steps", file=sys.stderr)
                    break
                cancel.set()
                tqdm.write(
                    "interrupted: cancelling; waiting for running steps to stop "
                    "(Ctrl-C again to stop waiting)",
                    file=sys.stderr,
                )
    finally:
        bar.close()
    if crashed:
        raise crashed[0]
    if not finished.is_set():
        outcomes = [
            recorder.finished(spec)
            or StepOutcome.failed(spec.task_id, spec.agent, "interrupted before the step ended")
            for spec in steps
        ]
    return outcomes, cancel.is_set()


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[IO[bytes]]:
    """stdout, or the file at `path` opened for writing (an unwritable path is a usage error)."""
    if path is None:
        yield sys.stdout.buffer
        return
    try:
        file = open(path, "wb")  # noqa: SIM115 (closed below, after the run)
    except OSError as err:
        raise UsageError(f"--out {path}: {err.strerror or err}") from None
    with file:
        yield file


def _write_outcomes(out: IO[bytes], outcomes: list[StepOutcome]) -> None:
    encoder = msgspec.json.Encoder()
    for outcome in outcomes:
        out.write(encoder.encode(outcome) + b"\n")
    out.flush()


def _summary(
    outcomes: list[StepOutcome], failed: list[str], elapsed: float, interrupted: bool
) -> str:
    head = "interrupted" if interrupted else "done"
    text = (
        f"{head}: {len(outcomes)} steps, {len(outcomes) - len(failed)} succeeded, "
        f"{len(failed)} failed in {elapsed:.2f}s"
    )
    if failed:
        shown = ", ".join(failed[:10]) + (", ..." if len(failed) > 10 else "")
        text += f" (failed: {shown})"
    return text
