"""The `actor-orch` command, run as a real subprocess through both of its entry points.

Every model server here is a `ThreadingHTTPServer` the test starts on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import os
import re
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


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (a run stopped by a signal) is expected here


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

        server = QuietServer(("127.0.0.1", 0), Handler)
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
    "unknown-need": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "p") + step("t1", "a", "q") + 'needs = ["t0", "t9"]\n',
        "$.steps[1].needs[1]: unknown step 't9': no step has this task id",
    ),
    "cycle": BadFile(
        "wf.toml",
        GOOD_AGENTS
        + step("t0", "a", "p")
        + 'needs = ["t2"]\n'
        + step("t1", "a", "q")
        + 'needs = ["t0"]\n'
        + step("t2", "a", "r")
        + 'needs = ["t1"]\n',
        "$.steps[0].needs[0]: dependency cycle: t0 -> t2 -> t1 -> t0",
    ),
    "template-not-needed": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "p") + step("t1", "a", "use {{ steps.t0.output }}"),
        "$.steps[1].prompt: {{ steps.t0.output }} refers to step 't0', which is not in this "
        "step's needs",
    ),
    "malformed-template": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "use {{ t0.output }}"),
        "$.steps[0].prompt: {{ t0.output }} is not a template this format knows",
    ),
    "structured-without-schema": BadFile(
        "wf.toml",
        GOOD_AGENTS
        + step("t0", "a", "p")
        + step("t1", "a", "{{ steps.t0.structured.x }}")
        + 'needs = ["t0"]\n',
        "$.steps[1].prompt: {{ steps.t0.structured.x }}: step 't0' has no output_schema",
    ),
    "needs-not-a-list": BadFile(
        "wf.toml",
        GOOD_AGENTS + step("t0", "a", "p") + step("t1", "a", "q") + 'needs = "t0"\n',
        "Expected `array`, got `str` - at `$.steps[1].needs`",
    ),
    "bad-setting": BadFile(
        "wf.toml",
        '[agents.a]\n[agents.a.settings]\ntemperature = "hot"\n' + step("t0", "a", "p"),
        "Expected `float | null`, got `str` - at `$.agents.a.settings.temperature`",
    ),
    "unknown-setting": BadFile(
        "wf.toml",
        "[agents.a]\n[agents.a.settings]\nmax_token = 5\n" + step("t0", "a", "p"),
        "Object contains unknown field `max_token` - at `$.agents.a.settings`",
    ),
    "invalid-setting": BadFile(
        "wf.toml",
        "[agents.a]\n[agents.a.settings]\nmax_tokens = 0\n" + step("t0", "a", "p"),
        "max_tokens must be an int >= 1, got 0 - at `$.agents.a.settings`",
    ),
    "bad-history-limit": BadFile(
        "wf.toml",
        "[agents.a]\nhistory_limit = 0\n" + step("t0", "a", "p"),
        "Expected `int` >= 1 - at `$.agents.a.history_limit`",
    ),
    "server-field-on-echo": BadFile(
        "wf.toml",
        '[agents.a]\nmodel = "echo"\nmodel_name = "big"\n' + step("t0", "a", "p"),
        '$.agents.a.model_name: only used by model = "openai", not "echo"',
    ),
    "bad-agent-base-url": BadFile(
        "wf.toml",
        '[agents.a]\nbase_url = "ftp://x"\n' + step("t0", "a", "p"),
        "$.agents.a.base_url: must be an http:// or https:// URL, got 'ftp://x'",
    ),
    # Delegation (more cases in test_delegation.py, in-process).
    "unknown-delegate": BadFile(
        "wf.toml",
        GOOD_AGENTS + 'delegates = ["a", "ghost"]\n' + step("t0", "a", "p"),
        "$.agents.a.delegates[1]: agent 'ghost' is not defined in [agents]",
    ),
    "undefined-parent": BadFile(
        "wf.toml",
        GOOD_AGENTS + 'parent = "boss"\n' + step("t0", "a", "p"),
        "$.agents.a.parent: agent 'boss' is not defined in [agents]",
    ),
    "parent-cycle": BadFile(
        "wf.toml",
        GOOD_AGENTS + 'parent = "b"\n[agents.b]\nparent = "a"\n' + step("t0", "a", "p"),
        "$.agents.a.parent: parent cycle: a -> b -> a",
    ),
}
# Cases also checked with `validate` (each run costs an interpreter start-up).
VALIDATED = (
    "missing-file",
    "duplicate-task-id",
    "cycle",
    "template-not-needed",
    "bad-setting",
    "parent-cycle",
)
BadRuns = dict[
    str, tuple[Path, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str] | None]
]


@pytest.fixture(scope="module")
def bad_file_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> BadRuns:
    paths = {}
    for case, bad in BAD_FILES.items():
        paths[case] = tmp_path_factory.mktemp(case) / bad.name
        if bad.text is not None:
            paths[case].write_text(textwrap.dedent(bad.text))
    commands = {(case, "run"): [*PYTHON_M, "run", str(path)] for case, path in paths.items()}
    for case in VALIDATED:
        commands[case, "validate"] = [*PYTHON_M, "validate", str(paths[case])]
    results = run_all(commands)
    return {
        case: (paths[case], results[case, "run"], results.get((case, "validate")))
        for case in BAD_FILES
    }


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_workflow_file_exits_2_with_one_line_naming_file_and_field(
    case: str, bad_file_runs: BadRuns
) -> None:
    path, result, validated = bad_file_runs[case]
    for each in (result, validated) if validated else (result,):  # `validate` rejects alike
        assert each.returncode == 2
        assert each.stdout == ""
        assert "Traceback" not in each.stderr
        [line] = each.stderr.splitlines()
        assert line.startswith(f"error: {path}: ")
        assert BAD_FILES[case].expected in line


# --- workflow graphs -----------------------------------------------------------------------------


def by_prompt(
    replies: dict[str, Callable[[str], str]], default: Callable[[str], str] = lambda text: text
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A server behaviour: the reply to a request is `replies[first word of its prompt](prompt)`."""

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        text = last_user_text(body)
        return completion(replies.get(text.split()[0], default)(text))

    return respond


def test_a_step_runs_while_an_unrelated_slow_step_is_still_running(
    tmp_path: Path, chat_server: Any
) -> None:
    # "slow" is answered only once the server has seen "write", which needs "facts": with a
    # barrier between levels, "write" could not start before "slow" ended.
    write_seen = threading.Event()

    def slow(text: str) -> str:
        return "released" if write_seen.wait(WAIT_S) else "held back by a barrier"

    def write_reply(text: str) -> str:
        write_seen.set()
        return f"draft from {text}"

    server = chat_server(by_prompt({"slow": slow, "write": write_reply}, str.upper))
    workflow = write(
        tmp_path,
        "wf.toml",
        "[agents.a]\n"
        + step("slow", "a", "slow job")
        + step("facts", "a", "facts please")
        + step("write", "a", "write {{ steps.facts.output }}")
        + 'needs = ["facts"]\n',
    )
    result = run_cli("run", str(workflow), "--model", "openai", "--base-url", server.base_url)
    assert result.returncode == 0, result.stderr
    outputs = [o.output for o in outcomes_of(result.stdout)]
    assert outputs == ["released", "FACTS PLEASE", "draft from write FACTS PLEASE"]


def test_a_step_whose_need_failed_is_not_run_and_names_it(tmp_path: Path) -> None:
    workflow = write(
        tmp_path,
        "wf.toml",
        GOOD_AGENTS
        + step("bad", "a", "not json")
        + "output_schema = { type = 'object' }\n"
        + step("child", "a", "use {{ steps.bad.output }}")
        + 'needs = ["bad"]\n'
        + step("grandchild", "a", "use {{ steps.child.output }}")
        + 'needs = ["child"]\n'
        + step("fine", "a", "ok"),
    )
    result = run_cli("run", str(workflow))
    assert result.returncode == 1
    bad, child, grandchild, fine = outcomes_of(result.stdout)
    assert not bad.success
    assert child.output == "not run: needed step 'bad' failed"
    assert grandchild.output == "not run: needed step 'child' failed"
    assert fine.success
    assert child.usage is None  # it never ran


def test_templates_read_output_and_structured_fields_of_needed_steps(tmp_path: Path) -> None:
    # The echo model repeats the prompt, so the first step's "answer" is this JSON.
    workflow = write(
        tmp_path,
        "wf.toml",
        GOOD_AGENTS
        + "[[steps]]\n"
        + 'task_id = "city"\nagent = "a"\ndescription = "d"\n'
        + """prompt = '{"name": "Lisbon", "facts": {"river": "Tagus"}}'\n"""
        + 'output_schema = { type = "object" }\n'
        + step(
            "use",
            "a",
            "{{ steps.city.structured.name }} on the {{ steps.city.structured.facts.river }}",
        )
        + 'needs = ["city"]\n',
    )
    result = run_cli("run", str(workflow))
    assert result.returncode == 0, result.stderr
    assert outcomes_of(result.stdout)[1].output == "Lisbon on the Tagus"


# --- per-agent models ----------------------------------------------------------------------------


def test_per_agent_model_settings_and_servers_reach_the_servers(
    tmp_path: Path, chat_server: Any
) -> None:
    first = chat_server(lambda body: completion("from first"))
    second = chat_server(lambda body: completion("from second"))
    workflow = write(
        tmp_path,
        "wf.toml",
        f"""
        [agents.tuned]
        model = "openai"
        model_name = "tuned-model"
        history_limit = 4
        [agents.tuned.settings]
        max_tokens = 7
        temperature = 0.25
        seed = 3
        stop = ["END"]
        extra_body = {{ top_k = 5 }}

        [agents.elsewhere]
        model = "openai"
        base_url = "{second.base_url}"
        model_name = "other-model"
        api_key_env = "ACTOR_ORCH_SECOND_KEY"

        [agents.plain]
        """
        + step("t0", "tuned", "q0")
        + step("t1", "elsewhere", "q1")
        + step("t2", "plain", "q2"),
    )
    result = run_cli(
        "run", str(workflow), "--model", "openai", "--base-url", first.base_url,
        "--model-name", "default-model", env={"ACTOR_ORCH_SECOND_KEY": "k2"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [o.output for o in outcomes_of(result.stdout)] == [
        "from first",
        "from second",
        "from first",
    ]
    tuned = next(b for b in first.requests if last_user_text(b) == "q0")
    assert tuned["model"] == "tuned-model"
    assert (tuned["max_tokens"], tuned["temperature"], tuned["seed"]) == (7, 0.25, 3)
    assert tuned["stop"] == ["END"]
    assert tuned["top_k"] == 5
    plain = next(b for b in first.requests if last_user_text(b) == "q2")
    assert plain["model"] == "default-model"
    assert not {"max_tokens", "temperature", "seed"} & set(plain)
    [elsewhere] = second.requests
    assert elsewhere["model"] == "other-model"
    assert second.headers[0]["Authorization"] == "Bearer k2"
    assert all("Authorization" not in h for h in first.headers)


def test_agents_on_the_same_server_share_one_model_object(tmp_path: Path) -> None:
    from actor_orch import cli, workflow

    path = write(
        tmp_path,
        "wf.toml",
        """
        [agents.a]
        model = "openai"
        [agents.b]
        model = "openai"
        [agents.b.settings]
        max_tokens = 5
        [agents.c]
        model = "openai"
        model_name = "other"
        [agents.d]
        model = "openai"
        base_url = "http://127.0.0.1:9/v1"
        [agents.e]
        """
        + step("t", "a", "p"),
    )
    args = cli._build_parser().parse_args(["run", str(path), "--base-url", "http://127.0.0.1:9/v1"])
    agents = cli._resolve_agents(args, workflow.load_workflow(path))
    assert agents["a"].model is agents["b"].model is agents["d"].model  # same URL, name, key
    assert agents["c"].model is not agents["a"].model
    assert type(agents["e"].model).__name__ == "EchoModel"
    assert agents["a"].fingerprint != agents["b"].fingerprint  # settings differ


def test_a_missing_key_variable_of_an_agent_names_the_agent(tmp_path: Path) -> None:
    workflow = write(
        tmp_path,
        "wf.toml",
        '[agents.a]\nmodel = "openai"\napi_key_env = "ACTOR_ORCH_UNSET_KEY_2"\n'
        + step("t", "a", "p"),
    )
    result = run_cli("run", str(workflow))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {workflow}: $.agents.a.api_key_env: environment variable "
        "ACTOR_ORCH_UNSET_KEY_2 is not set or empty"
    ]


# --- validate and --version ----------------------------------------------------------------------


def test_validate_prints_a_summary_and_runs_nothing(tmp_path: Path) -> None:
    results = run_all(
        {
            "research": [*PYTHON_M, "validate", "examples/research.toml"],
            "version": [*PYTHON_M, "--version"],
        }
    )
    research, version = results["research"], results["version"]
    assert research.returncode == 0, research.stderr
    assert research.stdout == (
        "examples/research.toml: ok: 3 agents, 3 steps, 3 needs, longest chain 3\n"
    )
    assert research.stderr == ""
    assert version.returncode == 0
    assert re.fullmatch(r"actor-orch \d+\.\d+\.\d+\S*\n", version.stdout)


# --- incremental output and signals --------------------------------------------------------------


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*PYTHON_M, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def finish(process: subprocess.Popen[str], release: threading.Event) -> tuple[str, str]:
    """Release the server, then collect the process's output (killing it if it hangs)."""
    try:
        return process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
            process.communicate()


def held_workflow(tmp_path: Path, quick: int, held: int) -> Path:
    """`quick` echo steps, then `held` steps on the server (agent "remote")."""
    steps = "".join(step(f"q{i}", "local", f"quick {i}") for i in range(quick))
    steps += "".join(step(f"h{i}", "remote", f"held {i}") for i in range(held))
    return write(tmp_path, "wf.toml", '[agents.local]\nmodel = "echo"\n[agents.remote]\n' + steps)


def test_each_outcome_is_written_as_soon_as_the_steps_before_it_finished(
    tmp_path: Path, chat_server: Any
) -> None:
    release = threading.Event()
    server = chat_server(held_until(release, completion("late")))
    workflow = held_workflow(tmp_path, quick=2, held=1)
    process = start_cli("run", str(workflow), "--model", "openai", "--base-url", server.base_url)
    try:
        assert process.stdout is not None
        server.wait_for_requests(1)
        first = read_line(process.stdout, WAIT_S)
        second = read_line(process.stdout, WAIT_S)
        assert not release.is_set()  # read while the last step is still held by the server
        release.set()
        stdout, stderr = finish(process, release)
    finally:
        release.set()
    assert process.returncode == 0, stderr
    outcomes = outcomes_of(first + second + stdout)
    assert [(o.task_id, o.output) for o in outcomes] == [
        ("q0", "quick 0"),
        ("q1", "quick 1"),
        ("h0", "late"),
    ]


def wait_for_stderr(process: subprocess.Popen[str], prefix: str) -> None:
    assert process.stderr is not None
    line = read_line(process.stderr, WAIT_S)
    assert line.startswith(prefix), line


@pytest.mark.parametrize("how", ["sigterm", "sigint-twice", "sigint-racing", "sigint-then-term"])
def test_a_signal_after_some_steps_finished_still_writes_exactly_one_line_per_step(
    how: str, tmp_path: Path, chat_server: Any
) -> None:
    # 12 steps finish at once; 8 are held inside model calls until the test releases them.
    release = threading.Event()
    server = chat_server(held_until(release, tool_call_completion()))
    workflow = held_workflow(tmp_path, quick=12, held=8)
    process = start_cli(
        "run", str(workflow), "--model", "openai", "--base-url", server.base_url,
        "--max-parallel", "20",
    )  # fmt: skip
    try:
        assert process.stdout is not None
        server.wait_for_requests(8)
        early = [read_line(process.stdout, WAIT_S) for _ in range(12)]
        if how == "sigterm":
            process.send_signal(signal.SIGTERM)
        elif how == "sigint-twice":
            process.send_signal(signal.SIGINT)
            wait_for_stderr(process, "interrupted: cancelling")
            process.send_signal(signal.SIGINT)
        elif how == "sigint-racing":
            process.send_signal(signal.SIGINT)
            process.send_signal(signal.SIGINT)  # may land while the first is handled
            wait_for_stderr(process, "interrupted: cancelling")
            release.set()  # if the two were merged into one, the held steps may now end
        else:
            process.send_signal(signal.SIGINT)
            process.send_signal(signal.SIGTERM)
        stdout, stderr = finish(process, release)
    finally:
        release.set()
    expected = 143 if how in ("sigterm", "sigint-then-term") else 130
    assert process.returncode == expected, stderr
    assert "Traceback" not in stderr
    outcomes = outcomes_of("".join(early) + stdout)
    assert [o.task_id for o in outcomes] == [f"q{i}" for i in range(12)] + [
        f"h{i}" for i in range(8)
    ]
    assert all(o.success for o in outcomes[:12])
    assert not any(o.success for o in outcomes[12:])
    assert all(
        o.output in ("interrupted before the step ended", "cancelled")
        or o.output.startswith("cancelled")
        for o in outcomes[12:]
    ), [o.output for o in outcomes[12:]]


def test_sigterm_waits_for_nothing_and_marks_running_steps_interrupted(
    tmp_path: Path, chat_server: Any
) -> None:
    release = threading.Event()
    server = chat_server(held_until(release, completion("never seen")))
    workflow = held_workflow(tmp_path, quick=1, held=3)
    process = start_cli(
        "run", str(workflow), "--model", "openai", "--base-url", server.base_url,
        "--max-parallel", "2",
    )  # fmt: skip
    try:
        server.wait_for_requests(2)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = finish(process, release)
    finally:
        release.set()
    assert process.returncode == 143, stderr
    assert [o.output for o in outcomes_of(stdout)] == [
        "quick 0",
        "interrupted before the step ended",
        "interrupted before the step ended",
        "cancelled",
    ]
    assert "terminated: 4 steps, 1 succeeded, 3 failed" in stderr


# --- output that cannot be written ---------------------------------------------------------------


def test_a_full_disk_is_one_error_line_and_exit_1() -> None:
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [*PYTHON_M, "run", "examples/fanout.toml"], stdout=full, stderr=subprocess.PIPE,
            text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Exception ignored" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: cannot write the outcomes to stdout: No space left on device"]


def test_a_closed_stdout_pipe_is_one_error_line_and_exit_1() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
    try:
        result = subprocess.run(
            [*PYTHON_M, "run", "examples/fanout.toml"], stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Exception ignored" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: cannot write the outcomes to stdout: Broken pipe"]


def test_a_reader_that_goes_away_early_gets_no_traceback(tmp_path: Path) -> None:
    steps = "".join(step(f"t{i}", "a", f"p{i}") for i in range(500))
    workflow = write(tmp_path, "wf.toml", GOOD_AGENTS + steps)
    process = start_cli("run", str(workflow))
    assert process.stdout is not None
    read_line(process.stdout, WAIT_S)
    process.stdout.close()  # like `| head -1`
    _, stderr = finish(process, threading.Event())
    assert process.returncode in (0, 1)
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr


# --- --resume ------------------------------------------------------------------------------------


def counting_server(chat_server: Any) -> ChatServer:
    server: ChatServer = chat_server(lambda body: completion(f"<{last_user_text(body)}>"))
    return server


def research_like(tmp_path: Path, critic_prompt: str = "check {{ steps.draft.output }}") -> Path:
    return write(
        tmp_path,
        "wf.toml",
        "[agents.a]\n"
        + step("facts", "a", "facts")
        + step("draft", "a", "draft {{ steps.facts.output }}")
        + 'needs = ["facts"]\n'
        + step("check", "a", critic_prompt)
        + 'needs = ["draft"]\n'
        + step("aside", "a", "aside"),
    )


def test_resume_runs_nothing_the_second_time(tmp_path: Path, chat_server: Any) -> None:
    server = counting_server(chat_server)
    workflow = research_like(tmp_path)
    args = ("run", str(workflow), "--model", "openai", "--base-url", server.base_url, "--resume")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert len(server.requests) == 4
    assert (tmp_path / ".actor_orch" / "checkpoints.sqlite").is_file()
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert len(server.requests) == 4  # nothing ran again
    assert _without_durations(second.stdout) == _without_durations(first.stdout)
    assert "4 restored from the checkpoint" in second.stderr


def test_resume_reruns_a_changed_step_and_what_reads_it(tmp_path: Path, chat_server: Any) -> None:
    server = counting_server(chat_server)
    db = tmp_path / "elsewhere" / "runs.sqlite"
    workflow = research_like(tmp_path)
    args = ("--model", "openai", "--base-url", server.base_url, "--checkpoint-db", str(db))
    assert run_cli("run", str(workflow), *args).returncode == 0
    assert db.is_file()
    research_like(tmp_path, critic_prompt="verify {{ steps.draft.output }}")
    result = run_cli("run", str(workflow), *args)
    assert result.returncode == 0, result.stderr
    assert [last_user_text(b) for b in server.requests[4:]] == ["verify <draft <facts>>"]
    assert "3 restored from the checkpoint" in result.stderr
    # The checkpoint lives in --checkpoint-db, not beside the workflow.
    assert not (tmp_path / ".actor_orch").exists()


def test_resume_after_sigterm_runs_only_the_unfinished_steps(
    tmp_path: Path, chat_server: Any
) -> None:
    release = threading.Event()
    server = chat_server(held_until(release, completion("done now")))
    workflow = held_workflow(tmp_path, quick=3, held=2)
    args = ("run", str(workflow), "--model", "openai", "--base-url", server.base_url, "--resume")
    process = start_cli(*args)
    try:
        server.wait_for_requests(2)
        process.send_signal(signal.SIGTERM)
        stdout, _ = finish(process, release)
    finally:
        release.set()
    assert process.returncode == 143
    assert [o.success for o in outcomes_of(stdout)] == [True, True, True, False, False]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert len(server.requests) == 4  # the two held steps ran again; the echo steps did not
    assert "3 restored from the checkpoint" in result.stderr


def test_resume_with_a_corrupt_checkpoint_file_warns_and_runs_everything(
    tmp_path: Path,
) -> None:
    db = tmp_path / "broken.sqlite"
    db.write_bytes(b"not a database at all\n" * 100)
    result = run_cli("run", "examples/fanout.toml", "--checkpoint-db", str(db))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert str(db) in warning and "running without them" in warning
    assert len(outcomes_of(result.stdout)) == 6
