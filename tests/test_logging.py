"""Library-style logging: loguru disabled for actor_orch until the application enables it."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from loguru import logger

import actor_orch as ao
from actor_orch import _logging


@pytest.fixture
def sink() -> Iterator[list[dict[str, object]]]:
    """Records every loguru record (any level) while the test runs; actor_orch disabled."""
    records: list[dict[str, object]] = []
    logger.disable("actor_orch")
    handler_id = logger.add(lambda message: records.append(message.record), level=0)
    try:
        yield records
    finally:
        logger.remove(handler_id)
        logger.disable("actor_orch")


def retrying_agent() -> ao.Agent:
    model = ao.ScriptedModel([ao.NetworkError("flaky connection"), "ok"])
    policy = ao.RetryPolicy(max_attempts=2, base_delay=0, max_delay=0)
    return ao.Agent(ao.AgentOptions(model, retry=policy, name="logged"))


def ours(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in records if str(r["name"]).startswith("actor_orch")]


def test_importing_actor_orch_leaves_its_loguru_logger_disabled() -> None:
    # A fresh interpreter, so no other test's enable/disable can interfere.
    script = textwrap.dedent(
        """
        import sys
        from loguru import logger
        logger.remove()
        seen = []
        logger.add(lambda m: seen.append(m.record["name"]), level=0)
        import actor_orch as ao
        model = ao.ScriptedModel([ao.NetworkError("flaky"), "ok"])
        policy = ao.RetryPolicy(max_attempts=2, base_delay=0, max_delay=0)
        assert ao.Agent(ao.AgentOptions(model, retry=policy)).prompt_text("x").text == "ok"
        logger.info("from the application")
        print(seen)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "['__main__']"


def test_agent_retry_log_is_silent_while_disabled(sink: list[dict[str, object]]) -> None:
    assert retrying_agent().prompt_text("hi").text == "ok"
    assert ours(sink) == []


def test_enabling_actor_orch_makes_the_agent_retry_log_appear(
    sink: list[dict[str, object]],
) -> None:
    logger.enable("actor_orch")
    assert retrying_agent().prompt_text("hi").text == "ok"
    logger.disable("actor_orch")

    records = ours(sink)
    assert records, "no actor_orch log record after logger.enable('actor_orch')"
    retry_records = [r for r in records if "flaky connection" in str(r["message"])]
    assert retry_records
    assert retry_records[0]["name"] == "actor_orch.agent"
    assert retry_records[0]["extra"] == {"agent": "logged"}


def test_disabling_again_silences_the_logs(sink: list[dict[str, object]]) -> None:
    logger.enable("actor_orch")
    logger.disable("actor_orch")
    retrying_agent().prompt_text("hi")
    assert ours(sink) == []


def test_pykka_stdlib_record_reaches_loguru_only_when_enabled(
    sink: list[dict[str, object]],
) -> None:
    pykka_logger = logging.getLogger("pykka")

    pykka_logger.error("pykka says while disabled")
    assert not [r for r in sink if "pykka says" in str(r["message"])]

    logger.enable("actor_orch")
    try:
        pykka_logger.error("pykka says while enabled")
    finally:
        logger.disable("actor_orch")

    forwarded = [r for r in sink if "pykka says" in str(r["message"])]
    assert len(forwarded) == 1
    record = forwarded[0]
    assert "pykka says while enabled" in str(record["message"])
    assert record["level"].name == "ERROR"  # type: ignore[attr-defined]
    assert record["extra"] == {"source": "pykka"}


def test_pykka_warning_level_is_kept(sink: list[dict[str, object]]) -> None:
    logger.enable("actor_orch")
    try:
        logging.getLogger("pykka").warning("pykka warns")
    finally:
        logger.disable("actor_orch")
    forwarded = [r for r in sink if "pykka warns" in str(r["message"])]
    assert [r["level"].name for r in forwarded] == ["WARNING"]  # type: ignore[attr-defined]


def test_install_is_idempotent() -> None:
    _logging.install()
    _logging.install()
    bridges = [
        h for h in logging.getLogger("pykka").handlers if isinstance(h, _logging._PykkaToLoguru)
    ]
    assert len(bridges) == 1
    logger.disable("actor_orch")


def test_enabling_the_logger_before_the_import_is_kept() -> None:
    code = (
        "import sys\n"
        "from loguru import logger\n"
        "logger.remove(); logger.add(sys.stdout, format='{message}')\n"
        "logger.enable('actor_orch')\n"
        "import actor_orch as ao\n"
        "orch = ao.AgentOrchestrator()\n"
        "orch.add_agent('a', lambda: ao.AgentOptions(ao.EchoModel()))\n"
        "orch.spawn('a')\n"
        "orch.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "spawned agent a" in result.stdout
