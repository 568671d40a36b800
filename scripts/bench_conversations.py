"""Conversations stay cheap as they grow, measured against themselves in the same run.

Prints ratios (lower is better, 1.0 = flat):
  a. a long-lived agent with `history_limit=20`: time per request of its last 300 of 10,000
     requests / its first 300 (target <= 1.2), for the agent's own conversation, a named
     session in memory and a named session in SQLite;
  b. `SqliteSessionStore.append` of one message to a session already holding 10,000 messages /
     to one holding 100 (target: near 1), and the same for `load(limit=20)`.

Each figure is the median of per-round ratios; a round's window time is the median per-request
time of that window (a garbage-collector pause is one request, not the window's mean).

Run: python scripts/bench_conversations.py [--requests N] [--window W] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import actor_orch as ao


def request_times(handle: ao.OrchestratedHandle, requests: int, session: str | None) -> list[float]:
    """Seconds each of `requests` sequential `send_message` calls took."""
    times = []
    for i in range(requests):
        started = time.perf_counter()
        handle.send_message(f"message {i}", timeout=10, session=session)
        times.append(time.perf_counter() - started)
    return times


def growth_ratio(
    store: Callable[[], ao.SessionStore], session: str | None, requests: int, window: int
) -> float:
    """Median time per request of the last `window` requests / of the first `window`."""
    with ao.AgentOrchestrator(sessions=store()) as orch:
        orch.add_agent("chat", lambda: ao.AgentOptions(ao.EchoModel(), history_limit=20))
        times = request_times(orch.spawn("chat"), requests, session)
    return statistics.median(times[-window:]) / statistics.median(times[:window])


def append_time(store: ao.SqliteSessionStore, session: str, already: int, appends: int) -> float:
    """Median seconds of appending one message to a session holding `already` messages."""
    store.append("bench", session, [ao.user_message(f"old {i}") for i in range(already)])
    times = []
    for i in range(appends):
        message = [ao.user_message(f"new {i}")]
        started = time.perf_counter()
        store.append("bench", session, message)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def load_time(store: ao.SqliteSessionStore, session: str, loads: int) -> float:
    """Median seconds of `load(limit=20)` of a session."""
    times = []
    for _ in range(loads):
        started = time.perf_counter()
        store.load("bench", session, 20)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) <= 2:
        # As bench.py does: on two CPUs a hand-off between threads on different cores costs
        # about 100 us here and swamps what is measured, so the run stays on one CPU.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print("(pinned to one CPU)")

    cases: dict[str, tuple[Callable[[], ao.SessionStore], str | None]] = {
        "own conversation": (ao.MemorySessionStore, None),
        "named session, memory": (ao.MemorySessionStore, "user-42"),
        "named session, sqlite": (
            lambda: ao.SqliteSessionStore(folder / f"a-{time.monotonic_ns()}.db"),
            "user-42",
        ),
    }
    print(
        f"a. history_limit=20, last {args.window} / first {args.window} of {args.requests} "
        "requests (target <= 1.2)"
    )
    for label, (store, session) in cases.items():
        ratios = [
            growth_ratio(store, session, args.requests, args.window) for _ in range(args.rounds)
        ]
        rounds = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"   {label:<24} {statistics.median(ratios):.2f}  (rounds: {rounds})")

    append_ratios, load_ratios, small_us, large_us = [], [], [], []
    for round_ in range(args.rounds):
        store = ao.SqliteSessionStore(folder / f"b-{round_}.db")
        small = append_time(store, "small", 100, args.window)
        large = append_time(store, "large", 10_000, args.window)
        append_ratios.append(large / small)
        small_us.append(small * 1e6)
        large_us.append(large * 1e6)
        load_ratios.append(load_time(store, "large", 300) / load_time(store, "small", 300))
        store.close()
    print("b. SqliteSessionStore, session of 10,000 messages / of 100 (target near 1)")
    print(
        f"   append one message       {statistics.median(append_ratios):.2f}  "
        f"(100: {statistics.median(small_us):.0f} us, 10,000: {statistics.median(large_us):.0f} us)"
    )
    print(f"   load(limit=20)           {statistics.median(load_ratios):.2f}")


if __name__ == "__main__":
    main()
