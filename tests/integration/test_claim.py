"""Concurrent claimers never get the same job, and none is left behind."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select, text

from db.models import Job, JobStatusChange
from db.records import NewJob
from db.store import JobStore
from jobline.settings import Settings

#: Seconds any thread may take before the test gives up (no test may hang).
DEADLINE = 60


def make_ready_jobs(store: JobStore, count: int) -> list[int]:
    """``count`` ready jobs, through the store's bulk operations."""
    job_ids = store.insert_jobs(NewJob("claim", f"p{n:05d}") for n in range(count)).inserted_ids
    store.transition_many(job_ids, "configured", expected_from="initialized")
    store.transition_many(job_ids, "ready", expected_from="configured")
    return job_ids


def claim_until_empty(store: JobStore, worker: str, start: threading.Barrier) -> list[int]:
    """One claimer: take batches until the queue has nothing ready."""
    start.wait(timeout=DEADLINE)
    claimed: list[int] = []
    while batch := store.claim("default", 10, worker):
        claimed += [job.id for job in batch]
    return claimed


def claim_concurrently(store: JobStore, threads: int) -> dict[str, list[int]]:
    start = threading.Barrier(threads)
    workers = [f"worker-{n}" for n in range(threads)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {w: pool.submit(claim_until_empty, store, w, start) for w in workers}
        return {worker: future.result(timeout=DEADLINE) for worker, future in futures.items()}


def assert_each_job_claimed_once(store: JobStore, job_ids: list[int], threads: int) -> None:
    by_worker = claim_concurrently(store, threads)
    claims = Counter(job_id for claimed in by_worker.values() for job_id in claimed)
    assert sorted(claims) == sorted(job_ids), "some jobs were never claimed"
    assert claims.most_common(1)[0][1] == 1, "a job was claimed twice"
    with store.session() as session:
        owners = {
            job_id: worker
            for job_id, worker in session.execute(
                select(Job.id, Job.worker).where(Job.status == "queued")
            )
        }
        queued_rows = session.scalar(
            select(func.count()).where(JobStatusChange.to_status == "queued")
        )
    assert queued_rows == len(job_ids)
    assert owners == {job_id: worker for worker, ids in by_worker.items() for job_id in ids}


def test_16_postgresql_claimers_get_2000_jobs_exactly_once(pg_store: JobStore) -> None:
    job_ids = make_ready_jobs(pg_store, 2_000)
    assert_each_job_claimed_once(pg_store, job_ids, threads=16)


def test_sqlite_claimers_get_every_job_exactly_once(sqlite_settings: Settings) -> None:
    store = JobStore.from_settings(sqlite_settings)
    try:
        job_ids = make_ready_jobs(store, 300)
        assert_each_job_claimed_once(store, job_ids, threads=4)
    finally:
        store.engine.dispose()


def test_postgresql_claim_skips_a_locked_job_instead_of_waiting(pg_store: JobStore) -> None:
    first, second = make_ready_jobs(pg_store, 2)
    pool = ThreadPoolExecutor(max_workers=1)
    with pg_store.engine.connect() as holder:
        locking = holder.begin()
        holder.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": first})
        try:
            claimed = pool.submit(pg_store.claim, "default", 1, "w").result(timeout=10)
        finally:
            # Release the lock first, so that a claimer stuck behind it can finish.
            locking.rollback()
            pool.shutdown()
    assert [job.id for job in claimed] == [second]
    assert [job.id for job in pg_store.claim("default", 1, "w")] == [first]
