"""Every example and README snippet runs and does what its text says (real subprocesses)."""

from __future__ import annotations

import doctest
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest
from support import outcomes_of, read_line

from actor_orch.workflow import load_workflow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
CONSOLE_SCRIPT = [str(Path(sys.executable).parent / "actor-orch")]
PYTHON_M = [sys.executable, "-m", "actor_orch"]
ENTRY_POINTS = pytest.mark.parametrize(
    "entry", [CONSOLE_SCRIPT, PYTHON_M], ids=["console-script", "python-m"]
)
RUN_TIMEOUT_S = 30.0
# Python examples that a test below runs; a new example must be added here and tested.
TESTED_PYTHON_EXAMPLES = {"quickstart.py", "threaded_server.py"}


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT, check=False
    )


# --- workflow examples ---------------------------------------------------------------------------


@ENTRY_POINTS
def test_fanout_example_runs_offline_and_every_step_succeeds(entry: list[str]) -> None:
    result = run([*entry, "run", "examples/fanout.toml", "--no-progress"])
    assert result.returncode == 0, result.stderr
    outcomes = outcomes_of(result.stdout)
    workflow = load_workflow(EXAMPLES / "fanout.toml")
    assert len(workflow.agents) >= 3
    assert len(workflow.steps) >= 6
    assert [o.task_id for o in outcomes] == [s.task_id for s in workflow.steps]
    # The echo model repeats each prompt, so every output is its own step's prompt.
    assert [o.output for o in outcomes] == [s.prompt for s in workflow.steps]
    assert all(o.success for o in outcomes)
    assert {o.agent for o in outcomes} == set(workflow.agents)
    assert f"{len(outcomes)} steps, {len(outcomes)} succeeded, 0 failed" in result.stderr


@ENTRY_POINTS
def test_structured_example_validates_every_output_against_its_schema(entry: list[str]) -> None:
    result = run([*entry, "run", "examples/structured.toml"])
    assert result.returncode == 0, result.stderr
    outcomes = outcomes_of(result.stdout)
    workflow = load_workflow(EXAMPLES / "structured.toml")
    assert all(step.output_schema is not None for step in workflow.steps)
    assert all(o.success for o in outcomes)
    assert [o.structured for o in outcomes] == [json.loads(s.prompt) for s in workflow.steps]


@ENTRY_POINTS
def test_research_example_fills_each_prompt_with_the_outputs_it_needs(entry: list[str]) -> None:
    result = run([*entry, "run", "examples/research.toml", "--no-progress"])
    assert result.returncode == 0, result.stderr
    facts, draft, review = outcomes_of(result.stdout)
    assert all(o.success for o in (facts, draft, review))
    # The echo model repeats each prompt, so each output shows what its templates became.
    assert facts.output == "Give three facts about the actor model of concurrency."
    assert draft.output == f"Write a paragraph using only these facts: {facts.output}"
    assert review.output.startswith(f"Facts: {facts.output}\nParagraph: {draft.output}\n")
    assert "{{" not in review.output


@ENTRY_POINTS
def test_delegation_example_shows_the_work_its_delegates_did(entry: list[str]) -> None:
    result = run([*entry, "run", "examples/delegation.toml", "--no-progress"])
    assert result.returncode == 0, result.stderr
    workflow = load_workflow(EXAMPLES / "delegation.toml")
    survey, review = outcomes_of(result.stdout)
    assert survey.success and review.success
    # The demo lead delegates one task per line (`NAME: text` to NAME) and lists the outcomes:
    # its delegates echo their task, so each line comes back under the agent that ran it.
    lines = [line for line in workflow.steps[0].prompt.splitlines() if line]
    assert survey.output.splitlines() == [
        f"{len(lines)} of {len(lines)} delegated tasks succeeded:",
        *(f"- {line}" for line in lines),
    ]
    assert review.output.splitlines() == [
        "1 of 1 delegated tasks succeeded:",
        f"- critic: {workflow.steps[1].prompt}",
    ]
    assert workflow.agents["lead"].delegates is True
    assert {workflow.agents[name].parent for name in ("researcher", "critic")} == {"lead"}


# --- Python examples -----------------------------------------------------------------------------


def test_every_python_example_is_run_by_a_test() -> None:
    assert {path.name for path in EXAMPLES.glob("*.py")} == TESTED_PYTHON_EXAMPLES


def test_quickstart_example_shows_a_restart_after_a_scripted_failure() -> None:
    result = run([sys.executable, str(EXAMPLES / "quickstart.py")])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "registered: ['echo', 'flaky']",
        "echo says: hello, actors",
        "first try failed: network error: connection reset | restarts: 1",
        "second try: recovered after a restart | restarts: 1 | AgentStatus.RUNNING",
    ]


def post(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=RUN_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def threaded_server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "threaded_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # A script's own directory comes first on sys.path: make it import this checkout.
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
    )
    try:
        assert process.stdout is not None
        line = read_line(process.stdout, RUN_TIMEOUT_S)
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, f"unexpected first line {line!r}"
        yield process, match.group(1)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=RUN_TIMEOUT_S)


def test_threaded_server_answers_50_concurrent_requests_then_stops_on_sigterm(
    threaded_server: tuple[subprocess.Popen[str], str],
) -> None:
    process, base = threaded_server
    texts = [f"message {i}" for i in range(50)]

    def ask(i: int) -> tuple[int, dict[str, str]]:
        agent = "shout" if i % 2 else "echo"
        return post(f"{base}/agents/{agent}", json.dumps({"text": texts[i]}).encode())

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(ask, range(50)))
    assert answers == [
        (200, {"text": text.upper() if i % 2 else text}) for i, text in enumerate(texts)
    ]

    status, body = post(f"{base}/agents/nobody", b'{"text": "hi"}')
    assert (status, body) == (404, {"error": "no agent named 'nobody'"})
    status, body = post(f"{base}/agents/echo", b"{not json")
    assert status == 400
    assert body["error"].startswith("bad request body: JSON is malformed")
    status, body = post(f"{base}/agents/echo", b'{"text": 3}')
    assert (status, body) == (
        400,
        {"error": "bad request body: Expected `str`, got `int` - at `$.text`"},
    )

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, stderr
    assert stderr.strip() == "stopped"


def test_threaded_server_stops_gracefully_on_ctrl_c(
    threaded_server: tuple[subprocess.Popen[str], str],
) -> None:
    process, base = threaded_server
    assert post(f"{base}/agents/echo", b'{"text": "before"}') == (200, {"text": "before"})
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def connect(base: str) -> http.client.HTTPConnection:
    host, port = base.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=RUN_TIMEOUT_S)


def call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    text: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    body = None if text is None else json.dumps({"text": text})
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.headers, response.read()


def test_threaded_server_keeps_each_clients_conversation_to_itself(
    threaded_server: tuple[subprocess.Popen[str], str],
) -> None:
    _, base = threaded_server
    alice, bob = connect(base), connect(base)
    as_alice = {"X-Session": "alice"}
    status, headers, body = call(alice, "POST", "/agents/memo", "my password is hunter2", as_alice)
    assert (status, json.loads(body)) == (200, {"text": "my password is hunter2"})
    assert headers["X-Session"] == "alice"

    # Bob sends neither header nor cookie: he gets a session of his own, and a cookie for it.
    status, headers, body = call(bob, "POST", "/agents/memo", "what do you remember?")
    assert (status, json.loads(body)) == (200, {"text": "what do you remember?"})
    bob_session = headers["X-Session"]
    assert bob_session not in ("", "alice")
    assert headers["Set-Cookie"].startswith(f"session={bob_session};")
    as_bob = {"Cookie": f"session={bob_session}"}
    status, _, body = call(bob, "POST", "/agents/memo", "anything else?", as_bob)
    assert json.loads(body) == {"text": "what do you remember? | anything else?"}
    status, _, body = call(bob, "GET", "/agents/memo/history", headers=as_bob)
    assert status == 200
    assert b"hunter2" not in body
    assert [m["role"] for m in json.loads(body)] == ["user", "assistant"] * 2

    status, _, body = call(alice, "POST", "/agents/memo", "and my password?", as_alice)
    assert json.loads(body) == {"text": "my password is hunter2 | and my password?"}
    status, _, body = call(alice, "DELETE", "/agents/memo/history", headers=as_alice)
    assert (status, body) == (204, b"")
    status, _, body = call(alice, "POST", "/agents/memo", "hello again", as_alice)
    assert json.loads(body) == {"text": "hello again"}

    def converse(client: int) -> list[str]:
        conn = connect(base)
        replies = []
        for turn in range(5):
            _, _, body = call(
                conn, "POST", "/agents/memo", f"c{client}:{turn}", {"X-Session": f"c{client}"}
            )
            replies.append(json.loads(body)["text"])
        conn.close()
        return replies

    with ThreadPoolExecutor(max_workers=10) as pool:
        conversations = list(pool.map(converse, range(10)))
    assert conversations == [
        [" | ".join(f"c{c}:{t}" for t in range(turn + 1)) for turn in range(5)] for c in range(10)
    ]
    status, _, body = call(bob, "POST", "/agents/memo", "x", {"X-Session": "not ok!"})
    assert (status, json.loads(body)) == (
        400,
        {"error": "a session id is 1-64 of A-Z a-z 0-9 _ . -"},
    )


def read_chunked(stream: IO[bytes]) -> tuple[int, dict[str, str], list[bytes]]:
    """Status, headers and the chunks, as sent, of one chunked HTTP/1.1 response."""
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    chunks = []
    while size := int(stream.readline().strip(), 16):
        chunks.append(stream.read(size))
        assert stream.read(2) == b"\r\n"
    assert stream.readline() == b"\r\n"
    return status, headers, chunks


def test_threaded_server_streams_each_delta_as_a_chunk(
    threaded_server: tuple[subprocess.Popen[str], str],
) -> None:
    _, base = threaded_server
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"text": "one two three four"}).encode()
    with socket.create_connection((host, int(port)), timeout=RUN_TIMEOUT_S) as sock:
        stream = sock.makefile("rb")
        for _ in range(2):  # twice on one connection: the stream ends cleanly
            sock.sendall(
                b"POST /agents/echo/stream HTTP/1.1\r\nHost: x\r\nX-Session: s\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            status, headers, chunks = read_chunked(stream)
            assert status == 200
            assert headers["transfer-encoding"] == "chunked"
            assert headers["x-session"] == "s"
            assert chunks == [b"one ", b"two ", b"three ", b"four"]
    status, reply = post(f"{base}/agents/echo", body)
    assert (status, reply) == (200, {"text": b"".join(chunks).decode()})


def test_threaded_server_serves_many_requests_on_one_kept_alive_connection(
    threaded_server: tuple[subprocess.Popen[str], str],
) -> None:
    _, base = threaded_server
    conn = connect(base)
    call(conn, "POST", "/agents/echo", "first", {"X-Session": "k"})
    sock = conn.sock
    answers = []
    for i in range(150):
        path = ["/agents/echo", "/agents/echo/stream", "/agents/shout"][i % 3]
        status, _, body = call(conn, "POST", path, f"message {i}", {"X-Session": "k"})
        text = body.decode() if path.endswith("stream") else json.loads(body)["text"]
        answers.append((status, text))
    assert answers == [(200, f"MESSAGE {i}" if i % 3 == 2 else f"message {i}") for i in range(150)]
    assert conn.sock is sock  # every request went over the first connection
    conn.close()


def test_repl_session_in_examples_replays_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the session loads examples/fanout.toml by a relative path
    result = doctest.testfile(
        str(EXAMPLES / "repl.md"), module_relative=False, optionflags=doctest.ELLIPSIS
    )
    assert result.attempted > 20
    assert result.failed == 0


# --- README --------------------------------------------------------------------------------------


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL)


def test_readme_starts_with_the_install_and_test_commands() -> None:
    assert README.read_text().startswith(
        "# actor_orch\n\n```bash\n"
        "pip install -e . && actor-orch run examples/fanout.toml\n"
        "pip install -e '.[test]' && pytest\n```\n"
    )


@pytest.mark.parametrize("index", range(len(readme_blocks("python"))))
def test_readme_python_snippet_runs(index: int) -> None:
    result = run([sys.executable, "-c", readme_blocks("python")[index]])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_readme_workflow_format_snippet_is_a_valid_workflow(tmp_path: Path) -> None:
    snippet = readme_blocks("toml")[0]
    path = tmp_path / "readme.toml"
    path.write_text(snippet)
    workflow = load_workflow(path)
    assert workflow.max_parallel == 4
    assert workflow.agents["researcher"].max_turns == 4
    assert workflow.agents["researcher"].history_limit == 20
    settings = workflow.agents["researcher"].settings
    assert settings is not None and settings.max_tokens == 300
    assert [step.agent for step in workflow.steps] == ["researcher"]


def test_readme_graph_snippet_is_the_research_example(tmp_path: Path) -> None:
    snippet = readme_blocks("toml")[1]
    path = tmp_path / "graph.toml"
    path.write_text(snippet)
    shown, example = load_workflow(path), load_workflow(EXAMPLES / "research.toml")
    assert list(shown.agents) == list(example.agents)
    assert [s.task_id for s in shown.steps] == [s.task_id for s in example.steps]
    assert shown.needs == example.needs == {"draft": ("facts",), "review": ("facts", "draft")}


def test_readme_delegation_snippet_declares_the_agents_of_the_delegation_example(
    tmp_path: Path,
) -> None:
    snippet = readme_blocks("toml")[2]
    path = tmp_path / "delegation.toml"
    path.write_text(
        snippet + '[[steps]]\ntask_id = "t"\nagent = "lead"\ndescription = "d"\nprompt = "p"\n'
    )
    shown, example = load_workflow(path), load_workflow(EXAMPLES / "delegation.toml")
    assert list(shown.agents) == list(example.agents)
    for name, agent in shown.agents.items():
        assert (agent.delegates, agent.parent) == (
            example.agents[name].delegates,
            example.agents[name].parent,
        )
