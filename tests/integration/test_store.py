"""JobStore's named operations on real databases: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from db.engine import make_engine
from db.models import Job, JobStatusChange
from db.records import JobFilter, NewJob, RunIds
from db.statuses import Status
from db.store import JobStore
from jobline.exceptions import (
    IllegalTransition,
    JobNotFound,
    LeaseLost,
    MetadataModelMismatch,
    MetadataNotFound,
    StaleTransition,
)
from jobline.settings import Settings

START = datetime(2030, 1, 1, tzinfo=UTC)
TO_DONE = [
    "initialized",
    "configured",
    "ready",
    "queued",
    "started",
    "pre_processing",
    "processing",
    "post_processing",
    "processed",
    "done",
]


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timed_store(any_settings: Settings, clock: FakeClock) -> Iterator[JobStore]:
    """A store on either backend whose time is ``clock``."""
    job_store = JobStore(make_engine(any_settings), clock=clock)
    yield job_store
    job_store.engine.dispose()


def insert(store: JobStore, *jobs: NewJob) -> list[int]:
    result = store.insert_jobs(jobs)
    assert not result.skipped
    return result.inserted_ids


def advance(store: JobStore, job_ids: Sequence[int], path: Sequence[str]) -> None:
    """Move jobs along ``path`` (its first element is their current status), in bulk."""
    for origin, target in pairwise(path):
        result = store.transition_many(job_ids, target, expected_from=origin)
        assert result.unchanged == [], f"{origin} -> {target}"


def ready_jobs(store: JobStore, *jobs: NewJob) -> list[int]:
    job_ids = insert(store, *jobs)
    advance(store, job_ids, ["initialized", "configured", "ready"])
    return job_ids


def snapshot(store: JobStore, job_id: int) -> tuple[object, ...]:
    """What a refused transition must leave untouched."""
    job = store.get_job(job_id, touch=False)
    return (job.status, job.status_seq, job.lease_token, len(store.history(job_id)))


# ------------------------------------------------------------------------------ insert


def test_inserting_the_same_products_twice_makes_one_job_each(store: JobStore) -> None:
    products = [NewJob("bulk", f"product-{number:05d}") for number in range(10_000)]
    first = store.insert_jobs(products)
    second = store.insert_jobs(products)
    assert len(first.inserted) == 10_000
    assert first.skipped == []
    assert second.inserted == {}
    assert sorted(second.skipped) == sorted(job.product_id for job in products)
    with store.session() as session:
        jobs = session.scalar(select(func.count()).select_from(Job))
        history = session.execute(
            select(JobStatusChange.to_status, func.count()).group_by(JobStatusChange.to_status)
        ).all()
    assert jobs == 10_000
    assert dict(history) == {"initialized": 10_000}


def test_insert_skips_repeats_within_a_batch_and_keeps_fields(store: JobStore) -> None:
    job = NewJob(
        "typed",
        "p-1",
        queue="fast",
        priority=4,
        tile_id="T31",
        input_path="s3://in/p-1",
        input_publication_date=START,
        input_files=["a.tif"],
        config={"band": 4},
        max_attempts=5,
    )
    result = store.insert_jobs([job, job, NewJob("typed", "p-2", status=Status.CANCELLED)])
    assert result.skipped == ["p-1"]
    first, cancelled = store.get_jobs(result.inserted_ids)
    assert (first.queue, first.priority, first.tile_id, first.input_path) == (
        "fast",
        4,
        "T31",
        "s3://in/p-1",
    )
    assert (first.input_publication_date, first.input_files, first.config) == (
        START,
        ["a.tif"],
        {"band": 4},
    )
    assert (first.max_attempts, first.attempts, first.status) == (5, 0, "initialized")
    assert first.job_key == job.key
    assert store.get_job_by_key(job.key).id == first.id
    assert (cancelled.status, cancelled.finished_at is not None) == ("cancelled", True)


# ------------------------------------------------------------------------- transitions


def test_transition_moves_the_job_and_sets_allowed_values(timed_store: JobStore) -> None:
    [job_id] = insert(timed_store, NewJob("t", "p"))
    job = timed_store.transition(
        job_id,
        "configured",
        expected_from=["initialized", "error_checked"],
        message="tile ready",
        values={"config": {"resolution": 10}, "priority": 3},
    )
    assert (job.status, job.status_seq, job.status_message) == ("configured", 2, "tile ready")
    assert (job.config, job.priority, job.status_changed_at) == ({"resolution": 10}, 3, START)
    with pytest.raises(ValueError, match=r"values: a transition cannot set \['status'\]"):
        timed_store.transition(job_id, "ready", expected_from="configured", values={"status": "x"})
    with pytest.raises(ValueError, match="expected_from"):
        timed_store.transition(job_id, "ready", expected_from=[])


def test_stale_transition_names_the_actual_status_and_writes_nothing(store: JobStore) -> None:
    [job_id] = insert(store, NewJob("t", "p"))
    before = snapshot(store, job_id)
    with pytest.raises(StaleTransition, match=r"expected status ready .* the job is initialized"):
        store.transition(job_id, "queued", expected_from="ready")
    assert snapshot(store, job_id) == before


def test_illegal_transition_is_refused_before_the_database(store: JobStore) -> None:
    [job_id] = insert(store, NewJob("t", "p"))
    before = snapshot(store, job_id)
    with pytest.raises(IllegalTransition, match=rf"job {job_id}: initialized -> done"):
        store.transition(job_id, "done", expected_from="initialized")
    with pytest.raises(IllegalTransition):
        store.transition_many([job_id], "done", expected_from=["processed", "initialized"])
    assert snapshot(store, job_id) == before


def test_transition_of_an_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobNotFound, match="job 424242 does not exist"):
        store.transition(424242, "configured", expected_from="initialized")


def test_transition_with_a_lost_lease_writes_nothing(store: JobStore) -> None:
    [job_id] = ready_jobs(store, NewJob("t", "p"))
    [claimed] = store.claim("default", 1, "worker-1")
    before = snapshot(store, job_id)
    with pytest.raises(LeaseLost, match=f"lease lost on job {job_id}: token stolen"):
        store.transition(job_id, "started", expected_from="queued", lease_token="stolen")
    assert snapshot(store, job_id) == before
    started = store.transition(
        job_id, "started", expected_from="queued", lease_token=claimed.lease_token
    )
    assert (started.worker, started.lease_token) == ("worker-1", claimed.lease_token)
    # A job that moved on is stale for the old owner, whatever its token.
    with pytest.raises(StaleTransition):
        store.transition(job_id, "started", expected_from="queued", lease_token="stolen")


def test_transition_many_reports_what_it_did_not_move(store: JobStore) -> None:
    job_ids = insert(store, *(NewJob("t", f"p{number}") for number in range(5)))
    store.transition(job_ids[1], "cancelled", expected_from="initialized")
    result = store.transition_many(
        [*job_ids, 999_999], "configured", expected_from="initialized", message="batch"
    )
    assert sorted(result.changed) == [job_ids[0], *job_ids[2:]]
    assert result.unchanged == [job_ids[1], 999_999]
    assert [job.status for job in store.get_jobs(job_ids)] == [
        "configured",
        "cancelled",
        "configured",
        "configured",
        "configured",
    ]
    assert store.history(job_ids[0])[-1].message == "batch"
    assert store.transition_many([], "configured", expected_from="initialized").changed == []


# --------------------------------------------------------------------------- claims


def test_claim_takes_priority_then_id_and_respects_type_queue_and_retry(
    timed_store: JobStore, clock: FakeClock
) -> None:
    low, high, high_later, mid, other_type, other_queue, waiting = ready_jobs(
        timed_store,
        NewJob("a", "low", priority=0),
        NewJob("a", "high", priority=5),
        NewJob("a", "high-later", priority=5),
        NewJob("a", "mid", priority=1),
        NewJob("b", "other-type", priority=9),
        NewJob("a", "other-queue", priority=10, queue="other"),
        NewJob("a", "waiting", priority=20),
    )
    retry_at = clock.now + timedelta(minutes=5)
    timed_store.transition(waiting, "internal_error", expected_from="ready")
    timed_store.transition(waiting, "error_checked", expected_from="internal_error")
    timed_store.transition(
        waiting, "ready", expected_from="error_checked", values={"retry_at": retry_at}
    )

    assert timed_store.claim("default", 0, "w") == []
    first = timed_store.claim("default", 3, "w1", job_type="a", lease_seconds=60, run=RunIds("f"))
    assert [job.id for job in first] == [high, high_later, mid]
    assert {job.lease_token for job in first} != {None}
    for job in first:
        assert (job.status, job.worker, job.claimed_at) == ("queued", "w1", START)
        assert job.lease_expires_at == START + timedelta(seconds=60)
    claim_row = timed_store.history(high)[-1]
    assert (claim_row.to_status, claim_row.message, claim_row.flow_run_id) == (
        "queued",
        "claimed by w1",
        "f",
    )
    assert [job.id for job in timed_store.claim("default", 10, "w2")] == [other_type, low]
    assert timed_store.claim("default", 10, "w2") == []
    clock.advance(300)
    assert [job.id for job in timed_store.claim("default", 10, "w3")] == [waiting]
    assert [job.id for job in timed_store.claim("other", 10, "w4")] == [other_queue]


def test_heartbeat_extends_the_lease_of_its_owner_only(
    timed_store: JobStore, clock: FakeClock
) -> None:
    [job_id] = ready_jobs(timed_store, NewJob("t", "p"))
    [job] = timed_store.claim("default", 1, "w", lease_seconds=30)
    clock.advance(20)
    expires = timed_store.heartbeat(job_id, job.lease_token, lease_seconds=30)
    assert expires == START + timedelta(seconds=50)
    assert timed_store.get_job(job_id).lease_expires_at == expires
    with pytest.raises(LeaseLost, match=f"job {job_id}"):
        timed_store.heartbeat(job_id, "not-the-token")
    path = ["queued", "started", "pre_processing", "processing", "post_processing", "processed"]
    for origin, target in pairwise(path):
        timed_store.transition(job_id, target, expected_from=origin, lease_token=job.lease_token)
    # Leaving the leased statuses releases the lease: the old token owns nothing any more.
    released = timed_store.get_job(job_id)
    assert (released.worker, released.lease_token, released.lease_expires_at) == (None, None, None)
    with pytest.raises(LeaseLost):
        timed_store.heartbeat(job_id, job.lease_token)


# ------------------------------------------------------------------------- metadata


class StagedFile(BaseModel):
    path: str
    size: int
    sha256: str


class Staged(BaseModel):
    files: list[StagedFile]
    staged_at: datetime
    total_bytes: int
    note: str | None = None


class ContainerRun(BaseModel):
    image: str
    exit_code: int


class StagedSummary(BaseModel):
    total_bytes: int


class StagedChecked(Staged):
    checksum: str


STAGED = Staged(
    files=[StagedFile(path="in/a.tif", size=10, sha256="ab" * 32)],
    staged_at=START,
    total_bytes=10,
)


def test_metadata_round_trips_as_the_same_model(store: JobStore) -> None:
    [job_id] = insert(store, NewJob("t", "p"))
    store.set_metadata(job_id, "pre_process", STAGED)
    got = store.get_metadata(job_id, "pre_process", Staged)
    assert type(got) is Staged
    assert got == STAGED
    replaced = STAGED.model_copy(update={"total_bytes": 11, "note": "again"})
    store.set_metadata(job_id, "pre_process", replaced)
    assert store.get_metadata(job_id, "pre_process", Staged) == replaced
    store.set_metadata(job_id, "run", ContainerRun(image="algo:1", exit_code=0))
    assert store.list_metadata(job_id) == {
        "pre_process": replaced.model_dump(mode="json"),
        "run": {"image": "algo:1", "exit_code": 0},
    }


def test_metadata_read_with_a_wrong_model_names_job_key_and_models(store: JobStore) -> None:
    [job_id] = insert(store, NewJob("t", "p"))
    store.set_metadata(job_id, "pre_process", STAGED)
    stored_as = f"{__name__}.Staged"
    with pytest.raises(MetadataModelMismatch) as missing_fields:
        store.get_metadata(job_id, "pre_process", ContainerRun)
    message = str(missing_fields.value)
    assert f"'pre_process' of job {job_id}" in message
    assert f"stored as {stored_as}" in message
    assert f"as {__name__}.ContainerRun" in message
    assert "unknown fields ['files', 'note', 'staged_at', 'total_bytes']" in message
    # A model lacking stored fields would silently drop them: refused too.
    with pytest.raises(MetadataModelMismatch, match=r"unknown fields \['files', 'note', 'st"):
        store.get_metadata(job_id, "pre_process", StagedSummary)
    # A model needing more than was stored names the missing field.
    with pytest.raises(
        MetadataModelMismatch, match=r"as .*StagedChecked: checksum: Field required"
    ):
        store.get_metadata(job_id, "pre_process", StagedChecked)


def test_missing_metadata_names_job_and_key(store: JobStore) -> None:
    [job_id] = insert(store, NewJob("t", "p"))
    with pytest.raises(MetadataNotFound, match=f"job {job_id} has no metadata under key 'run'"):
        store.get_metadata(job_id, "run", ContainerRun)
    with pytest.raises(JobNotFound):
        store.set_metadata(999_999, "run", ContainerRun(image="x", exit_code=1))
    store.set_metadata(job_id, "run", ContainerRun(image="x", exit_code=1))
    assert store.delete_metadata(job_id, "run") is True
    assert store.delete_metadata(job_id, "run") is False
    with pytest.raises(MetadataNotFound):
        store.get_metadata(job_id, "run", ContainerRun)


def test_collect_metadata_only_touches_jobs_finished_before_the_cutoff(
    timed_store: JobStore, clock: FakeClock
) -> None:
    early, late, running = insert(
        timed_store, NewJob("t", "early"), NewJob("t", "late"), NewJob("t", "running")
    )
    advance(timed_store, [early, late, running], TO_DONE[:3])
    advance(timed_store, [early], TO_DONE[2:])
    clock.advance(3600)
    advance(timed_store, [late], TO_DONE[2:])
    for job_id in (early, late, running):
        timed_store.set_metadata(job_id, "pre_process", STAGED)
        timed_store.set_metadata(job_id, "run", ContainerRun(image="i", exit_code=0))
    cutoff = START + timedelta(minutes=30)
    assert timed_store.collect_metadata(finished_before=cutoff, keys=["run"]) == 1
    assert set(timed_store.list_metadata(early)) == {"pre_process"}
    assert timed_store.collect_metadata(finished_before=cutoff) == 1
    assert timed_store.list_metadata(early) == {}
    assert timed_store.collect_metadata(finished_before=clock.advance(60)) == 2
    assert timed_store.list_metadata(late) == {}
    assert set(timed_store.list_metadata(running)) == {"pre_process", "run"}


# --------------------------------------------------------------------------- queries


def test_get_job_records_the_access(timed_store: JobStore, clock: FakeClock) -> None:
    [job_id] = insert(timed_store, NewJob("t", "p"))
    clock.advance(90)
    assert timed_store.get_job(job_id, touch=False).last_accessed_at == START
    assert timed_store.get_job(job_id).last_accessed_at == START + timedelta(seconds=90)
    assert timed_store.get_job(job_id, touch=False).last_accessed_at == clock.now
    with pytest.raises(JobNotFound):
        timed_store.get_job(999_999)
    with pytest.raises(JobNotFound):
        timed_store.get_job(999_999, touch=False)


def test_list_jobs_filters(timed_store: JobStore, clock: FakeClock) -> None:
    first = insert(
        timed_store,
        NewJob("a", "p1", tile_id="T1", input_publication_date=START),
        NewJob("a", "p2", tile_id="T2", input_publication_date=START + timedelta(days=1)),
    )
    clock.advance(60)
    second = insert(
        timed_store,
        NewJob("b", "p1", tile_id="T1", input_publication_date=START + timedelta(days=2)),
        NewJob("b", "p3", tile_id="T1"),
    )
    advance(timed_store, [first[0], second[1]], ["initialized", "configured"])

    def ids(**filters: object) -> list[int]:
        return [job.id for job in timed_store.list_jobs(JobFilter(**filters)).jobs]  # type: ignore[arg-type]

    everything = [*first, *second]
    assert ids() == everything
    assert ids(statuses=(Status.CONFIGURED,)) == [first[0], second[1]]
    assert ids(statuses=(Status.CONFIGURED, Status.INITIALIZED)) == everything
    assert ids(job_type="b") == second
    assert ids(tile_id="T1") == [first[0], *second]
    assert ids(product_id="p1") == [first[0], second[0]]
    assert ids(created_after=START + timedelta(seconds=30)) == second
    assert ids(created_before=START + timedelta(seconds=30)) == first
    assert ids(input_date_from=START + timedelta(days=1)) == [first[1], second[0]]
    assert ids(input_date_until=START + timedelta(days=1)) == [first[0]]
    assert ids(job_type="b", tile_id="T1", statuses=(Status.INITIALIZED,)) == [second[0]]
    assert ids(job_type="c") == []


def test_list_jobs_walks_every_page_without_gaps_or_repeats(store: JobStore) -> None:
    job_ids = insert(store, *(NewJob("page", f"p{number:02d}") for number in range(25)))
    seen: list[int] = []
    pages = 0
    after: int | None = None
    while True:
        page = store.list_jobs(after=after, limit=7)
        pages += 1
        seen += [job.id for job in page.jobs]
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.jobs[-1].id
        after = page.next_cursor
    assert pages == 4
    assert seen == sorted(job_ids)
    assert store.list_jobs(limit=25).next_cursor is None
    with pytest.raises(ValueError, match="limit: must be between 1 and 10000, got 0"):
        store.list_jobs(limit=0)


def test_count_by_type_status(store: JobStore) -> None:
    a_jobs = insert(store, *(NewJob("a", f"p{number}") for number in range(3)))
    insert(store, NewJob("b", "p0"), NewJob("b", "p1", status=Status.CANCELLED))
    store.transition(a_jobs[0], "configured", expected_from="initialized")
    assert store.count_by_type_status() == {
        ("a", "initialized"): 2,
        ("a", "configured"): 1,
        ("b", "initialized"): 1,
        ("b", "cancelled"): 1,
    }
    assert store.count_by_type_status(JobFilter(job_type="b")) == {
        ("b", "initialized"): 1,
        ("b", "cancelled"): 1,
    }


def test_history_is_oldest_first_and_can_resume(store: JobStore) -> None:
    [job_id] = insert(store, NewJob("t", "p"))
    advance(store, [job_id], TO_DONE)
    changes = store.history(job_id)
    assert [change.to_status for change in changes] == TO_DONE
    assert [change.from_status for change in changes] == [None, *TO_DONE[:-1]]
    assert [change.id for change in changes] == sorted(change.id for change in changes)
    later = store.history(job_id, after=changes[6].id)
    assert [change.to_status for change in later] == TO_DONE[7:]
    assert store.history(job_id, after=changes[-1].id) == []
    with pytest.raises(JobNotFound):
        store.history(999_999)


def test_meta_values(timed_store: JobStore, clock: FakeClock) -> None:
    assert timed_store.get_meta("watermark") is None
    timed_store.set_meta("watermark", "2030-01-01")
    clock.advance(10)
    timed_store.set_meta("watermark", "2030-01-02")
    timed_store.set_meta("other", "x")
    assert timed_store.get_meta("watermark") == "2030-01-02"
    assert timed_store.get_meta("other") == "x"
