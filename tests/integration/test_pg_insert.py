"""db.pg_insert on a real PostgreSQL: COPY and the array INSERT store the same jobs, a key that
another transaction inserted after the look-up is skipped, a lost connection is repeated."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, func, select, text

from db import pg_insert
from db.models import Job, JobStatusChange
from db.records import NewJob, RunIds
from db.statuses import Status
from db.store import JobStore

START = datetime(2031, 5, 1, tzinfo=UTC)
RUN = RunIds(flow_run_id="flow-run-1", task_run_id="task-run-1")


def products(count: int, prefix: str) -> list[NewJob]:
    """Jobs with every field set; every seventh is inserted as cancelled (too old)."""
    return [
        NewJob(
            "pg-insert",
            f"{prefix}-{number:05d}",
            queue=f"queue-{number % 3}",
            priority=number % 5,
            tile_id=f"T{number % 11:02d}",
            input_path=f"s3://in/{prefix}-{number}",
            input_publication_date=START + timedelta(minutes=number),
            input_files=[{"path": f"B{number}.tif", "size": number}],
            config={"threshold": number / 10, "bands": [3, 11]},
            max_attempts=1 + number % 4,
            status=Status.CANCELLED if number % 7 == 0 else Status.INITIALIZED,
            message="too old" if number % 7 == 0 else None,
        )
        for number in range(count)
    ]


def assert_stored_as_given(store: JobStore, jobs: Sequence[NewJob], ids: Sequence[int]) -> None:
    """Each job's row holds what was given, ids rise in the order given, one history row each."""
    assert list(ids) == sorted(ids)
    stored = {job.id: job for job in store.get_jobs(list(ids))}
    for given, job_id in zip(jobs, ids, strict=True):
        row = stored[job_id]
        assert (row.job_key, row.job_type, row.product_id, row.queue, row.priority) == (
            given.key,
            given.job_type,
            given.product_id,
            given.queue,
            given.priority,
        )
        assert (row.tile_id, row.input_path, row.input_publication_date) == (
            given.tile_id,
            given.input_path,
            given.input_publication_date,
        )
        assert (row.input_files, row.config, row.output_files) == (
            given.input_files,
            given.config,
            [],
        )
        assert (row.status, row.status_message, row.max_attempts, row.attempts) == (
            given.status.value,
            given.message,
            given.max_attempts,
            0,
        )
        assert (row.finished_at is not None) == (given.status is Status.CANCELLED)
        [change] = store.history(job_id)
        assert (change.from_status, change.to_status, change.message) == (
            None,
            given.status.value,
            given.message,
        )
        assert (change.flow_run_id, change.task_run_id) == (RUN.flow_run_id, RUN.task_run_id)


@pytest.mark.parametrize(
    "count", [pg_insert.COPY_MIN_ROWS - 1, pg_insert.COPY_MIN_ROWS], ids=["arrays", "copy"]
)
def test_both_ways_in_store_every_field_and_one_history_row(pg_store: JobStore, count: int) -> None:
    jobs = products(count, "fields")
    result = pg_store.insert_jobs(jobs, run=RUN)
    assert result.skipped == []
    assert_stored_as_given(pg_store, jobs, result.inserted_ids)
    cancelled = sum(job.status is Status.CANCELLED for job in jobs)
    assert pg_store.count_by_type_status() == {
        ("pg-insert", "initialized"): count - cancelled,
        ("pg-insert", "cancelled"): cancelled,
    }


def test_a_key_inserted_meanwhile_by_another_transaction_is_skipped(
    pg_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COPY has no ON CONFLICT: when the look-up missed a key (another transaction committed it
    afterwards), the batch goes in again as the array INSERT, which skips that key."""
    jobs = products(pg_insert.COPY_MIN_ROWS + 100, "race")
    earlier = jobs[43]
    [earlier_id] = pg_store.insert_jobs([earlier]).inserted_ids
    monkeypatch.setattr(pg_insert, "stored_keys", lambda connection, keys: set())

    result = pg_store.insert_jobs(jobs, run=RUN)

    assert result.skipped == [earlier.product_id]
    assert earlier.key not in result.inserted
    others = [job for job in jobs if job is not earlier]
    assert_stored_as_given(pg_store, others, [result.inserted[job.key] for job in others])
    with pg_store.session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == len(jobs)
        history = session.scalar(select(func.count()).select_from(JobStatusChange))
    assert history == len(jobs)
    assert [change.to_status for change in pg_store.history(earlier_id)] == ["initialized"]


@pytest.mark.parametrize("count", [3, pg_insert.COPY_MIN_ROWS], ids=["arrays", "copy"])
def test_a_naive_publication_date_is_refused_and_nothing_written(
    pg_store: JobStore, count: int
) -> None:
    jobs = products(count, "naive")
    jobs[-1] = NewJob("pg-insert", "naive-date", input_publication_date=datetime(2031, 5, 1))
    with pytest.raises(ValueError, match="input_publication_date: naive datetime"):
        pg_store.insert_jobs(jobs)
    assert pg_store.count_by_type_status() == {}


def test_a_connection_lost_during_copy_is_repeated_whole(
    pg_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends the session just before the first COPY: the error reaches the store as
    SQLAlchemy's (the connection invalidated), so a store with ``reconnect_seconds`` runs the
    whole insert again, once, and every job is there once."""
    store = JobStore(pg_store.engine, reconnect_seconds=10)
    copies: list[int] = []
    real_copy = pg_insert._copy

    def copy_after_losing_the_connection(connection: Connection, *args: Any) -> Any:
        copies.append(len(copies))
        if len(copies) == 1:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with store.engine.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return real_copy(connection, *args)

    monkeypatch.setattr(pg_insert, "_copy", copy_after_losing_the_connection)
    jobs = products(pg_insert.COPY_MIN_ROWS, "lost")
    result = store.insert_jobs(jobs, run=RUN)

    assert len(copies) == 2
    assert result.skipped == []
    assert_stored_as_given(store, jobs, result.inserted_ids)
