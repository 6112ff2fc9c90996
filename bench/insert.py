"""insert, insert-naive and re-insert: new products becoming jobs with their first history rows.

* insert: ``JobStore.insert_jobs`` of N new products into empty tables, against the baseline of
  psycopg's binary COPY of the same rows into a bare table (no index, constraint or trigger).
* insert-naive: the same rows as a loop of one ORM ``add`` and one commit per job.
* re-insert: the same N products again; every one is a duplicate and must be skipped.
* insert floor (reported): the same binary COPY straight into ``jobs``, whose indexes and
  triggers (status guard, history rows, job counts) cost what they cost whatever the client
  does: no way of inserting these jobs with their history is faster on the machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from bench.data import empty, open_store, products
from bench.report import Measurement, timed
from db.models import Job
from db.pg_insert import COPY_COLUMNS, copy_row, copy_statement
from db.records import NewJob, RunIds
from db.store import JobStore, utcnow


@dataclass
class InsertSizes:
    jobs: int
    naive_jobs: int
    repeats: int


def copy_into_bare_table(store: JobStore, jobs: list[NewJob], table: str = "bare_jobs") -> None:
    """The baseline: the rows ``insert_jobs`` COPYs (ids 1..N), by psycopg's binary COPY into
    ``bare_jobs`` (or, for the floor of the schema, into ``jobs`` with its indexes and triggers)."""
    now = utcnow()
    run = RunIds()
    raw = store.engine.raw_connection()
    try:
        connection = raw.driver_connection
        with connection.cursor() as cursor, cursor.copy(copy_statement(table)) as copy:
            copy.set_types([kind for _, kind in COPY_COLUMNS])
            for job_id, job in enumerate(jobs, start=1):
                copy.write_row(copy_row(job_id, job.key, job, now, run))
        connection.commit()
    finally:
        raw.close()


def create_bare_table(store: JobStore) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS bare_jobs"))
        connection.execute(text("CREATE TABLE bare_jobs (LIKE jobs INCLUDING DEFAULTS)"))


def truncate_bare_table(store: JobStore) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("TRUNCATE bare_jobs"))


def naive_insert(store: JobStore, jobs: list[NewJob]) -> None:
    """One ORM object added and committed per job: what a first version would do."""
    for job in jobs:
        now = utcnow()
        with Session(store.engine) as session:
            session.add(Job(**store._insert_row(job, job.key, now, RunIds())))
            session.commit()


def counts(store: JobStore) -> tuple[int, int]:
    """Jobs, and ``initialized`` history rows."""
    with store.engine.connect() as connection:
        jobs = connection.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        history = connection.execute(
            text("SELECT count(*) FROM job_status_changes WHERE to_status = 'initialized'")
        ).scalar_one()
    return jobs, history


def run(database_url: str, sizes: InsertSizes, log: Any) -> list[Measurement]:
    """The three insert benchmarks; every repeat starts from empty tables."""
    store = open_store(database_url)
    try:
        return _run(store, sizes, log)
    finally:
        store.engine.dispose()


def _run(store: JobStore, sizes: InsertSizes, log: Any) -> list[Measurement]:
    jobs = products(sizes.jobs)
    create_bare_table(store)
    insert_s, reinsert_s, copy_s, floor_s = [], [], [], []
    result: dict[str, Any] = {}
    for repeat in range(sizes.repeats):
        empty(store)
        truncate_bare_table(store)
        copy_s.append(timed(lambda: copy_into_bare_table(store, jobs)))
        insert_s.append(timed(lambda: result.update(first=store.insert_jobs(jobs))))
        if len(result["first"].inserted) != sizes.jobs or counts(store) != (sizes.jobs,) * 2:
            raise RuntimeError(f"insert: expected {sizes.jobs} jobs and history rows, got "
                               f"{counts(store)}")  # fmt: skip
        reinsert_s.append(timed(lambda: result.update(again=store.insert_jobs(jobs))))
        if result["again"].inserted or len(result["again"].skipped) != sizes.jobs:
            raise RuntimeError("re-insert: every product should have been skipped")
        empty(store)
        floor_s.append(timed(lambda: copy_into_bare_table(store, jobs, "jobs")))
        log(f"  insert repeat {repeat + 1}: insert {insert_s[-1]:.2f} s, re-insert "
            f"{reinsert_s[-1]:.2f} s, COPY baseline {copy_s[-1]:.2f} s, "
            f"COPY into jobs {floor_s[-1]:.2f} s")  # fmt: skip
    empty(store)
    naive_jobs = products(sizes.naive_jobs, offset=sizes.jobs)
    naive_s = timed(lambda: naive_insert(store, naive_jobs))
    if counts(store) != (sizes.naive_jobs,) * 2:
        raise RuntimeError(f"insert-naive: expected {sizes.naive_jobs} jobs, got {counts(store)}")
    log(f"  insert-naive: {sizes.naive_jobs} jobs in {naive_s:.2f} s")

    rate = sizes.jobs / min(insert_s)
    copy_rate = sizes.jobs / min(copy_s)
    naive_rate = sizes.naive_jobs / naive_s
    reinsert_rate = sizes.jobs / min(reinsert_s)
    floor_rate = sizes.jobs / min(floor_s)
    return [
        Measurement(
            name="insert",
            value=rate,
            unit="jobs/s",
            baseline=copy_rate,
            baseline_unit="rows/s",
            ratio=rate / copy_rate,
            ratio_note="insert rate / COPY rate into a bare table",
            target="≥ 20,000 jobs/s and ≥ 0.25 of baseline",
            passed=rate >= 20_000 and rate / copy_rate >= 0.25,
            details={"jobs": sizes.jobs, "insert_seconds": insert_s, "copy_seconds": copy_s},
        ),
        Measurement(
            name="insert floor: COPY into jobs",
            value=floor_rate,
            unit="jobs/s",
            baseline=copy_rate,
            baseline_unit="rows/s",
            ratio=floor_rate / copy_rate,
            ratio_note="the same COPY into jobs (its indexes and triggers) / into a bare table",
            target="(reported: the schema's own cost)",
            passed=True,
            details={"jobs": sizes.jobs, "seconds": floor_s},
        ),
        Measurement(
            name="insert-naive",
            value=naive_rate,
            unit="jobs/s",
            ratio=rate / naive_rate,
            ratio_note="insert rate / naive rate",
            target="insert ≥ 20x naive",
            passed=rate / naive_rate >= 20,
            details={"jobs": sizes.naive_jobs, "seconds": naive_s},
        ),
        Measurement(
            name="re-insert",
            value=reinsert_rate,
            unit="products/s",
            target="≥ 50,000 products/s",
            passed=reinsert_rate >= 50_000,
            details={"products": sizes.jobs, "seconds": reinsert_s},
        ),
    ]
