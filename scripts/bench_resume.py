"""What `--resume` checkpointing costs: `actor-orch run` of 5,000 trivial steps with and without
it, and the cost of one checkpoint save when 500 and when 5,000 steps are saved already.

    python scripts/bench_resume.py [--steps 5000] [--repeats 3]

Targets (issue 12): a --resume run <= 1.5x a plain run; the per-step save cost flat from 500
to 5,000 steps. The CLI runs in this process (no interpreter start-up in the figures), the
echo model answers, outcomes go to a file; each --resume run starts from an empty checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

from actor_orch import CheckpointedStep, SqliteCheckpointStore, StepOutcome
from actor_orch.cli import main


def write_workflow(folder: Path, steps: int) -> Path:
    lines = ["max_parallel = 8", "[agents.echo]", 'model = "echo"']
    for i in range(steps):
        lines += [
            "[[steps]]",
            f'task_id = "t{i}"',
            'agent = "echo"',
            'description = "trivial"',
            f'prompt = "step {i}"',
        ]
    path = folder / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def time_run(workflow: Path, out: Path, extra: list[str]) -> float:
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the run's summary line
        code = main(["run", str(workflow), "--out", str(out), "--no-progress", *extra])
    elapsed = time.perf_counter() - started
    assert code == 0, f"run failed with exit code {code}"
    return elapsed


def save_cost_us(folder: Path, steps: int, *, commit_each: bool) -> tuple[float, float]:
    """Microseconds per saved step over `steps` saves (commits included), and over the last
    100 of them. `commit_each`: wait for each save's commit (one transaction per step, the
    worst case); otherwise the writer thread groups them as a run does."""
    store = SqliteCheckpointStore(folder / f"saves-{steps}-{commit_each}.sqlite")
    store.load("wf")  # create the file outside the measurement
    outcome = StepOutcome("t", "task-run-t", "echo", "x" * 40, True)
    stamps = [time.perf_counter()]
    for i in range(steps):
        store.save_step("wf", f"t{i:06d}", CheckpointedStep("d" * 64, outcome))
        if commit_each:
            store.flush()
        stamps.append(time.perf_counter())
    store.flush()
    total = time.perf_counter() - stamps[0]
    store.close()
    return total / steps * 1e6, (stamps[-1] - stamps[-101]) / 100 * 1e6


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        workflow = write_workflow(folder, args.steps)
        out = folder / "out.jsonl"
        time_run(workflow, out, [])  # warm-up: imports, pool, page cache
        ratios, plain_times, resume_times = [], [], []
        for repeat in range(args.repeats):
            plain = time_run(workflow, out, [])
            db = folder / f"checkpoints-{repeat}.sqlite"
            resumed = time_run(workflow, out, ["--checkpoint-db", str(db)])
            plain_times.append(plain)
            resume_times.append(resumed)
            ratios.append(resumed / plain)
        rerun = time_run(workflow, out, ["--checkpoint-db", str(folder / "checkpoints-0.sqlite")])
        print(f"{args.steps} trivial steps, median of {args.repeats} runs:")
        print(f"  plain run            {statistics.median(plain_times):7.3f} s")
        print(f"  --resume (first run) {statistics.median(resume_times):7.3f} s")
        print(
            f"  ratio --resume/plain {statistics.median(ratios):7.2f}x  (target <= 1.5x; "
            f"per repeat: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
        print(f"  --resume rerun, everything restored: {rerun:.3f} s")
        print("save_step cost per step, commits included (SQLite, WAL):")
        for commit_each, label in ((False, "grouped commits"), (True, "a commit per step")):
            small_all, small_last = save_cost_us(folder, 500, commit_each=commit_each)
            large_all, large_last = save_cost_us(folder, 5000, commit_each=commit_each)
            print(
                f"  {label:18}  500 steps: {small_all:6.1f} us (last 100: {small_last:6.1f})"
                f"   5000 steps: {large_all:6.1f} us (last 100: {large_last:6.1f})"
                f"   ratio 5000/500: {large_all / small_all:.2f} (target: flat)"
            )


if __name__ == "__main__":
    main_bench()
