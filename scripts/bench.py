"""Every benchmark figure of actor_orch against its baseline, in one process, in one table.

    PYTHONPATH=. python scripts/bench.py [--quick] [--only NAME,...] [--json PATH] [--rounds R]

Each figure measures ours and its baseline side by side: in every round both run back to
back (the order alternates between rounds), and the figure is the median of the per-round
ratios; `ours` and `baseline` are the medians of their per-round values. The table goes to
stdout and every row to a JSON file (`bench.json` unless `--json`): figure, ours, baseline,
ratio, target, compare ("<=", ">=" or null for a figure that is only reported), met (null
when there is no target or the row was skipped), unit, notes.
`python scripts/bench_table.py bench.json` turns that file into the README's table.

On a machine with two CPUs or fewer, the round-trip figures (every one whose cost is a thread
handing a request to another and waiting) run pinned to one CPU, ours and baseline alike, so
that a hand-off does not depend on where the scheduler happens to put the two threads; the
affinity is restored afterwards. `--no-pin` turns that off. A peer library that is not
installed (`pip install -e '.[bench]'`) gives a row "skipped: NAME not installed".

Figures (the names `--only` takes): roundtrip, per_request, http, fanout, waves, restart,
otel, spawn, history, resume, ray.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
# Runnable from a checkout: the package beside this folder, and the other bench_* scripts.
sys.path[:0] = [str(ROOT), str(SCRIPTS)]

import bench_conversations  # noqa: E402
import bench_http  # noqa: E402
import bench_orchestrator  # noqa: E402
import bench_parallel  # noqa: E402
import bench_resume  # noqa: E402
from bench_table import number, ratio_text  # noqa: E402

import actor_orch as ao  # noqa: E402


@dataclass
class Row:
    figure: str
    ours: float | None
    baseline: float | None
    ratio: float | None
    target: float | None
    compare: str | None  # "<=", ">=" or None (reported only)
    met: bool | None
    unit: str
    notes: str


@dataclass
class Settings:
    quick: bool
    rounds: int
    pin: bool


def measured(
    figure: str,
    pairs: list[tuple[float, float]],
    *,
    target: float | None,
    compare: str | None,
    unit: str,
    notes: str,
    ratio_of: Callable[[float, float], float] = lambda ours, base: ours / base,
) -> Row:
    """A row from per-round (ours, baseline) pairs: medians, and the median per-round ratio."""
    ratio = statistics.median(ratio_of(ours, base) for ours, base in pairs)
    met = None
    if target is not None:
        met = ratio <= target if compare == "<=" else ratio >= target
    return Row(
        figure,
        statistics.median(ours for ours, _ in pairs),
        statistics.median(base for _, base in pairs),
        ratio,
        target,
        compare,
        met,
        unit,
        f"{notes}; rounds: {', '.join(f'{ratio_of(o, b):.2f}' for o, b in pairs)}",
    )


def skipped(figure: str, unit: str, note: str, target: float | None, compare: str | None) -> Row:
    return Row(figure, None, None, None, target, compare, None, unit, note)


def side_by_side(
    rounds: int, ours: Callable[[], float], baseline: Callable[[], float]
) -> list[tuple[float, float]]:
    """`rounds` pairs (ours, baseline), the order alternating so neither always goes first.

    The cyclic garbage collector runs before each measurement, outside it: otherwise what one
    left behind (a finished agent and its long history) is collected during the next one.
    """

    def measure(run: Callable[[], float]) -> float:
        gc.collect()
        return run()

    pairs = []
    for round_ in range(rounds):
        if round_ % 2:
            base = measure(baseline)
            mine = measure(ours)
        else:
            mine = measure(ours)
            base = measure(baseline)
        pairs.append((mine, base))
    return pairs


@contextlib.contextmanager
def pinned(enabled: bool) -> Iterator[str]:
    """Run the block (and every thread it starts) on one CPU; yields a note for the row."""
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield "not pinned"
        return
    original = os.sched_getaffinity(0)
    cpu = min(original)
    os.sched_setaffinity(0, {cpu})
    try:
        yield f"ours and baseline pinned to CPU {cpu}"
    finally:
        os.sched_setaffinity(0, original)


# --- figures ----------------------------------------------------------------------------------


def fig_roundtrip(s: Settings) -> list[Row]:
    n = 300 if s.quick else 3000
    with pinned(s.pin) as pin:
        bench_orchestrator.bare_pykka(200)  # warm-up: imports, thread start-up
        bench_orchestrator.orchestrated(200)
        pairs = side_by_side(
            s.rounds,
            lambda: bench_orchestrator.orchestrated(n) * 1e6,
            lambda: bench_orchestrator.bare_pykka(n) * 1e6,
        )
    return [
        measured(
            "send_message round trip (fresh handle each round) / bare Pykka actor, same Agent loop",
            pairs,
            target=1.1,
            compare="<=",
            unit="us/request",
            notes=f"{n} sequential requests per round, EchoModel; {pin}",
        )
    ]


def _reply_hi(request: ao.ModelRequest) -> str:
    return "hi"


def _ours_per_request(requests: int) -> float:
    """Seconds per `send_message` to an agent whose model is an offline function."""
    with ao.AgentOrchestrator() as orch:
        orch.add_agent("fn", lambda: ao.AgentOptions(ao.FunctionModel(_reply_hi), retry=None))
        handle = orch.spawn("fn")
        handle.send_message("warm", timeout=10)
        started = time.perf_counter()
        for i in range(requests):
            handle.send_message(str(i), timeout=10)
        return (time.perf_counter() - started) / requests


def _pydantic_ai_runner() -> Callable[[int], float] | None:
    try:
        from pydantic_ai import Agent
        from pydantic_ai.messages import ModelResponse, TextPart
        from pydantic_ai.models.function import FunctionModel
    except ImportError:
        return None

    def reply(messages: Any, info: Any) -> ModelResponse:
        return ModelResponse(parts=[TextPart("hi")])

    agent = Agent(FunctionModel(reply))

    def run(requests: int) -> float:
        started = time.perf_counter()
        for i in range(requests):
            agent.run_sync(str(i))
        return (time.perf_counter() - started) / requests

    return run


def _openai_agents_runner() -> Callable[[int], float] | None:
    try:
        from agents import Agent, Runner, set_tracing_disabled
        from agents.items import ModelResponse
        from agents.models.interface import Model
        from agents.usage import Usage
        from openai.types.responses import ResponseOutputMessage, ResponseOutputText
    except ImportError:
        return None

    class OfflineModel(Model):
        """The SDK's Model interface answering at once, as its own tests' fake model does."""

        async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
            text = ResponseOutputText(type="output_text", text="hi", annotations=[])
            message = ResponseOutputMessage(
                id="m", type="message", role="assistant", status="completed", content=[text]
            )
            return ModelResponse(output=[message], usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    set_tracing_disabled(True)  # offline: no trace export (it would need an API key)
    agent = Agent(name="bench", model=OfflineModel())

    def run(requests: int) -> float:
        started = time.perf_counter()
        for i in range(requests):
            Runner.run_sync(agent, str(i))
        return (time.perf_counter() - started) / requests

    return run


def fig_per_request(s: Settings) -> list[Row]:
    figure = "per-request cost, offline function model / cheaper of pydantic-ai and OpenAI Agents"
    n_ours, n_peer = (300, 30) if s.quick else (3000, 300)
    peers = {"pydantic-ai": _pydantic_ai_runner(), "openai-agents": _openai_agents_runner()}
    missing = [name for name, run in peers.items() if run is None]
    runners = {name: run for name, run in peers.items() if run is not None}
    if not runners:
        return [
            skipped(
                figure, "us/request", f"skipped: {', '.join(missing)} not installed", 0.05, "<="
            )
        ]
    peer_times: dict[str, list[float]] = {name: [] for name in runners}

    def cheapest_peer() -> float:
        times = {name: run(n_peer) * 1e6 for name, run in runners.items()}
        for name, value in times.items():
            peer_times[name].append(value)
        return min(times.values())

    with pinned(s.pin) as pin:
        _ours_per_request(50)  # warm-up
        for run in runners.values():
            run(5)
        pairs = side_by_side(s.rounds, lambda: _ours_per_request(n_ours) * 1e6, cheapest_peer)
    peers_note = ", ".join(
        f"{name} {statistics.median(times):.0f} us" for name, times in peer_times.items()
    )
    notes = (
        f"ours: handle.send_message with FunctionModel ({n_ours} per round); "
        f"pydantic-ai Agent.run_sync + FunctionModel, openai-agents Runner.run_sync + an "
        f"offline Model, tracing off ({n_peer} per round): {peers_note}"
    )
    if missing:
        notes += f"; skipped: {', '.join(missing)} not installed"
    return [
        measured(
            figure, pairs, target=0.05, compare="<=", unit="us/request", notes=f"{notes}; {pin}"
        )
    ]


def fig_http(s: Settings) -> list[Row]:
    if s.quick:
        bench_http.TOTAL, bench_http.LIMIT, hold = 256, 64, 0.1
    else:
        hold = bench_http.HOLD_S
    total, limit = bench_http.TOTAL, bench_http.LIMIT
    ideal = total / limit * hold
    figure = f"{total} chat completions, limit {limit}, server holds {hold} s"
    available = {}
    for module in ("aiohttp", "openai"):
        try:
            __import__(module)
            available[module] = True
        except ImportError:
            available[module] = False
    rounds = max(3, s.rounds // 2) if not s.quick else 2
    server = bench_http.Server(hold)
    walls: dict[str, list[float]] = {"ours": [], "aiohttp": [], "openai": []}
    try:
        runs: list[tuple[str, Callable[[str], float]]] = [("ours", bench_http.run_ours)]
        if available["aiohttp"]:
            runs.append(("aiohttp", bench_http.run_aiohttp))
        if available["openai"]:
            runs.append(("openai", bench_http.run_openai_threads))
        bench_http.TOTAL = limit  # warm-up, one wave each: imports, pools, connections
        for _, run in runs:
            run(server.base_url)
        bench_http.TOTAL = total
        for round_ in range(rounds):
            order = runs if round_ % 2 == 0 else runs[::-1]
            for name, run in order:
                walls[name].append(run(server.base_url))
    finally:
        server.close()
    rows = []
    for name, label, target, compare in (
        ("aiohttp", "asyncio + aiohttp with a semaphore", 1.05, "<="),
        ("openai", f"ThreadPoolExecutor({limit}) + openai SDK", None, None),
    ):
        full = f"{figure}: LocalExecutor + OpenAICompatibleModel / {label}"
        if not available[name]:
            rows.append(skipped(full, "s", f"skipped: {name} not installed", target, compare))
            continue
        pairs = list(zip(walls["ours"], walls[name], strict=True))
        rows.append(
            measured(
                full,
                pairs,
                target=target,
                compare=compare,
                unit="s",
                notes=f"wall per batch, ideal {ideal:.2f} s; local asyncio server in a subprocess",
            )
        )
    return rows


def fig_fanout(s: Settings) -> list[Row]:
    specs = [ao.AgentStepSpec(f"t{i}", "bench", "d", f"p{i}") for i in range(2000)]
    instant = bench_parallel.InstantExecutor(hint=8)

    def ours() -> float:
        started = time.perf_counter()
        outcomes = ao.execute_steps_parallel(instant, specs)
        elapsed = time.perf_counter() - started
        assert len(outcomes) == len(specs)
        return elapsed * 1e3

    def thread_pool() -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(instant.execute_step, specs))
        elapsed = time.perf_counter() - started
        assert len(outcomes) == len(specs)
        return elapsed * 1e3

    ours()  # warm-up; our pool persists with the executor, theirs is created in each run
    thread_pool()
    pairs = side_by_side(s.rounds * 3, ours, thread_pool)
    instant.close()
    return [
        measured(
            "fan-out of 2000 trivial steps: execute_steps_parallel / ThreadPoolExecutor(8).map",
            pairs,
            target=0.25,
            compare="<=",
            unit="ms",
            notes="ThreadPoolExecutor created inside its measurement, ours persists",
        )
    ]


def fig_waves(s: Settings) -> list[Row]:
    sleepy = bench_parallel.InstantExecutor(hint=16, sleep_s=0.020)
    specs = [ao.AgentStepSpec(f"t{i}", "bench", "d", f"p{i}") for i in range(64)]
    ideal_ms = 64 / 16 * 20.0

    def wall() -> float:
        started = time.perf_counter()
        ao.execute_steps_parallel(sleepy, specs)
        return (time.perf_counter() - started) * 1e3

    wall()  # warm-up: the pool's 16 workers
    pairs = [(wall(), ideal_ms) for _ in range(s.rounds * 2)]
    sleepy.close()
    return [
        measured(
            "64 steps x 20 ms, limit 16: efficiency = ideal 80 ms / wall",
            pairs,
            target=0.97,
            compare=">=",
            unit="ms",
            notes="ratio is ideal / wall (higher is better)",
            ratio_of=lambda ours, base: base / ours,
        )
    ]


def fig_restart(s: Settings) -> list[Row]:
    n = 300 if s.quick else 3000
    with pinned(s.pin) as pin:
        bench_orchestrator.restart_cycles(100)  # warm-up
        pairs = side_by_side(
            s.rounds,
            lambda: bench_orchestrator.restart_cycles(n // 2) * 1e6,
            lambda: bench_orchestrator.orchestrated(n) * 1e6,
        )
    return [
        measured(
            "fail -> restart -> serve cycle / plain send_message round trip",
            pairs,
            target=3.0,
            compare="<=",
            unit="us",
            notes=f"DefaultSupervisor, a retryable NetworkError every other call; {pin}",
        )
    ]


def fig_otel(s: Settings) -> list[Row]:
    figure = "send_message round trip with instrument() on / off"
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from actor_orch import _trace
        from actor_orch.otel import _OtelHooks, instrument, uninstrument
    except ImportError:
        note = "skipped: OpenTelemetry SDK not installed"
        return [skipped(figure, "us/request", note, 1.3, "<=")]

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class SpansOnly(_OtelHooks):
        """The floor: the same spans started and ended in the same places, nothing else (no
        context made current, no attributes recorded at the end)."""

        def _start(self, name: str, kind: Any, attributes: Any, parent: object = None) -> Any:
            return self._tracer.start_span(name, parent, kind, attributes)  # type: ignore[arg-type]

        def end_chat(self, scope: Any, reply: Any) -> None:
            scope.end()

        def end(self, scope: Any, error: object = None) -> None:
            scope.end()

    provider = TracerProvider()  # what an application has: a batch processor and an exporter
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    n = 300 if s.quick else 3000

    def round_trip() -> float:
        return bench_orchestrator.orchestrated(n) * 1e6

    def traced() -> float:
        instrument(tracer_provider=provider)
        try:
            return round_trip()
        finally:
            uninstrument()

    def spans_only() -> float:
        _trace.install(SpansOnly(provider.get_tracer("floor")))
        try:
            return round_trip()
        finally:
            _trace.install(None)

    with pinned(s.pin) as pin:
        traced()  # warm-up
        pairs = side_by_side(s.rounds, traced, round_trip)
        floor = side_by_side(s.rounds, spans_only, round_trip)
    provider.shutdown()
    floor_ratio = statistics.median(ours / base for ours, base in floor)
    return [
        measured(
            figure,
            pairs,
            target=1.3,
            compare="<=",
            unit="us/request",
            notes="SDK TracerProvider + BatchSpanProcessor, exporter drops; two spans a "
            "request (invoke_agent, chat); the floor, the SDK starting and ending the same "
            f"spans in the same round trip and nothing else: {floor_ratio:.2f}; off costs "
            "one attribute read per request and model call (the roundtrip figure runs with "
            f"it off); {pin}",
        )
    ]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _spawn_ours(agents: int) -> tuple[float, Callable[[], None]]:
    """Seconds to spawn `agents` agents and get each one's first reply; and a teardown."""
    orch = ao.AgentOrchestrator()
    orch.add_agent("echo", bench_orchestrator.echo_options)
    started = time.perf_counter()
    handles = [orch.spawn("echo") for _ in range(agents)]
    futures = [handle.send_message_async("hi") for handle in handles]
    for future in futures:
        future.result(timeout=60)
    return time.perf_counter() - started, lambda: orch.shutdown(timeout=60)


def _spawn_bare(agents: int) -> tuple[float, Callable[[], None]]:
    started = time.perf_counter()
    refs = [bench_orchestrator.BareAgentActor.start() for _ in range(agents)]
    futures = [ref.ask("hi", block=False) for ref in refs]
    for future in futures:
        future.get(timeout=60)
    elapsed = time.perf_counter() - started

    def teardown() -> None:
        stops = [ref.stop(block=False) for ref in refs]
        for stop in stops:
            stop.get(timeout=60)

    return elapsed, teardown


def _spawn_memory(spawn: Callable[[int], tuple[float, Callable[[], None]]], agents: int) -> float:
    """Python heap (tracemalloc) per live agent after its first reply, in KiB."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _, teardown = spawn(agents)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    teardown()
    return (after - before) / agents / 1024


def _settle(threads: int, timeout: float = 30.0) -> None:
    """Wait until the previous run's actor threads have exited, so they do not run in the next."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.01)


def fig_spawn(s: Settings) -> list[Row]:
    agents = 500 if s.quick else 5000
    rss: dict[str, list[float]] = {"ours": [], "bare": []}

    def timed(name: str, spawn: Callable[[int], tuple[float, Callable[[], None]]]) -> float:
        threads = threading.active_count()
        gc.collect()
        before = _rss_bytes()
        elapsed, teardown = spawn(agents)
        rss[name].append((_rss_bytes() - before) / agents / 1024)
        teardown()
        _settle(threads)
        return elapsed

    timed("ours", _spawn_ours)  # warm-up
    timed("bare", _spawn_bare)
    for values in rss.values():
        values.clear()
    rounds = 2 if s.quick else 5  # thread start-up of 5,000 actors varies a lot: more rounds
    pairs = side_by_side(
        rounds, lambda: timed("ours", _spawn_ours), lambda: timed("bare", _spawn_bare)
    )
    memory = side_by_side(  # tracemalloc counts allocations: one round is exact enough
        1,
        lambda: _spawn_memory(_spawn_ours, agents),
        lambda: _spawn_memory(_spawn_bare, agents),
    )
    figure = f"spawn + first reply of {agents:,} agents / {agents:,} bare Pykka actors"
    rss_note = (
        f"RSS delta while alive: ours {statistics.median(rss['ours']):.1f} KiB/agent, "
        f"bare {statistics.median(rss['bare']):.1f} KiB/agent"
    )
    return [
        measured(
            f"{figure}: time",
            pairs,
            target=1.2,
            compare="<=",
            unit="s",
            notes="spawn all, one send_message_async / ask each, wait for every reply",
        ),
        measured(
            f"{figure}: memory per agent",
            memory,
            target=1.3,
            compare="<=",
            unit="KiB/agent",
            notes=f"tracemalloc (Python heap; thread stacks not counted); {rss_note}",
        ),
    ]


def fig_history(s: Settings) -> list[Row]:
    requests, window = (2000, 100) if s.quick else (10_000, 300)

    def one_round() -> tuple[float, float]:
        with ao.AgentOrchestrator() as orch:
            orch.add_agent("chat", lambda: ao.AgentOptions(ao.EchoModel(), history_limit=20))
            times = bench_conversations.request_times(orch.spawn("chat"), requests, None)
        return statistics.median(times[-window:]) * 1e6, statistics.median(times[:window]) * 1e6

    with pinned(s.pin) as pin:
        pairs = [one_round() for _ in range(s.rounds)]
    return [
        measured(
            f"long-lived agent, history_limit=20: last {window} of {requests:,} requests / "
            f"its first {window}",
            pairs,
            target=1.2,
            compare="<=",
            unit="us/request",
            notes=f"median per-request time of each window, own conversation, memory; {pin}",
        )
    ]


def fig_resume(s: Settings) -> list[Row]:
    steps = 500 if s.quick else 5000
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        workflow = bench_resume.write_workflow(folder, steps)
        out = folder / "out.jsonl"
        bench_resume.time_run(workflow, out, [])  # warm-up: imports, page cache
        counter = iter(range(1_000_000))

        def resumed() -> float:
            db = folder / f"checkpoints-{next(counter)}.sqlite"  # a fresh checkpoint each run
            return bench_resume.time_run(workflow, out, ["--checkpoint-db", str(db)])

        pairs = side_by_side(s.rounds, resumed, lambda: bench_resume.time_run(workflow, out, []))
    return [
        measured(
            f"actor-orch run of {steps:,} steps: --resume checkpointing / plain run",
            pairs,
            target=1.5,
            compare="<=",
            unit="s",
            notes="CLI in this process, echo model, fresh checkpoint database each run",
        )
    ]


RAY_SLEEP_S = 0.050


def _sleep_then_answer(request: ao.ModelRequest) -> str:
    time.sleep(RAY_SLEEP_S)
    return "done"


def _sleepy_options() -> ao.AgentOptions:
    return ao.AgentOptions(ao.FunctionModel(_sleep_then_answer), retry=None)


def fig_ray(s: Settings) -> list[Row]:
    steps = 40 if s.quick else 200
    figure = f"Ray, {steps} steps x 50 ms, 2 workers: throughput / LocalExecutor limit 2"
    try:
        import ray

        from actor_orch.ray_executor import RayExecutor
    except ImportError:
        return [skipped(figure, "s", "skipped: ray not installed", 0.8, ">=")]
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            # Workers import this checkout's actor_orch and this script's functions.
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPTS)])}},
        )
    except Exception as err:
        return [
            skipped(
                figure, "s", f"skipped: Ray did not start ({type(err).__name__}: {err})", 0.8, ">="
            )
        ]
    specs = [ao.AgentStepSpec(f"t{i}", "sleepy", "d", f"p{i}") for i in range(steps)]
    orch = ao.AgentOrchestrator()
    orch.add_agent("sleepy", _sleepy_options)
    try:
        with (
            RayExecutor(orch, num_workers=2) as remote,
            ao.LocalExecutor(orch, max_parallel_tasks=2) as local,
        ):

            def wall(executor: ao.AgentExecutor) -> float:
                started = time.perf_counter()
                outcomes = ao.execute_steps_parallel(executor, specs)
                elapsed = time.perf_counter() - started
                failed = [o for o in outcomes if not o.success]
                assert not failed, failed[:3]
                return elapsed

            ao.execute_steps_parallel(remote, specs[:4])  # warm-up: workers import the code
            ao.execute_steps_parallel(local, specs[:4])
            rounds = 2 if s.quick else 3
            pairs = side_by_side(rounds, lambda: wall(remote), lambda: wall(local))
    finally:
        orch.shutdown()
        ray.shutdown()
    ideal = steps / 2 * RAY_SLEEP_S
    return [
        measured(
            figure,
            pairs,
            target=0.8,
            compare=">=",
            unit="s",
            notes=f"ratio is Local wall / Ray wall (throughput ratio); ideal {ideal:.1f} s; "
            "Ray start-up not counted",
            ratio_of=lambda ours, base: base / ours,
        )
    ]


FIGURES: dict[str, Callable[[Settings], list[Row]]] = {
    "roundtrip": fig_roundtrip,
    "per_request": fig_per_request,
    "http": fig_http,
    "fanout": fig_fanout,
    "waves": fig_waves,
    "restart": fig_restart,
    "otel": fig_otel,
    "spawn": fig_spawn,
    "history": fig_history,
    "resume": fig_resume,
    "ray": fig_ray,
}


# --- output -----------------------------------------------------------------------------------


def verdict(row: Row) -> str:
    if row.ratio is None:
        return "skipped"
    if row.met is None:
        return "report"
    return "met" if row.met else "MISSED"


def print_table(rows: list[Row]) -> None:
    header = ("figure", "ours", "baseline", "unit", "ratio", "target", "")
    lines = [
        (
            row.figure,
            number(row.ours),
            number(row.baseline),
            row.unit,
            ratio_text(row.ratio),
            "report" if row.target is None else f"{row.compare} {row.target:g}",
            verdict(row),
        )
        for row in rows
    ]
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header))]
    widths[0] = min(widths[0], 70)
    for cells in [header, *lines]:
        first = cells[0] if len(cells[0]) <= widths[0] else cells[0][: widths[0] - 3] + "..."
        rest = "  ".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        print(f"{first:<{widths[0]}}  {rest}")
    print()
    for row in rows:
        print(f"- {row.figure}: {row.notes}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", default="", help=f"comma-separated: {','.join(FIGURES)}")
    parser.add_argument("--json", type=Path, default=Path("bench.json"), help="where rows go")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per figure")
    parser.add_argument("--no-pin", action="store_true", help="never pin to one CPU")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()] or list(FIGURES)
    unknown = [name for name in only if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings = Settings(
        quick=args.quick,
        rounds=args.rounds or (3 if args.quick else 7),
        pin=not args.no_pin and (cpus or 1) <= 2,
    )
    print(
        f"{len(only)} figure(s), {settings.rounds} rounds, {cpus} CPU(s); "
        f"round-trip figures {'pinned to one CPU' if settings.pin else 'not pinned'}",
        file=sys.stderr,
    )
    rows: list[Row] = []
    started = time.perf_counter()
    for name in only:
        figure_started = time.perf_counter()
        rows.extend(FIGURES[name](settings))
        print(f"  {name}: {time.perf_counter() - figure_started:.1f} s", file=sys.stderr)
    print_table(rows)
    report = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": cpus,
            "pykka": importlib.metadata.version("pykka"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "quick": settings.quick,
        "rounds": settings.rounds,
        "pinned": settings.pin,
        "seconds": round(time.perf_counter() - started, 1),
        "figures": [asdict(row) for row in rows],
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
