"""The `actor-orch` command, run as a real subprocess through both of its entry points.

Every model server here is a `ThreadingHTTPServer` the test starts on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import outcomes_of, read_line

ROOT = Path(__file__).resolve().parent.parent
# The console script installed next to the interpreter running the tests (the venv's bin).
CONSOLE_SCRIPT = [str(Path(sys.executable).parent / "actor-orch")]
PYTHON_M = [sys.executable, "-m", "actor_orch"]
ENTRY_POINTS = pytest.mark.parametrize(
    "entry", [CONSOLE_SCRIPT, PYTHON_M], ids=["console-script", "python-m"]
)
RUN_TIMEOUT_S = 30.0  # bound on any one CLI run; the runs here take well under a second
WAIT_S = 10.0  # bound on waiting for a loopback server to see a request


def run_cli(
    *args: str, entry: list[str] = PYTHON_M, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*entry, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=ROOT,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )


def run_all(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run independent commands at once (each pays the interpreter start-up); results by key."""
    started = {
        key: subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        for key, command in commands.items()
    }
    finished = {}
    for key, process in started.items():
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
        finished[key] = subprocess.CompletedProcess(
            commands[key], process.returncode, stdout, stderr
        )
    return finished


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def step(task_id: str, agent: str, prompt: str) -> str:
    return f"""
        [[steps]]
        task_id = "{task_id}"
        agent = "{agent}"
        description = "step {task_id}"
        prompt = "{prompt}"
        """


# --- a loopback chat-completions server ----------------------------------------------------------


def completion(content: str) -> dict[str, Any]:
    return {
        "choices": [
            {"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }


def tool_call_completion() -> dict[str, Any]:
    """A reply asking for a tool the agent does not have: the loop goes on with another turn."""
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    return {
        "choices": [
            {
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }


def held_until(
    release: threading.Event, reply: dict[str, Any]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A server behaviour: hold each request until the test sets `release` (bounded), then reply."""

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        release.wait(WAIT_S)
        return reply

    return respond


@dataclass
class ChatServer:
    """Records every request; `reply(body)` makes the response JSON (it may block)."""

    reply: Callable[[dict[str, Any]], dict[str, Any]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    seen: threading.Condition = field(default_factory=threading.Condition)
    base_url: str = ""

    def wait_for_requests(self, count: int) -> None:
        with self.seen:
            assert self.seen.wait_for(lambda: len(self.requests) >= count, WAIT_S), (
                f"server saw {len(self.requests)} requests, expected {count}"
            )


@pytest.fixture
def chat_server() -> Iterator[Callable[[Callable[[dict[str, Any]], dict[str, Any]]], ChatServer]]:
    servers: list[ThreadingHTTPServer] = []

    def start(reply: Callable[[dict[str, Any]], dict[str, Any]]) -> ChatServer:
        state = ChatServer(reply)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with state.seen:
                    state.requests.append(body)
                    state.headers.append(dict(self.headers))
                    state.seen.notify_all()
                data = json.dumps(state.reply(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        # A short poll interval keeps shutdown() at teardown quick.
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def last_user_text(body: dict[str, Any]) -> str:
    return str([m for m in body["messages"] if m["role"] == "user"][-1]["content"])


# --- help and usage ------------------------------------------------------------------------------


@ENTRY_POINTS
def test_help_lists_the_run_command(entry: list[str]) -> None:
    results = run_all({"top": [*entry, "--help"], "run": [*entry, "run", "--help"]})
    top, run = results["top"], results["run"]
    assert top.returncode == 0
    assert "run" in top.stdout
    assert run.returncode == 0
    for option in ("--model", "--base-url", "--model-name", "--api-key-env", "--max-parallel"):
        assert option in run.stdout
    for option in ("--timeout", "--out", "--no-progress", "-v"):
        assert option in run.stdout


BAD_USAGE = {
    "no-command": [],
    "no-workflow": ["run"],
    "zero-parallel": ["run", "examples/fanout.toml", "--max-parallel", "0"],
    "negative-timeout": ["run", "examples/fanout.toml", "--timeout", "-1"],
    "bad-model": ["run", "examples/fanout.toml", "--model", "gpt"],
    "unknown-option": ["run", "examples/fanout.toml", "--no-such-option"],
}


@pytest.fixture(scope="module")
def bad_usage_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    return run_all({case: [*PYTHON_M, *args] for case, args in BAD_USAGE.items()})


@pytest.mark.parametrize("case", list(BAD_USAGE))
def test_bad_usage_exits_2_without_running(
    case: str, bad_usage_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = bad_usage_runs[case]
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: actor-orch" in result.stderr
    assert "Traceback" not in result.stderr


# --- running ------------------------------------------------------------------------------------


def test_outcomes_come_in_step_order_whatever_the_parallelism(tmp_path: Path) -> None:
    steps = "".join(step(f"t{i}", f"a{i % 3}", f"prompt {i}") for i in range(12))
    agents = "".join(f'[agents.a{i}]\nsystem_prompt = "agent {i}"\n' for i in range(3))
    workflow = write(tmp_path, "wf.toml", "max_parallel = 1\n" + agents + steps)
    result = run_cli("run", str(workflow), "--max-parallel", "5")
    assert result.returncode == 0, result.stderr
    outcomes = outcomes_of(result.stdout)
    assert [o.task_id for o in outcomes] == [f"t{i}" for i in range(12)]
    assert [o.output for o in outcomes] == [f"prompt {i}" for i in range(12)]
    assert [o.agent for o in outcomes] == [f"a{i % 3}" for i in range(12)]
    assert all(o.success and o.session_id == f"task-run-{o.task_id}" for o in outcomes)
    assert "12 steps, 12 succeeded, 0 failed" in result.stderr


def test_out_writes_the_outcomes_to_the_file_and_nothing_to_stdout(tmp_path: Path) -> None:
    out = tmp_path / "outcomes.jsonl"
    result = run_cli("run", "examples/fanout.toml", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    outcomes = outcomes_of(out.read_text())
    assert len(outcomes) == 6
    assert all(o.success for o in outcomes)


def test_unwritable_out_is_a_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "missing-folder" / "outcomes.jsonl"
    result = run_cli("run", "examples/fanout.toml", "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --out {out}")
    assert "Traceback" not in result.stderr


def test_a_failing_step_exits_1_and_the_others_still_succeed(tmp_path: Path) -> None:
    # The echo model repeats the prompt, which is not JSON, so the output schema fails.
    workflow = write(
        tmp_path,
        "wf.toml",
        """
        [agents.a]
        [[steps]]
        task_id = "ok"
        agent = "a"
        description = "fine"
        prompt = "hello"
        [[steps]]
        task_id = "bad"
        agent = "a"
        description = "not JSON"
        prompt = "not json at all"
        output_schema = { type = "object" }
        """,
    )
    result = run_cli("run", str(workflow))
    assert result.returncode == 1
    ok, bad = outcomes_of(result.stdout)
    assert (ok.task_id, ok.success) == ("ok", True)
    assert (bad.task_id, bad.success) == ("bad", False)
    assert "structured output" in bad.output.lower()
    assert "2 steps, 1 succeeded, 1 failed" in result.stderr
    assert "bad" in result.stderr


def test_verbose_turns_on_debug_logs_and_they_are_off_by_default() -> None:
    results = run_all(
        {
            "quiet": [*PYTHON_M, "run", "examples/fanout.toml"],
            "verbose": [*PYTHON_M, "run", "examples/fanout.toml", "-v"],
        }
    )
    quiet, verbose = results["quiet"], results["verbose"]
    assert quiet.returncode == verbose.returncode == 0
    assert "DEBUG" not in quiet.stderr
    assert "DEBUG" in verbose.stderr
    assert _without_durations(quiet.stdout) == _without_durations(verbose.stdout)


def _without_durations(lines: str) -> list[dict[str, Any]]:
    outcomes = [json.loads(line) for line in lines.splitlines()]
    for outcome in outcomes:
        outcome.pop("duration_s", None)
    return outcomes


def test_timeout_fails_the_steps_still_running(tmp_path: Path, chat_server: Any) -> None:
    release = threading.Event()
    server = chat_server(held_until(release, completion("late")))
    workflow = write(tmp_path, "wf.toml", "[agents.slow]\n" + step("t1", "slow", "wait"))
    try:
        result = run_cli(
            "run", str(workflow), "--model", "openai", "--base-url", server.base_url,
            "--timeout", "0.5",
        )  # fmt: skip
    finally:
        release.set()
    assert result.returncode == 1
    [outcome] = outcomes_of(result.stdout)
    assert not outcome.success
    assert "did not finish within 0.5s" in outcome.output


# --- --model openai against a loopback server ----------------------------------------------------


@ENTRY_POINTS
def test_openai_model_talks_to_the_server_with_key_and_model_name(
    tmp_path: Path, chat_server: Any, entry: list[str]
) -> None:
    server = chat_server(lambda body: completion(f"answer to {last_user_text(body)}"))
    workflow = write(
        tmp_path,
        "wf.json",
        json.dumps(
            {
                "agents": {"remote": {"system_prompt": "be brief"}, "local": {"model": "echo"}},
                "steps": [
                    {"task_id": f"t{i}", "agent": agent, "description": "d", "prompt": f"q{i}"}
                    for i, agent in enumerate(["remote", "local", "remote"])
                ],
            }
        ),
    )
    result = run_cli(
        "run", str(workflow), "--model", "openai", "--base-url", server.base_url,
        "--model-name", "tiny-model", "--api-key-env", "ACTOR_ORCH_TEST_KEY",
        entry=entry, env={"ACTOR_ORCH_TEST_KEY": "sekrit"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [o.output for o in outcomes_of(result.stdout)] == ["answer to q0", "q1", "answer to q2"]
    # Only the agent left on the default model went to the server; the echo agent did not.
    assert sorted(last_user_text(body) for body in server.requests) == ["q0", "q2"]
    assert {body["model"] for body in server.requests} == {"tiny-model"}
    assert all(h["Authorization"] == "Bearer sekrit" for h in server.headers)
    assert all(
        body["messages"][0] == {"role": "system", "content": "be brief"} for body in server.requests
    )


def test_missing_api_key_variable_exits_2_before_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ACTOR_ORCH_UNSET_KEY"}
    result = subprocess.run(
        [*PYTHON_M, "run", "examples/fanout.toml", "--model", "openai",
         "--api-key-env", "ACTOR_ORCH_UNSET_KEY"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: --api-key-env: environment variable ACTOR_ORCH_UNSET_KEY is not set or empty"
    ]


def test_bad_base_url_exits_2() -> None:
    result = run_cli("run", "examples/fanout.toml", "--model", "openai", "--base-url", "ftp://x")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --base-url:")
    assert "Traceback" not in result.stderr


# --- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_cancels_the_run_and_still_writes_every_outcome(
    tmp_path: Path, chat_server: Any
) -> None:
    # Until released the server holds every request; then it asks for a tool the agents lack,
    # so a running step never finishes by itself and only the cancel can end it.
    release = threading.Event()
    server = chat_server(held_until(release, tool_call_completion()))
    steps = "".join(step(f"t{i}", f"a{i % 2}", f"p{i}") for i in range(5))
    workflow = write(tmp_path, "wf.toml", "[agents.a0]\n[agents.a1]\n" + steps)
    process = subprocess.Popen(
        [*PYTHON_M, "run", str(workflow), "--model", "openai", "--base-url", server.base_url,
         "--max-parallel", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        server.wait_for_requests(2)  # both running steps are inside a model call
        process.send_signal(signal.SIGINT)
        release.set()
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    outcomes = outcomes_of(stdout)
    assert [o.task_id for o in outcomes] == [f"t{i}" for i in range(5)]
    assert not any(o.success for o in outcomes)
    # The two running steps were aborted, the three never started were cancelled.
    assert all(o.output.startswith("cancelled") for o in outcomes), [o.output for o in outcomes]
    assert "interrupted: 5 steps, 0 succeeded, 5 failed" in stderr


def test_second_ctrl_c_stops_waiting_for_steps_stuck_in_a_model_call(
    tmp_path: Path, chat_server: Any
) -> None:
    # The server never answers during the run, so the cancelled steps cannot reach a boundary.
    release = threading.Event()
    server = chat_server(held_until(release, completion("too late")))
    steps = step("t0", "a", "p0") + step("t1", "b", "p1") + step("t2", "b", "p2")
    workflow = write(tmp_path, "wf.toml", '[agents.a]\n[agents.b]\nmodel = "echo"\n' + steps)
    process = subprocess.Popen(
        [*PYTHON_M, "run", str(workflow), "--model", "openai", "--base-url", server.base_url,
         "--max-parallel", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        server.wait_for_requests(1)
        process.send_signal(signal.SIGINT)
        # Two signals sent back to back may be handled as one: wait for the first to land.
        assert read_line(process.stderr, WAIT_S).startswith("interrupted: cancelling")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted again" in stderr
    outcomes = outcomes_of(stdout)
    assert [(o.task_id, o.success) for o in outcomes] == [
        ("t0", False),
        ("t1", False),
        ("t2", False),
    ]
    assert outcomes[0].output == "interrupted before the step ended"


# --- bad workflow files --------------------------------------------------------------------------

GOOD_AGENTS = '[agents.a]\nsystem_prompt = "s"\n'


@dataclass(frozen=True)
class BadFile:
    name: str
    text: str | None  # None: the file does not exist
    expected: str  # in the error line, after "error: <path>: "


BAD_FILES = {
    "missing-file": BadFile("absent.toml", None, "cannot read the file: No such file"),
    "not-toml-or-json": BadFile("wf.yaml", "agents: {}", "unsupported workflow format"),
    "unparsable-toml": BadFile("wf.toml", "[agents\n", "not valid TOML"),
    "unparsable-json": BadFile("wf.json", '{"agents": ', "not valid JSON"),
    "missing-field": BadFile(
        "wf.toml",
        GOOD_AGENTS + '[[steps]]\ntask_id = "t"\nagent = "a"\ndescription = "d"\n',
        "Object missing required field `prompt` - at `$.steps[0]`",
    ),
    "wrong-type": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "p") + '[[steps]]\ntask_id = "t1"\nagent = 7\n'
        'description = "d"\nprompt = "p"\n',
        "Expected `str`, got `int` - at `$.steps[1].agent`",
    ),
    "wrong-type-json": BadFile(
        "wf.json",
        '{"agents": {"a": {"max_turns": "many"}}, "steps": []}',
        "Expected `int | null`, got `str` - at `$.agents.a.max_turns`",
    ),
    "undefined-agent": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "p") + step("t1", "nobody", "p"),
        "$.steps[1].agent: agent 'nobody' is not defined in [agents]",
    ),
    "duplicate-task-id": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "p") + step("t0", "a", "q"),
        "$.steps[1].task_id: duplicate task id 't0' (first used at $.steps[0])",
    ),
    "no-steps": BadFile(
        "wf.toml", "steps = []\n" + GOOD_AGENTS, "$.steps: the workflow has no steps"
    ),
    "no-steps-key": BadFile("wf.toml", GOOD_AGENTS, "Object missing required field `steps`"),
    "unknown-agent-field": BadFile(
        "wf.toml",
        '[agents.a]\nsytem_prompt = "s"\n' + step("t0", "a", "p"),
        "Object contains unknown field `sytem_prompt` - at `$.agents.a`",
    ),
    "unknown-top-level-field": BadFile(
        "wf.toml",
        "max_paralel = 2\n" + GOOD_AGENTS + step("t0", "a", "p"),
        "Object contains unknown field `max_paralel`",
    ),
    "unknown-step-field": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "p") + "max_step = 2\n",
        "Object contains unknown field `max_step` - at `$.steps[0]`",
    ),
    "bad-agent-named": BadFile(
        "wf.toml",
        '[agents.good]\n[agents."two words"]\nmax_turns = 0\n' + step("t0", "good", "p"),
        'Expected `int` >= 1 - at `$.agents["two words"].max_turns`',
    ),
    "bad-model": BadFile(
        "wf.toml",
        '[agents.a]\nmodel = "gpt"\n' + step("t0", "a", "p"),
        "Invalid enum value 'gpt' - at `$.agents.a.model`",
    ),
    "bad-max-steps": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "p") + "max_steps = 0\n",
        "Expected `int` >= 1 - at `$.steps[0].max_steps`",
    ),
    "bad-output-schema": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "p") + 'output_schema = { type = "banana" }\n',
        "$.steps[0].output_schema: invalid output_schema",
    ),
}


@pytest.fixture(scope="module")
def bad_file_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    paths = {}
    for case, bad in BAD_FILES.items():
        paths[case] = tmp_path_factory.mktemp(case) / bad.name
        if bad.text is not None:
            paths[case].write_text(textwrap.dedent(bad.text))
    results = run_all({case: [*PYTHON_M, "run", str(path)] for case, path in paths.items()})
    return {case: (paths[case], results[case]) for case in BAD_FILES}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_workflow_file_exits_2_with_one_line_naming_file_and_field(
    case: str, bad_file_runs: dict[str, tuple[Path, subprocess.CompletedProcess[str]]]
) -> None:
    path, result = bad_file_runs[case]
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {path}: ")
    assert BAD_FILES[case].expected in line
