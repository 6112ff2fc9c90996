"""lifecycle and transition latency: the store's bookkeeping of jobs going through their statuses.

* lifecycle: W concurrent workers (threads, each with its own connections from the store's pool)
  loop: claim a batch of ready jobs (``JobStore.claim``), then move the batch through every status
  to ``done`` with ``transition_many``. Baseline: a bare ``UPDATE … FOR UPDATE SKIP LOCKED``
  claim loop over a bare table, same workers and batch size. Checked afterwards: every job is
  ``done`` and has exactly one ``queued`` history row; no job was handed to two workers.
* lifecycle floor (reported): the same statements sent by psycopg directly by the same workers:
  what the database itself takes for the claims, transitions, history rows and counts.
* transition latency: single ``JobStore.transition`` calls (one transaction each, with the
  worker's lease token, as the lifecycle steps make them), p50 and p99.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.data import JOB_TYPE, QUEUE, empty, open_store, ready_jobs
from bench.report import Measurement, percentile, timed
from db.statuses import HAPPY_PATH, Status
from db.store import JobStore

S = Status
#: Every status a processed job passes from ``queued`` on, in order.
PATH = HAPPY_PATH[HAPPY_PATH.index(S.QUEUED) :]
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
    repeats: int


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


def timed_workers(workers: int, loop: Any) -> tuple[float, dict[str, list[int]]]:
    """Wall time of :func:`run_workers`, and what each worker processed."""
    started = time.perf_counter()
    handed = run_workers(workers, loop)
    return time.perf_counter() - started, handed


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


def check_counts(store: JobStore, jobs: int) -> None:
    """The counts the database kept through the concurrent transitions are exact."""
    counts = store.count_by_type_status()
    if counts != {(JOB_TYPE, S.DONE.value): jobs}:
        raise RuntimeError(f"lifecycle: job counts say {counts}, not {jobs} done")


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


# ------------------------------------------------------------------------------ floor

#: The lifecycle's statements as a worker would send them by hand: the claim, then one UPDATE
#: per status for the whole batch, each its own autocommit transaction (same triggers).
RAW_CLAIM = (
    "UPDATE jobs SET status = 'queued', status_seq = status_seq + 1, "
    "status_changed_at = now(), worker = %(worker)s, claimed_at = now() "
    "WHERE id IN (SELECT id FROM jobs WHERE queue = %(queue)s AND status = 'ready' "
    "ORDER BY priority DESC, id LIMIT %(batch)s FOR UPDATE SKIP LOCKED) "
    "AND status = 'ready' RETURNING id"
)
RAW_MOVE = (
    "UPDATE jobs SET status = %(to)s, status_seq = status_seq + 1, status_changed_at = now(), "
    "finished_at = CASE WHEN %(done)s THEN now() END "
    "WHERE id = ANY(%(ids)s) AND status = %(origin)s RETURNING id"
)


def raw_connection(store: JobStore) -> psycopg.Connection[Any]:
    """A psycopg connection of its own to the store's database, in autocommit mode."""
    url = make_url(store.engine.url).set(drivername="postgresql")
    return psycopg.connect(
        url.render_as_string(hide_password=False),
        autocommit=True,
        options="-c search_path=jobline,public",
    )


def raw_loop(store: JobStore, worker: str, batch: int, start: threading.Barrier) -> list[int]:
    """:func:`worker_loop` in raw SQL (no store, no SQLAlchemy): the database's share."""
    processed: list[int] = []
    with raw_connection(store) as connection:
        start.wait(timeout=DEADLINE)
        while True:
            claim = {"worker": worker, "queue": QUEUE, "batch": batch}
            ids = [row[0] for row in connection.execute(RAW_CLAIM, claim)]
            if not ids:
                return processed
            for origin, target in pairwise(PATH):
                move = {"to": target.value, "origin": origin.value, "ids": ids}
                connection.execute(RAW_MOVE, {**move, "done": target is S.DONE})
            processed += ids


# ------------------------------------------------------------------------------ latency


#: The floor of a transition: the same change and triggers, as one autocommit statement sent by
#: psycopg directly (no store, no SQLAlchemy), with the job's lease checked while it holds one.
RAW_TRANSITION = (
    "UPDATE jobs SET status = %(to)s, status_seq = status_seq + 1, status_changed_at = now(), "
    "attempts = attempts + %(attempt)s, worker = CASE WHEN %(keep)s THEN worker END, "
    "lease_token = CASE WHEN %(keep)s THEN lease_token END, "
    "lease_expires_at = CASE WHEN %(keep)s THEN lease_expires_at END, "
    "finished_at = CASE WHEN %(done)s THEN now() END "
    "WHERE id = %(id)s AND status = %(origin)s "
    "AND (NOT %(check_lease)s OR lease_token = %(token)s) RETURNING *"
)


def transition_latencies(store: JobStore, jobs: int) -> tuple[list[float], list[float]]:
    """Seconds of each single transition of ``jobs`` claimed jobs going from queued to done,
    through the store and, interleaved job by job (so both see the same machine), as the raw
    statement of ``RAW_TRANSITION``."""
    job_ids = ready_jobs(store, 2 * jobs, offset=10_000_000)
    claimed = store.claim(QUEUE, 2 * jobs, "latency", lease_seconds=300)
    if len(claimed) != len(job_ids):
        raise RuntimeError(f"latency: claimed {len(claimed)} of {len(job_ids)} jobs")
    raw = raw_connection(store)
    samples: list[float] = []
    floor: list[float] = []
    try:
        for job, other in zip(claimed[::2], claimed[1::2], strict=True):
            for origin, target in pairwise(PATH):
                token = job.lease_token if target in LEASED_TARGETS else None
                samples.append(
                    timed(
                        lambda job_id=job.id, o=origin, t=target, lease=token: store.transition(
                            job_id, t, expected_from=o, lease_token=lease
                        )
                    )
                )
                params = {
                    "to": target.value,
                    "origin": origin.value,
                    "id": other.id,
                    "attempt": int(target is S.STARTED),
                    "keep": target in LEASED_TARGETS and target is not S.PROCESSED,
                    "check_lease": target in LEASED_TARGETS,
                    "token": other.lease_token,
                    "done": target is S.DONE,
                }
                floor.append(timed(lambda p=params: raw.execute(RAW_TRANSITION, p).fetchone()))
    finally:
        raw.close()
    return samples, floor


def run(database_url: str, sizes: LifecycleSizes, log: Any) -> list[Measurement]:
    store = open_store(database_url)
    try:
        return _run(store, sizes, log)
    finally:
        store.engine.dispose()


def _run(store: JobStore, sizes: LifecycleSizes, log: Any) -> list[Measurement]:
    runs, bare_runs, raw_runs = [], [], []
    for repeat in range(sizes.repeats):
        empty(store)
        ready_jobs(store, sizes.jobs)
        seconds, handed = timed_workers(
            sizes.workers, lambda w, start: worker_loop(store, w, sizes.batch, start)
        )
        runs.append(seconds)
        check_each_job_once(store, handed, sizes.jobs)
        check_counts(store, sizes.jobs)
        create_bare_queue(store, sizes.jobs)
        bare_seconds, bare = timed_workers(
            sizes.workers, lambda w, start: bare_loop(store, w, sizes.batch, start)
        )
        bare_runs.append(bare_seconds)
        bare_claims = Counter(i for ids in bare.values() for i in ids)
        if len(bare_claims) != sizes.jobs or max(bare_claims.values()) != 1:
            raise RuntimeError("lifecycle baseline: some job was claimed twice or never")
        empty(store)
        ready_jobs(store, sizes.jobs)
        raw_seconds, by_raw = timed_workers(
            sizes.workers, lambda w, start: raw_loop(store, w, sizes.batch, start)
        )
        raw_runs.append(raw_seconds)
        check_each_job_once(store, by_raw, sizes.jobs)
        log(f"  lifecycle repeat {repeat + 1}: {sizes.jobs} jobs in {runs[-1]:.2f} s; "
            f"bare claim loop {bare_runs[-1]:.2f} s; same statements in raw SQL "
            f"{raw_runs[-1]:.2f} s")  # fmt: skip
    seconds, bare_seconds, raw_seconds = min(runs), min(bare_runs), min(raw_runs)

    empty(store)
    samples, floor = transition_latencies(store, sizes.latency_jobs)
    p50, p99 = percentile(samples, 0.50) * 1000, percentile(samples, 0.99) * 1000
    floor50, floor99 = percentile(floor, 0.50) * 1000, percentile(floor, 0.99) * 1000
    log(f"  transition latency: {len(samples)} transitions, p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
        f"raw statement p50 {floor50:.2f} ms, p99 {floor99:.2f} ms")  # fmt: skip

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
                "seconds": runs,
                "baseline_seconds": bare_runs,
                "statements_per_batch": len(PATH),
                "jobs_per_worker": {w: len(ids) for w, ids in handed.items()},
            },
        ),
        Measurement(
            name="lifecycle floor: same SQL, raw psycopg",
            value=sizes.jobs / raw_seconds,
            unit="jobs/s",
            baseline=bare_rate,
            baseline_unit="claims/s",
            ratio=sizes.jobs / raw_seconds / bare_rate,
            ratio_note="the lifecycle's statements sent by psycopg directly / a bare claim",
            target="(reported: the database's share)",
            passed=True,
            details={"seconds": raw_runs},
        ),
        Measurement(
            name="transition latency p50",
            value=p50,
            unit="ms",
            baseline=floor50,
            ratio=p50 / floor50,
            ratio_note="store.transition / the raw UPDATE statement (same triggers, autocommit)",
            target="(reported)",
            passed=True,
            details={"transitions": len(samples)},
        ),
        Measurement(
            name="transition latency p99",
            value=p99,
            unit="ms",
            baseline=floor99,
            ratio=p99 / floor99,
            ratio_note="store.transition / the raw UPDATE statement (same triggers, autocommit)",
            target="≤ 5 ms",
            passed=p99 <= 5.0,
            details={
                "transitions": len(samples),
                "max_ms": max(samples) * 1000,
                "raw_statement_max_ms": max(floor) * 1000,
            },
        ),
    ]
