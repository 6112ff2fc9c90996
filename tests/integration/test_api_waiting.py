"""Awaiting a job from Python (``db.waiting.wait_for_job``) on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from db.records import NewJob
from db.store import JobStore
from db.waiting import wait_for_job
from jobline.exceptions import JobNotFound, JobWaitTimeout
from tests.integration.api_server import HAPPY_PATH


def new_job(store: JobStore) -> int:
    return store.insert_jobs([NewJob(job_type="x.y:Z", product_id="P")]).inserted_ids[0]


def drive(store: JobStore, job_id: int, path: tuple[str, ...], pause: float = 0.0) -> None:
    current = store.get_job(job_id, touch=False).status
    for status in path:
        time.sleep(pause)
        store.transition(job_id, status, expected_from=current)
        current = status


def test_wait_returns_the_job_once_another_thread_finishes_it(store: JobStore) -> None:
    job_id = new_job(store)
    worker = threading.Thread(target=drive, args=(store, job_id, HAPPY_PATH, 0.02))
    worker.start()
    job = wait_for_job(store, job_id, timeout=30, poll_interval=0.05)
    worker.join(10)
    assert job.status == "done"
    assert job.finished_at is not None


def test_wait_on_postgresql_is_woken_by_notifications(pg_store: JobStore) -> None:
    # A poll interval far beyond the test's patience: only a notification can end the wait.
    job_id = new_job(pg_store)
    worker = threading.Thread(target=drive, args=(pg_store, job_id, ("cancelled",), 0.3))
    worker.start()
    started = time.monotonic()
    job = wait_for_job(pg_store, job_id, timeout=30, poll_interval=60)
    worker.join(10)
    assert job.status == "cancelled"
    assert time.monotonic() - started < 5


def test_wait_times_out_naming_the_job_and_its_status(store: JobStore) -> None:
    job_id = new_job(store)
    started = time.monotonic()
    with pytest.raises(JobWaitTimeout, match=f"job {job_id} is still initialized") as caught:
        wait_for_job(store, job_id, timeout=0.3, poll_interval=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert 0.25 < time.monotonic() - started < 5


def test_wait_for_a_terminal_or_unknown_job_returns_at_once(store: JobStore) -> None:
    job_id = new_job(store)
    drive(store, job_id, ("cancelled",))
    assert wait_for_job(store, job_id, timeout=0).status == "cancelled"
    with pytest.raises(JobNotFound):
        wait_for_job(store, 424242, timeout=5)
