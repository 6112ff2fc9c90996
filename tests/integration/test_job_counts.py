"""The job counts the database keeps (``job_counts``, migration 0004) equal a count of the jobs,
whatever changed them: inserts, transitions (also concurrent ones), deletes, folds, truncation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text

import db.store
from db.models import Job, JobCount
from db.records import JobFilter, NewJob
from db.statuses import Status
from db.store import JobStore

S = Status


def counted_from_jobs(store: JobStore) -> dict[tuple[str, str], int]:
    """What a GROUP BY over the jobs says."""
    with store.session() as session:
        rows = session.execute(
            select(Job.job_type, Job.status, func.count()).group_by(Job.job_type, Job.status)
        )
        return {(kind, status): n for kind, status, n in rows}


def test_counts_follow_inserts_transitions_and_deletes(pg_store: JobStore) -> None:
    ids = pg_store.insert_jobs(NewJob("a", f"p{n}") for n in range(30)).inserted_ids
    pg_store.insert_jobs([NewJob("b", "q1"), NewJob("b", "q2", status=S.CANCELLED)])
    pg_store.transition_many(ids[:20], S.CONFIGURED, expected_from=S.INITIALIZED)
    pg_store.transition(ids[0], S.READY, expected_from=S.CONFIGURED)
    pg_store.get_job(ids[1])  # an UPDATE that changes no status
    with pg_store.session() as session:
        session.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": ids[29]})

    expected = {("a", "initialized"): 9, ("a", "configured"): 19, ("a", "ready"): 1}
    expected |= {("b", "initialized"): 1, ("b", "cancelled"): 1}
    assert pg_store.count_by_type_status() == expected == counted_from_jobs(pg_store)
    assert pg_store.count_by_type_status(JobFilter(job_type="b")) == {
        ("b", "initialized"): 1,
        ("b", "cancelled"): 1,
    }
    assert pg_store.count_by_type_status(JobFilter(statuses=(S.READY, S.CANCELLED))) == {
        ("a", "ready"): 1,
        ("b", "cancelled"): 1,
    }
    # A filter the counts cannot answer goes to the jobs themselves.
    assert pg_store.count_by_type_status(JobFilter(product_id="q1")) == {("b", "initialized"): 1}


def test_concurrent_transitions_and_folding_keep_the_counts_exact(
    pg_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db.store, "COUNT_ROWS_TO_FOLD", 5)
    ids = pg_store.insert_jobs(NewJob("c", f"p{n:04d}") for n in range(400)).inserted_ids
    pg_store.transition_many(ids, S.CONFIGURED, expected_from=S.INITIALIZED)
    pg_store.transition_many(ids, S.READY, expected_from=S.CONFIGURED)

    def work(worker: int) -> None:
        while claimed := pg_store.claim("default", 7, f"w{worker}"):
            batch = [job.id for job in claimed]
            pg_store.transition_many(batch, S.STARTED, expected_from=S.QUEUED)
            pg_store.count_by_type_status()  # folds while the others write

    with ThreadPoolExecutor(max_workers=6) as pool:
        for future in [pool.submit(work, n) for n in range(6)]:
            future.result(timeout=60)

    assert pg_store.count_by_type_status() == {("c", "started"): 400}
    assert counted_from_jobs(pg_store) == {("c", "started"): 400}
    with pg_store.session() as session:
        rows = session.scalar(select(func.count()).select_from(JobCount))
    assert rows <= 10, "the rows were folded"


def test_truncating_the_jobs_empties_the_counts(pg_store: JobStore) -> None:
    pg_store.insert_jobs([NewJob("d", "p1")])
    with pg_store.session() as session:
        session.execute(text("TRUNCATE jobs CASCADE"))
    assert pg_store.count_by_type_status() == {}
