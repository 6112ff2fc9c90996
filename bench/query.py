"""query: what dashboards and operators ask of a large store.

N jobs (1,000,000 in a full run) of five job types spread over the statuses as in a store that has
run for a while (mostly done, some failed, a few thousand in flight) are written straight into the
scratch database by one ``INSERT … SELECT`` (the status guard and history triggers are disabled for
it: the setup is not what is measured), then ``VACUUM ANALYZE`` runs as autovacuum would. Measured:

* ``JobStore.count_by_type_status()``: counts by job type x status (median of the repeats);
* ``JobStore.list_jobs(JobFilter(statuses=(ready,)))``: the first page (100 jobs) of a status.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from bench.data import QUEUE, open_store, status_case
from bench.report import Measurement, timed
from db.models import sql_list
from db.records import JobFilter
from db.statuses import TERMINAL, Status
from db.store import JobStore

JOB_TYPES = 5
#: Per mille of the jobs in each status (the rest is done).
SHARES = {
    Status.EXPIRED: 50,
    Status.CANCELLED: 20,
    Status.INTERNAL_ERROR: 10,
    Status.EXTERNAL_ERROR: 5,
    Status.ERROR_CHECKED: 5,
    Status.INITIALIZED: 2,
    Status.CONFIGURED: 10,
    Status.READY: 50,
    Status.QUEUED: 5,
    Status.STARTED: 2,
    Status.PRE_PROCESSING: 2,
    Status.PROCESSING: 20,
    Status.POST_PROCESSING: 2,
    Status.PROCESSED: 2,
    Status.START_PUBLICATION: 2,
    Status.PUBLISHED: 2,
}
PAGE_STATUS = Status.READY
#: Triggers off while the jobs are written: the status guard (jobs start in any status here) and
#: the history (not queried). The job counts' triggers stay on.
SETUP_WITHOUT = ("jobs_guard_insert", "jobs_record_insert")


@dataclass
class QuerySizes:
    jobs: int
    repeats: int


def populate(store: JobStore, jobs: int) -> None:
    """``jobs`` jobs written in one statement, with the user triggers off for it."""
    statuses = status_case(SHARES, 1000)
    statement = f"""
    INSERT INTO jobs (job_key, job_type, queue, priority, product_id, tile_id, input_path,
        input_publication_date, config, input_files, output_files, status, status_seq,
        status_changed_at, attempts, max_attempts, created_at, last_accessed_at, finished_at)
    SELECT decode(md5(i::text), 'hex'), 'bench.types:Type' || (i % {JOB_TYPES}), '{QUEUE}',
        i % 3, 'S2A_MSIL1C_' || lpad(i::text, 9, '0'), 'T' || (i % 500),
        's3://bench-input/S2A_MSIL1C_' || i || '.SAFE',
        timestamptz '2026-01-01' + i * interval '1 second', '{{}}', '[]', '[]', s.status, 1,
        now(), 0, 3, now(), now(),
        CASE WHEN s.status IN ({sql_list(TERMINAL)}) THEN now() END
    FROM generate_series(1, :jobs) AS i, LATERAL (SELECT {statuses} AS status) AS s
    """
    with store.engine.begin() as connection:
        for trigger in SETUP_WITHOUT:
            connection.execute(text(f"ALTER TABLE jobs DISABLE TRIGGER {trigger}"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        connection.execute(text(statement), {"jobs": jobs})
        for trigger in SETUP_WITHOUT:
            connection.execute(text(f"ALTER TABLE jobs ENABLE TRIGGER {trigger}"))
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE jobs"))


def milliseconds(action: Any, repeats: int) -> list[float]:
    action()  # warm-up: connection, statement cache
    return [timed(action) * 1000 for _ in range(repeats)]


def run(database_url: str, sizes: QuerySizes, log: Any) -> list[Measurement]:
    store = open_store(database_url)
    try:
        return _run(store, sizes, log)
    finally:
        store.engine.dispose()


def _run(store: JobStore, sizes: QuerySizes, log: Any) -> list[Measurement]:
    setup = timed(lambda: populate(store, sizes.jobs))
    log(f"  query: {sizes.jobs} jobs written and vacuumed in {setup:.1f} s")
    counts = store.count_by_type_status()
    if sum(counts.values()) != sizes.jobs:
        raise RuntimeError(f"query: counts add up to {sum(counts.values())}, not {sizes.jobs}")
    count_ms = milliseconds(store.count_by_type_status, sizes.repeats)
    page = store.list_jobs(JobFilter(statuses=(PAGE_STATUS,)), limit=100)
    if len(page.jobs) != 100 or any(job.status != PAGE_STATUS.value for job in page.jobs):
        raise RuntimeError("query: the first page is not 100 jobs of the status asked for")
    page_ms = milliseconds(
        lambda: store.list_jobs(JobFilter(statuses=(PAGE_STATUS,)), limit=100), sizes.repeats
    )
    count, first_page = statistics.median(count_ms), statistics.median(page_ms)
    log(f"  query: counts {count:.1f} ms, first page {first_page:.1f} ms (medians)")
    return [
        Measurement(
            name="query: counts by type x status",
            value=count,
            unit="ms",
            target="≤ 50 ms",
            passed=count <= 50,
            details={"jobs": sizes.jobs, "groups": len(counts), "samples_ms": count_ms},
        ),
        Measurement(
            name="query: first page of a status",
            value=first_page,
            unit="ms",
            target="≤ 10 ms",
            passed=first_page <= 10,
            details={"jobs": sizes.jobs, "status": PAGE_STATUS.value, "samples_ms": page_ms},
        ),
    ]
