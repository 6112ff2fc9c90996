"""The production overview: per job type, counts by phase and status, late and stuck jobs,
throughput and timeliness against the target. One function builds it from the store's named
queries (``job_counts``, ``job_stats``, two small indexes); ``jobline status``, ``GET /stats``,
the console and the ``production-status`` Prefect artifact all show this same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from db.stats import Finished
from db.statuses import PHASES, Status
from db.store import JobStore


class StuckOut(BaseModel):
    """Jobs of one status older than that status's limit."""

    status: Status
    jobs: int
    oldest_change: datetime
    limit_seconds: float
    reason: str


class TimelinessOut(BaseModel):
    """Latency of the jobs done in a window (seconds), against the job type's target."""

    done: int
    done_late: int = Field(description="Done jobs that finished after their due time.")
    p50: float | None
    p95: float | None
    max: float | None
    mean: float | None
    target_seconds: float | None

    @classmethod
    def of(cls, finished: Finished | None, target: timedelta | None) -> TimelinessOut:
        finished = finished or Finished()
        latency = finished.latency
        return cls(
            done=finished.done,
            done_late=finished.done_late,
            p50=latency.percentile(0.5),
            p95=latency.percentile(0.95),
            max=latency.maximum,
            mean=latency.mean,
            target_seconds=target.total_seconds() if target else None,
        )


class DayOut(BaseModel):
    """One UTC day of a job type's production (for the console's chart)."""

    day: str
    done: int
    failed: int
    p50: float | None
    p95: float | None
    max: float | None


class JobTypeOverview(BaseModel):
    job_type: str
    paused: bool = Field(description="The job type, or its queue, is paused.")
    total: int
    by_phase: dict[str, int]
    by_status: dict[str, int]
    late: int
    stuck: list[StuckOut]
    done_last_hour: int
    done_last_day: int
    failed_last_day: int
    cancelled_last_day: int
    timeliness_24h: TimelinessOut
    days: list[DayOut] = Field(default_factory=list)


class PauseOut(BaseModel):
    kind: str
    name: str
    reason: str | None
    paused_at: datetime


class Overview(BaseModel):
    """How production is going, per job type."""

    generated_at: datetime
    job_types: list[JobTypeOverview]
    pauses: list[PauseOut]

    def totals(self) -> dict[str, int]:
        return {
            "jobs": sum(t.total for t in self.job_types),
            "late": sum(t.late for t in self.job_types),
            "stuck": sum(s.jobs for t in self.job_types for s in t.stuck),
            "done_last_hour": sum(t.done_last_hour for t in self.job_types),
        }


def production_overview(
    store: JobStore,
    targets: Mapping[str, timedelta | None],
    queues: Mapping[str, str] | None = None,
    *,
    days: int = 0,
) -> Overview:
    """The overview at the store's clock; ``targets`` by job type (import path), ``queues``
    each job type's queue (for its pause); ``days`` > 0 adds a daily series."""
    now = store.clock()
    counts = store.count_by_type_status()
    late, stuck = store.late_and_stuck()
    last_hour = store.finished_since(now - timedelta(hours=1))
    last_day = store.finished_since(now - timedelta(hours=24))
    series = store.daily_series(now - timedelta(days=days - 1)) if days > 0 else {}
    pauses = store.pauses()
    paused = {(p.kind, p.name) for p in pauses}
    kinds = sorted({t for t, _ in counts} | set(last_day) | set(late))
    overviews = []
    for kind in kinds:
        by_status = {s: n for (t, s), n in counts.items() if t == kind and n}
        by_phase: dict[str, int] = {}
        for status, number in by_status.items():
            phase = PHASES[Status(status)]
            by_phase[phase] = by_phase.get(phase, 0) + number
        day = last_day.get(kind) or Finished()
        queue = (queues or {}).get(kind)
        overviews.append(
            JobTypeOverview(
                job_type=kind,
                paused=("job_type", kind) in paused or ("queue", queue) in paused,
                total=sum(by_status.values()),
                by_phase=by_phase,
                by_status=dict(sorted(by_status.items(), key=lambda i: Status(i[0]).id)),
                late=late.get(kind, 0),
                stuck=[
                    StuckOut(
                        status=Status(g.status),
                        jobs=g.jobs,
                        oldest_change=g.oldest_change,
                        limit_seconds=g.limit.total_seconds(),
                        reason=g.reason,
                    )
                    for g in stuck
                    if g.job_type == kind
                ],
                done_last_hour=(last_hour.get(kind) or Finished()).done,
                done_last_day=day.done,
                failed_last_day=day.failed,
                cancelled_last_day=day.cancelled,
                timeliness_24h=TimelinessOut.of(day, targets.get(kind)),
                days=[
                    DayOut(
                        day=name,
                        done=f.done,
                        failed=f.failed,
                        p50=f.latency.percentile(0.5),
                        p95=f.latency.percentile(0.95),
                        max=f.latency.maximum,
                    )
                    for name, f in series.get(kind, [])
                ],
            )
        )
    return Overview(
        generated_at=now,
        job_types=overviews,
        pauses=[
            PauseOut(kind=p.kind, name=p.name, reason=p.reason, paused_at=p.paused_at)
            for p in pauses
        ],
    )


def overview_markdown(overview: Overview) -> str:
    """The overview as a markdown report (the ``production-status`` artifact)."""
    lines = [
        f"# Production status at {overview.generated_at:%Y-%m-%d %H:%M} UTC",
        "",
        "| job type | jobs | queued | in progress | done | failed | late | stuck | done 1 h | "
        "done 24 h | p50 | p95 | max | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in overview.job_types:
        timeliness = t.timeliness_24h
        lines.append(
            f"| {t.job_type}{' (paused)' if t.paused else ''} | {t.total} | "
            f"{t.by_phase.get('queued', 0)} | {t.by_phase.get('in-progress', 0)} | "
            f"{t.by_phase.get('complete', 0)} | {t.by_phase.get('failed', 0)} | {t.late} | "
            f"{sum(s.jobs for s in t.stuck)} | {t.done_last_hour} | {t.done_last_day} | "
            f"{duration_text(timeliness.p50)} | {duration_text(timeliness.p95)} | "
            f"{duration_text(timeliness.max)} | {duration_text(timeliness.target_seconds)} |"
        )
    stuck = [(t.job_type, s) for t in overview.job_types for s in t.stuck]
    if stuck:
        lines += ["", "## Stuck", ""]
        lines += [
            f"- {kind}: {s.jobs} {s.status.value} since {s.oldest_change:%Y-%m-%d %H:%M} "
            f"(limit {duration_text(s.limit_seconds)}): {s.reason}"
            for kind, s in stuck
        ]
    if overview.pauses:
        lines += ["", "## Paused", ""]
        lines += [f"- {p.kind} {p.name}: {p.reason or 'no reason given'}" for p in overview.pauses]
    return "\n".join(lines) + "\n"


def duration_text(seconds: float | None) -> str:
    """A short human duration: ``42 s``, ``12.5 min``, ``3.2 h``, ``2.1 d``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7_200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"
