"""lifecycle and transition latency: the store's bookkeeping of jobs going through their statuses.

* lifecycle: W concurrent workers (threads, each with its own connections from the store's pool)
  loop: claim a batch of ready jobs (``JobStore.claim``), then move the batch through every status
  to ``done`` with ``transition_many``. Baseline: a bare ``UPDATE … FOR UPDATE SKIP LOCKED``
  claim loop over a bare table, same workers and batch size. Checked afterwards: every job is
  ``done`` and has exactly one ``queued`` history row; no job was handed to two workers.
* transition latency: single ``JobStore.transition`` calls (one transaction each, with the
  worker's lease token, as the lifecycle steps make them), p50 and p99.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from sqlalchemy import text

from bench.data import QUEUE, empty, open_store, ready_jobs
from bench.report import Measurement, percentile, timed
from db.statuses import Status
from db.store import JobStore

S = Status
#: Every status a processed job passes after ``queued``, in order.
PATH = (
    S.QUEUED,
    S.STARTED,
    S.PRE_PROCESSING,
    S.PROCESSING,
    S.POST_PROCESSING,
    S.PROCESSED,
    S.START_PUBLICATION,
    S.PUBLISHED,
    S.DONE,
)
#: Transitions made holding the worker's lease (the steps present its token).
LEASED_TARGETS = (S.STARTED, S.PRE_PROCESSING, S.PROCESSING, S.POST_PROCESSING, S.PROCESSED)
#: Seconds any worker may take before the run is declared hung.
DEADLINE = 600


@dataclass
class LifecycleSizes:
    jobs: int
    workers: int
    batch: int
    latency_jobs: int


def worker_loop(store: JobStore, worker: str, batch: int, start: threading.Barrier) -> list[int]:
    """Claim batches until none is left; move each through every status to done."""
    start.wait(timeout=DEADLINE)
    processed: list[int] = []
    while claimed := store.claim(QUEUE, batch, worker, lease_seconds=300):
        ids = [job.id for job in claimed]
        for origin, target in pairwise(PATH):
            moved = store.transition_many(
                ids, target, expected_from=origin, count_attempt=target is S.STARTED
            )
            if moved.unchanged:
                raise RuntimeError(f"{worker}: jobs {moved.unchanged[:5]} not in {origin.value}")
        processed += ids
    return processed


def run_workers(workers: int, loop: Any) -> dict[str, list[int]]:
    start = threading.Barrier(workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {f"w{n}": pool.submit(loop, f"w{n}", start) for n in range(workers)}
        return {name: future.result(timeout=DEADLINE) for name, future in futures.items()}


def check_each_job_once(store: JobStore, by_worker: dict[str, list[int]], jobs: int) -> None:
    """No job went to two workers, every job is done, with exactly one ``queued`` change."""
    handed = Counter(job_id for ids in by_worker.values() for job_id in ids)
    if len(handed) != jobs or max(handed.values()) != 1:
        raise RuntimeError(f"lifecycle: {len(handed)} distinct jobs of {jobs} processed, "
                           f"{sum(n > 1 for n in handed.values())} twice")  # fmt: skip
    with store.engine.connect() as connection:
        not_done = connection.execute(
            text("SELECT count(*) FROM jobs WHERE status <> 'done'")
        ).scalar_one()
        queued_twice = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT job_id FROM job_status_changes "
                "WHERE to_status = 'queued' GROUP BY job_id HAVING count(*) <> 1) AS twice"
            )
        ).scalar_one()
        queued_jobs = connection.execute(
            text("SELECT count(DISTINCT job_id) FROM job_status_changes WHERE to_status = 'queued'")
        ).scalar_one()
    if not_done or queued_twice or queued_jobs != jobs:
        raise RuntimeError(f"lifecycle: {not_done} jobs not done, {queued_twice} queued twice, "
                           f"{queued_jobs} of {jobs} queued")  # fmt: skip


# ------------------------------------------------------------------------------ baseline


def create_bare_queue(store: JobStore, jobs: int) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS bare_queue"))
        connection.execute(
            text(
                "CREATE TABLE bare_queue (id bigserial PRIMARY KEY, status text NOT NULL, "
                "worker text, claimed_at timestamptz)"
            )
        )
        connection.execute(text("CREATE INDEX ON bare_queue (status, id)"))
        connection.execute(
            text("INSERT INTO bare_queue (status) SELECT 'ready' FROM generate_series(1, :n)"),
            {"n": jobs},
        )


BARE_CLAIM = text(
    "UPDATE bare_queue SET status = 'queued', worker = :worker, claimed_at = now() "
    "WHERE id IN (SELECT id FROM bare_queue WHERE status = 'ready' ORDER BY id LIMIT :batch "
    "FOR UPDATE SKIP LOCKED) RETURNING id"
)


def bare_loop(store: JobStore, worker: str, batch: int, start: threading.Barrier) -> list[int]:
    start.wait(timeout=DEADLINE)
    claimed: list[int] = []
    while True:
        with store.engine.begin() as connection:
            ids = list(connection.execute(BARE_CLAIM, {"worker": worker, "batch": batch}).scalars())
        if not ids:
            return claimed
        claimed += ids


# ------------------------------------------------------------------------------ latency


def transition_latencies(store: JobStore, jobs: int) -> list[float]:
    """Seconds of each single transition of ``jobs`` claimed jobs going from queued to done."""
    job_ids = ready_jobs(store, jobs, offset=10_000_000)
    claimed = store.claim(QUEUE, jobs, "latency", lease_seconds=300)
    if len(claimed) != len(job_ids):
        raise RuntimeError(f"latency: claimed {len(claimed)} of {len(job_ids)} jobs")
    samples: list[float] = []
    for job in claimed:
        for origin, target in pairwise(PATH):
            token = job.lease_token if target in LEASED_TARGETS else None
            samples.append(
                timed(
                    lambda job_id=job.id, o=origin, t=target, lease=token: store.transition(
                        job_id, t, expected_from=o, lease_token=lease
                    )
                )
            )
    return samples


def run(database_url: str, sizes: LifecycleSizes, log: Any) -> list[Measurement]:
    store = open_store(database_url)
    try:
        return _run(store, sizes, log)
    finally:
        store.engine.dispose()


def _run(store: JobStore, sizes: LifecycleSizes, log: Any) -> list[Measurement]:
    empty(store)
    ready_jobs(store, sizes.jobs)
    result: dict[str, dict[str, list[int]]] = {}
    seconds = timed(
        lambda: result.update(
            store=run_workers(
                sizes.workers, lambda w, start: worker_loop(store, w, sizes.batch, start)
            )
        )
    )
    check_each_job_once(store, result["store"], sizes.jobs)
    create_bare_queue(store, sizes.jobs)
    bare_seconds = timed(
        lambda: result.update(
            bare=run_workers(
                sizes.workers, lambda w, start: bare_loop(store, w, sizes.batch, start)
            )
        )
    )
    bare_claims = Counter(i for ids in result["bare"].values() for i in ids)
    if len(bare_claims) != sizes.jobs or max(bare_claims.values()) != 1:
        raise RuntimeError("lifecycle baseline: some job was claimed twice or never")
    log(f"  lifecycle: {sizes.jobs} jobs in {seconds:.2f} s; bare claim loop {bare_seconds:.2f} s")

    empty(store)
    samples = transition_latencies(store, sizes.latency_jobs)
    p50, p99 = percentile(samples, 0.50) * 1000, percentile(samples, 0.99) * 1000
    log(f"  transition latency: {len(samples)} transitions, p50 {p50:.2f} ms, p99 {p99:.2f} ms")

    rate, bare_rate = sizes.jobs / seconds, sizes.jobs / bare_seconds
    return [
        Measurement(
            name="lifecycle",
            value=rate,
            unit="jobs/s",
            baseline=bare_rate,
            baseline_unit="claims/s",
            ratio=rate / bare_rate,
            ratio_note="jobs through 9 statuses / jobs through a bare claim",
            target="≥ 2,000 jobs/s, no job twice",
            passed=rate >= 2_000,
            details={
                "jobs": sizes.jobs,
                "workers": sizes.workers,
                "batch": sizes.batch,
                "seconds": seconds,
                "baseline_seconds": bare_seconds,
                "statements_per_batch": len(PATH),
                "jobs_per_worker": {w: len(ids) for w, ids in result["store"].items()},
            },
        ),
        Measurement(
            name="transition latency p50",
            value=p50,
            unit="ms",
            target="(reported)",
            passed=True,
            details={"transitions": len(samples)},
        ),
        Measurement(
            name="transition latency p99",
            value=p99,
            unit="ms",
            target="≤ 5 ms",
            passed=p99 <= 5.0,
            details={"transitions": len(samples), "max_ms": max(samples) * 1000},
        ),
    ]
