"""Quickstart: a registry of agents, spawn, send, and a supervisor that restarts a failed agent.

Run it with `python examples/quickstart.py`; it needs no network (offline models only).
"""

from actor_orch import (
    AgentOptions,
    AgentOrchestrator,
    DefaultSupervisor,
    EchoModel,
    NetworkError,
    ScriptedModel,
)

# One script shared by every build of "flaky": the first call fails, the next one answers.
flaky_model = ScriptedModel([NetworkError("connection reset"), "recovered after a restart"])

with AgentOrchestrator(supervisor=DefaultSupervisor(max_restarts=2)) as orch:
    orch.add_agent("echo", lambda: AgentOptions(EchoModel()))
    # retry=None: no retry inside the agent, so the failure reaches the supervisor.
    orch.add_agent("flaky", lambda: AgentOptions(flaky_model, retry=None))
    print("registered:", orch.names())

    echo = orch.spawn("echo")
    print("echo says:", echo.send_message("hello, actors", timeout=5).text)

    flaky = orch.spawn("flaky")
    try:
        flaky.send_message("first try", timeout=5)
    except NetworkError as err:  # retryable, so DefaultSupervisor restarts the agent
        print("first try failed:", err, "| restarts:", flaky.restarts)
    reply = flaky.send_message("second try", timeout=5)
    print("second try:", reply.text, "| restarts:", flaky.restarts, "|", flaky.status())
