"""One benchmark figure, the table printed at the end of a run, and its JSON copy."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
LATEST = RESULTS_DIR / "latest.json"


@dataclass
class Measurement:
    """A measured figure, the baseline measured in the same run (if any) and the verdict."""

    name: str
    value: float
    unit: str
    target: str
    passed: bool
    baseline: float | None = None
    baseline_unit: str | None = None
    #: value / baseline, in the sense the target states it (see ``ratio_note``).
    ratio: float | None = None
    ratio_note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timing:
    """Wall times of the repeats of one measured action."""

    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def timed(action: Callable[[], object]) -> float:
    """Wall time of one call of ``action``, in seconds."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


COLUMNS = ("benchmark", "value", "unit", "baseline", "ratio", "target", "result")


def table_rows(measurements: list[Measurement]) -> list[tuple[str, ...]]:
    return [
        (
            m.name,
            _number(m.value),
            m.unit,
            "-" if m.baseline is None else f"{_number(m.baseline)} {m.baseline_unit or m.unit}",
            "-" if m.ratio is None else f"{m.ratio:.2f}",
            m.target,
            "pass" if m.passed else "FAIL",
        )
        for m in measurements
    ]


def text_table(measurements: list[Measurement]) -> str:
    """The results as an aligned plain-text table."""
    rows = [COLUMNS, *table_rows(measurements)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(measurements: list[Measurement]) -> str:
    """The results as a Markdown table (for the README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(measurements)]
    return "\n".join(lines)


def write_json(
    path: Path, measurements: list[Measurement], machine: dict[str, Any], mode: str, seconds: float
) -> None:
    """The run as JSON: when, where, how long, and every measurement with its details."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "duration_seconds": round(seconds, 1),
        "machine": machine,
        "all_passed": all(m.passed for m in measurements),
        "results": [asdict(m) for m in measurements],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
