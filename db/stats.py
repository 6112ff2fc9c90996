"""Production statistics kept by the database: finished jobs and latency per job type and hour.

Triggers on ``jobs`` (migration 0008; statement triggers with transition tables on PostgreSQL,
row triggers on SQLite) append to ``job_stats`` one row per (job type, hour, latency bucket)
that a statement finished: jobs that reached ``done`` (with their latency), ``internal_error``
(failed) or ``cancelled``. Like ``job_counts`` no row is ever updated by a writer, so concurrent
writers share nothing; :func:`fold` merges the rows of each (job type, hour, bucket) now and then.

A done job's **latency** is the time from its input's publication (its creation, when the input
has no publication date) to its output's publication (its end, when it published nothing). The
histogram's buckets are geometric (:data:`BUCKET_EDGES`, 25 % wide): a percentile read from it
is interpolated within the bucket holding that rank, so it lies in the exact value's bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from db.models import NEVER_LATE, UtcDateTime, sql_list
from db.statuses import Status

#: Upper edges (seconds) of the latency buckets: bucket ``b`` holds latencies in
#: ``[BUCKET_EDGES[b - 1], BUCKET_EDGES[b])`` (bucket 0: below 1 s; the last: 56 days and more).
BUCKET_EDGES: tuple[float, ...] = tuple(round(1.25**i, 3) for i in range(0, 70))

#: A job in one of these statuses for longer than the limit is stuck, for the reason given.
STUCK_LIMITS: dict[Status, tuple[timedelta, str]] = {
    Status.INITIALIZED: (timedelta(minutes=15), "not configured: is discovery running?"),
    Status.CONFIGURED: (timedelta(days=1), "waiting for a dependency (an older product)"),
    Status.READY: (
        timedelta(hours=1),
        "not claimed: is a processing run scheduled, or its job type or queue paused?",
    ),
    Status.QUEUED: (timedelta(minutes=15), "claimed but not started: is a worker running?"),
    Status.STARTED: (timedelta(minutes=30), "staging not begun: is its worker alive?"),
    Status.PRE_PROCESSING: (timedelta(hours=1), "staging inputs for over an hour"),
    Status.PROCESSING: (timedelta(hours=3), "container running for over 3 hours"),
    Status.POST_PROCESSING: (timedelta(hours=1), "uploading outputs for over an hour"),
    Status.PROCESSED: (timedelta(minutes=30), "not published: is the publish step running?"),
    Status.START_PUBLICATION: (
        timedelta(minutes=30),
        "publication not confirmed: is the broker reachable?",
    ),
    Status.PUBLISHED: (timedelta(minutes=30), "published but not done"),
    Status.EXTERNAL_ERROR: (timedelta(hours=1), "external error not handled by a retry"),
    Status.ERROR_CHECKED: (timedelta(hours=1), "checked but neither retried nor cancelled"),
}

#: ``job_stats`` rows (by id span) above which reading folds them first.
STATS_ROWS_TO_FOLD = 5_000


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a latency (what the triggers' SQL computes)."""
    for index, edge in enumerate(BUCKET_EDGES):
        if seconds < edge:
            return index
    return len(BUCKET_EDGES)


def _bucket_sql(latency: str) -> str:
    """SQL: the bucket of ``latency`` (seconds), the same as :func:`bucket_of`."""
    branches = " ".join(f"WHEN {latency} < {edge} THEN {i}" for i, edge in enumerate(BUCKET_EDGES))
    return f"(CASE {branches} ELSE {len(BUCKET_EDGES)} END)"


def _latency_sql(row: str, dialect: str) -> str:
    """SQL: a finished job's latency in seconds (see the module's docstring)."""
    end = f"COALESCE({row}.output_publication_date, {row}.status_changed_at)"
    start = f"COALESCE({row}.input_publication_date, {row}.created_at)"
    if dialect == "postgresql":
        return f"EXTRACT(EPOCH FROM ({end} - {start}))::float8"
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def _hour_sql(row: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"date_trunc('hour', {row}.status_changed_at)"
    return f"strftime('%Y-%m-%d %H:00:00.000000', {row}.status_changed_at)"


def _figures_select(row: str, dialect: str, source: str, where: str) -> str:
    """SQL: the ``job_stats`` rows for the finished jobs ``row`` of ``source``."""
    latency = _latency_sql(row, dialect)
    done = f"{row}.status = 'done'"
    bucket = f"CASE WHEN {done} THEN {_bucket_sql(latency)} END"
    on_time = f"{row}.due_at IS NULL OR {row}.status_changed_at <= {row}.due_at"
    return (
        "INSERT INTO {s}job_stats (job_type, hour, done, failed, cancelled, done_late, "
        "latency_bucket, latency_sum, latency_min, latency_max) "
        f"SELECT {row}.job_type, {_hour_sql(row, dialect)}, "
        f"SUM(CASE WHEN {done} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {row}.status = 'internal_error' THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {row}.status = 'cancelled' THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {done} AND NOT ({on_time}) THEN 1 ELSE 0 END), "
        f"{bucket}, SUM(CASE WHEN {done} THEN {latency} END), "
        f"MIN(CASE WHEN {done} THEN {latency} END), MAX(CASE WHEN {done} THEN {latency} END) "
        f"FROM {source} WHERE {where} "
        f"GROUP BY {row}.job_type, {_hour_sql(row, dialect)}, {bucket}"
    )


FINISHING = "('done', 'internal_error', 'cancelled')"


def postgresql_triggers(schema: str) -> list[str]:
    """DDL of the statistics' statement triggers on ``jobs`` in ``schema``."""
    s = f'"{schema}"'
    on_update = _figures_select(
        "n",
        "postgresql",
        "new_rows n JOIN old_rows o ON o.id = n.id",
        f"n.status IN {FINISHING} AND n.status_seq IS DISTINCT FROM o.status_seq",
    ).format(s=f"{s}.")
    on_insert = _figures_select("n", "postgresql", "new_rows n", f"n.status IN {FINISHING}")
    bodies = {
        "jobs_stats_update": ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows", on_update),
        "jobs_stats_insert": ("INSERT", "NEW TABLE AS new_rows", on_insert.format(s=f"{s}.")),
    }
    statements = []
    for name, (event, tables, body) in bodies.items():
        statements.append(
            f"CREATE OR REPLACE FUNCTION {s}.{name}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$fn$ BEGIN {body}; RETURN NULL; END $fn$"
        )
        statements.append(
            f"CREATE TRIGGER {name} AFTER {event} ON {s}.jobs REFERENCING {tables} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.{name}()"
        )
    statements.append(
        f"CREATE OR REPLACE FUNCTION {s}.jobs_stats_truncate() RETURNS trigger "
        f"LANGUAGE plpgsql AS $fn$ BEGIN DELETE FROM {s}.job_stats; RETURN NULL; END $fn$"
    )
    statements.append(
        f"CREATE TRIGGER jobs_stats_truncate AFTER TRUNCATE ON {s}.jobs "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.jobs_stats_truncate()"
    )
    return statements


def sqlite_triggers() -> list[str]:
    """DDL of the statistics' row triggers on ``jobs`` (SQLite)."""
    changed = "(NEW.status IS NOT OLD.status OR NEW.status_seq IS NOT OLD.status_seq)"
    columns = (
        "status_changed_at, output_publication_date, input_publication_date, created_at, due_at"
    )
    source = (
        "(SELECT NEW.job_type AS job_type, NEW.status AS status, "
        + ", ".join(f"NEW.{c} AS {c}" for c in columns.split(", "))
        + ") AS n"
    )
    insert = _figures_select("n", "sqlite", source, f"n.status IN {FINISHING}").format(s="")
    return [
        f"CREATE TRIGGER jobs_stats_update AFTER UPDATE ON jobs "
        f"WHEN {changed} AND NEW.status IN {FINISHING} BEGIN {insert}; END",
        f"CREATE TRIGGER jobs_stats_insert AFTER INSERT ON jobs "
        f"WHEN NEW.status IN {FINISHING} BEGIN {insert}; END",
    ]


def drop_statements(dialect: str, schema: str) -> list[str]:
    if dialect == "postgresql":
        s = f'"{schema}"'
        names = ("jobs_stats_update", "jobs_stats_insert", "jobs_stats_truncate")
        return [f"DROP TRIGGER IF EXISTS {n} ON {s}.jobs" for n in names] + [
            f"DROP FUNCTION IF EXISTS {s}.{n}()" for n in names
        ]
    return ["DROP TRIGGER IF EXISTS jobs_stats_update", "DROP TRIGGER IF EXISTS jobs_stats_insert"]


def backfill_statement(dialect: str, schema: str | None) -> str:
    """SQL: ``job_stats`` rows for every job finished now (``done``, ``internal_error``,
    ``cancelled``), as the triggers would have written them; for the migration and bulk loads."""
    prefix = f'"{schema}".' if dialect == "postgresql" and schema else ""
    return _figures_select("j", dialect, f"{prefix}jobs j", f"j.status IN {FINISHING}").format(
        s=prefix
    )


FOLD = (
    "WITH folded AS (DELETE FROM job_stats RETURNING *) "
    "INSERT INTO job_stats (job_type, hour, done, failed, cancelled, done_late, latency_bucket, "
    "latency_sum, latency_min, latency_max) "
    "SELECT job_type, hour, sum(done), sum(failed), sum(cancelled), sum(done_late), "
    "latency_bucket, sum(latency_sum), min(latency_min), max(latency_max) "
    "FROM folded GROUP BY job_type, hour, latency_bucket"
)


#: The ``meta`` key holding the highest ``job_stats`` id of the last fold.
FOLDED_UNTIL = "job_stats_folded_until"


def fold_if_needed(connection: Connection) -> None:
    """Merge ``job_stats`` rows per (job type, hour, bucket) once more than
    :data:`STATS_ROWS_TO_FOLD` were appended since the last fold (PostgreSQL; safe beside
    writers and other folds, see ``db.store._FOLD_JOB_COUNTS``). The folded rows themselves are
    many (job types x hours x buckets), so the last fold's end is kept in ``meta``."""
    if connection.dialect.name != "postgresql":
        return
    newest = connection.execute(text("SELECT max(id) FROM job_stats")).scalar()
    folded = connection.execute(
        text("SELECT value FROM meta WHERE key = :key"), {"key": FOLDED_UNTIL}
    ).scalar()
    if newest is None or newest - int(folded or 0) <= STATS_ROWS_TO_FOLD:
        return
    connection.execute(text(FOLD))
    newest = connection.execute(text("SELECT max(id) FROM job_stats")).scalar() or 0
    connection.execute(
        text(
            "INSERT INTO meta (key, value, updated_at) VALUES (:key, :value, now()) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()"
        ),
        {"key": FOLDED_UNTIL, "value": str(newest)},
    )


# ------------------------------------------------------------------------------ reading


@dataclass
class Latency:
    """Latency figures of done jobs (seconds), and its histogram by bucket."""

    count: int = 0
    total: float = 0.0
    minimum: float | None = None
    maximum: float | None = None
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, bucket: int, count: int, total: float, low: float, high: float) -> None:
        self.count += count
        self.total += total
        self.minimum = low if self.minimum is None else min(self.minimum, low)
        self.maximum = high if self.maximum is None else max(self.maximum, high)
        self.buckets[bucket] = self.buckets.get(bucket, 0) + count

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """The latency at rank ``ceil(q * count)``, interpolated within its bucket (whose edges
        are clipped to the observed extremes): within that bucket of the exact value."""
        if not self.count or self.minimum is None or self.maximum is None:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            in_bucket = self.buckets[bucket]
            if seen + in_bucket >= rank:
                lower = BUCKET_EDGES[bucket - 1] if bucket > 0 else 0.0
                upper = BUCKET_EDGES[bucket] if bucket < len(BUCKET_EDGES) else self.maximum
                lower, upper = max(lower, self.minimum), min(upper, self.maximum)
                return lower + (upper - lower) * (rank - seen) / in_bucket
            seen += in_bucket
        return self.maximum


@dataclass
class Finished:
    """What finished in a time window for one job type."""

    done: int = 0
    failed: int = 0
    cancelled: int = 0
    done_late: int = 0
    latency: Latency = field(default_factory=Latency)


def finished_since(
    connection: Connection, since: datetime, job_types: Iterable[str] | None = None
) -> dict[str, Finished]:
    """Per job type, the jobs finished in the hours from ``since``'s hour on."""
    hour = since.replace(minute=0, second=0, microsecond=0)
    if connection.dialect.name == "sqlite":
        bound: object = hour.replace(tzinfo=None).strftime("%Y-%m-%d %H:00:00.000000")
    else:
        bound = hour
    rows = connection.execute(
        text(
            "SELECT job_type, latency_bucket, sum(done), sum(failed), sum(cancelled), "
            "sum(done_late), sum(latency_sum), min(latency_min), max(latency_max) "
            "FROM job_stats WHERE hour >= :since GROUP BY job_type, latency_bucket"
        ),
        {"since": bound},
    )
    wanted = set(job_types) if job_types is not None else None
    figures: dict[str, Finished] = {}
    for kind, bucket, done, failed, cancelled, late, total, low, high in rows:
        if wanted is not None and kind not in wanted:
            continue
        entry = figures.setdefault(kind, Finished())
        entry.done += int(done or 0)
        entry.failed += int(failed or 0)
        entry.cancelled += int(cancelled or 0)
        entry.done_late += int(late or 0)
        if bucket is not None and done:
            entry.latency.add(int(bucket), int(done), float(total), float(low), float(high))
    return figures


def daily_series(connection: Connection, since: datetime) -> dict[str, list[tuple[str, Finished]]]:
    """Per job type, one :class:`Finished` per UTC day from ``since``'s day on (for charts)."""
    day = since.replace(hour=0, minute=0, second=0, microsecond=0)
    if connection.dialect.name == "sqlite":
        bound: object = day.replace(tzinfo=None).strftime("%Y-%m-%d %H:00:00.000000")
        day_sql = "substr(hour, 1, 10)"
    else:
        bound = day
        day_sql = "to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    rows = connection.execute(
        text(
            f"SELECT job_type, {day_sql} AS day, latency_bucket, sum(done), sum(failed), "
            "sum(cancelled), sum(done_late), sum(latency_sum), min(latency_min), "
            f"max(latency_max) FROM job_stats WHERE hour >= :since "
            f"GROUP BY job_type, {day_sql}, latency_bucket"
        ),
        {"since": bound},
    )
    series: dict[str, dict[str, Finished]] = {}
    for kind, day_text, bucket, done, failed, cancelled, late, total, low, high in rows:
        entry = series.setdefault(kind, {}).setdefault(str(day_text), Finished())
        entry.done += int(done or 0)
        entry.failed += int(failed or 0)
        entry.cancelled += int(cancelled or 0)
        entry.done_late += int(late or 0)
        if bucket is not None and done:
            entry.latency.add(int(bucket), int(done), float(total), float(low), float(high))
    return {kind: sorted(days.items()) for kind, days in series.items()}


@dataclass(frozen=True)
class StuckGroup:
    """Jobs of one type stuck in one status: how many, since when, and why."""

    job_type: str
    status: str
    jobs: int
    oldest_change: datetime
    limit: timedelta
    reason: str


def late_and_stuck(
    connection: Connection, now: datetime
) -> tuple[dict[str, int], list[StuckGroup]]:
    """Late jobs per job type, and the jobs whose status is older than its limit in
    :data:`STUCK_LIMITS` per type and status. Both read only the unfinished jobs: on PostgreSQL
    an index-only scan of ``ix_jobs_unfinished`` for the late ones, and one range of it per
    status (joined to the limits) for the stuck ones."""
    unfinished = f"status NOT IN ({sql_list(NEVER_LATE)})"
    late_rows = connection.execute(
        text(f"SELECT job_type, count(*) FROM jobs WHERE {unfinished} AND due_at < :now "
             "GROUP BY job_type"),
        {"now": _bind_time(connection, now)},
    )  # fmt: skip
    late = {kind: int(n) for kind, n in late_rows}
    limits, params = [], {}
    for index, (status, (limit, _reason)) in enumerate(STUCK_LIMITS.items()):
        params[f"before_{index}"] = _bind_time(connection, now - limit)
        limits.append(f"('{status.value}', :before_{index})")
    stuck_rows = connection.execute(
        text(
            f"WITH limits (status, changed_before) AS (VALUES {', '.join(limits)}) "
            "SELECT j.job_type, j.status, count(*), min(j.status_changed_at) "
            "FROM limits JOIN jobs j ON j.status = limits.status "
            "AND j.status_changed_at < limits.changed_before "
            f"WHERE j.{unfinished} GROUP BY j.job_type, j.status"
        ),
        params,
    )
    groups = []
    for kind, status, count, oldest in stuck_rows:
        limit, reason = STUCK_LIMITS[Status(status)]
        groups.append(StuckGroup(kind, status, int(count), _read_time(oldest), limit, reason))
    return late, sorted(groups, key=lambda g: (g.job_type, Status(g.status).id))


def _bind_time(connection: Connection, value: datetime) -> object:
    return UtcDateTime().process_bind_param(value, connection.dialect)


def _read_time(value: object) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    result = UtcDateTime().process_result_value(value, None)  # type: ignore[arg-type]
    assert result is not None
    return result
