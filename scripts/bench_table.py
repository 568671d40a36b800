"""Print the README's benchmark table (markdown) from the JSON that `scripts/bench.py` wrote.

python scripts/bench_table.py [bench.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2g}"


def ratio_text(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def result(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return row["notes"]  # "skipped: ..."
    if row["met"] is None:
        return "report"
    return "met" if row["met"] else "**missed**"


def table(report: dict[str, Any]) -> str:
    lines = [
        "| figure | ours | baseline | unit | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["figures"]:
        target = "report" if row["target"] is None else f"{row['compare']} {row['target']:g}"
        cells = [
            row["figure"],
            number(row["ours"]),
            number(row["baseline"]),
            row["unit"],
            ratio_text(row["ratio"]),
            target,
            result(row),
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    machine = report["machine"]
    load = machine.get("load_average")
    lines += [
        "",
        f"Python {machine['python']}, Pykka {machine['pykka']}, {machine['cpus']} CPU(s)"
        + (f", load average {load[0]:.1f} at the end" if load else "")
        + f"; {report['rounds']} rounds per figure, median of per-round ratios"
        + ("; round-trip figures pinned to one CPU" if report["pinned"] else "")
        + ".",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, nargs="?", default=Path("bench.json"))
    args = parser.parse_args()
    print(table(json.loads(args.path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
