"""scripts/bench.py runs end to end and writes rows of the documented shape (no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"figure", "ours", "baseline", "ratio", "target", "compare", "met", "unit", "notes"}


def test_quick_bench_writes_one_row_per_figure_with_every_field(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            *(sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--rounds", "2"),
            *("--only", "roundtrip,fanout,waves,history,otel", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True
    rows = report["figures"]
    assert len(rows) == 5
    for row in rows:
        assert set(row) == FIELDS
        assert isinstance(row["figure"], str) and row["figure"] in result.stdout
        assert all(isinstance(row[k], float) for k in ("ours", "baseline", "ratio", "target"))
        assert row["compare"] in ("<=", ">=")
        assert isinstance(row["met"], bool)
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_table.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert table.startswith("| figure | ours | baseline |")
    assert len([line for line in table.splitlines() if line.startswith("|")]) == 2 + len(rows)


def test_bench_refuses_an_unknown_figure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--only", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown figure(s) nope" in result.stderr


def test_readme_benchmark_table_is_the_one_generated_from_bench_json() -> None:
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_table.py"), str(ROOT / "bench.json")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert table.strip() in (ROOT / "README.md").read_text()
