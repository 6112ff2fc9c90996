"""The console's charts as plain SVG geometry, computed here and drawn by the templates."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from db.overview import DayOut, duration_text

WIDTH, HEIGHT, PAD = 280, 90, 14


def day_chart(
    days: list[DayOut], target: float | None, now: datetime, count: int
) -> dict[str, Any]:
    """Bars of jobs done per day and a line of the day's p95 latency against the target,
    for the ``count`` days up to ``now``'s (empty days included)."""
    names = [(now - timedelta(days=count - 1 - i)).strftime("%Y-%m-%d") for i in range(count)]
    by_day = {d.day: d for d in days}
    most = max([by_day[n].done for n in names if n in by_day] + [1])
    worst = max([by_day[n].p95 or 0 for n in names if n in by_day] + [target or 0, 1])
    slot = (WIDTH - 2 * PAD) / count
    plot = HEIGHT - 2 * PAD
    bars, points, dots = [], [], []
    for index, name in enumerate(names):
        day = by_day.get(name)
        done = day.done if day else 0
        height = plot * 0.8 * done / most  # bars stay under the latency scale's top
        x = PAD + index * slot
        bars.append(
            {
                "x": round(x + slot * 0.15, 1),
                "y": round(PAD + plot - height, 1),
                "width": round(slot * 0.7, 1),
                "height": round(height, 1),
                "label": name[5:],
                "done": done,
                "title": f"{name}: {done} done"
                + (f", p95 {day.p95:.0f} s" if day and day.p95 is not None else ""),
            }
        )
        if day and day.p95 is not None:
            y = PAD + plot - plot * day.p95 / worst
            points.append(f"{x + slot / 2:.1f},{y:.1f}")
            dots.append(
                {"x": round(x + slot / 2, 1), "y": round(y, 1), "title": f"p95 {day.p95:.0f} s"}
            )
    target_y = round(PAD + plot - plot * target / worst, 1) if target else None
    target_label = f"target {duration_text(target)}" if target else ""
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bars": bars,
        "line": " ".join(points) if len(points) > 1 else "",
        "points": dots,
        "target_y": target_y,
        "target_label": target_label,
        "pad": PAD,
    }
