"""Operations on real stores: lateness with a controllable clock, statistics kept by the
database's triggers (histogram percentiles against a direct computation), notes, pauses and
bulk actions."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from db.overview import production_overview
from db.records import JobFilter, NewJob
from db.stats import bucket_of
from db.statuses import HAPPY_PATH, Status
from db.store import JobStore
from jobline.settings import Settings

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def timed_store(any_settings: Settings, clock: Clock) -> Iterator[JobStore]:
    store = JobStore.from_settings(any_settings, clock=clock)
    yield store
    store.engine.dispose()


def _finish(store: JobStore, ids: list[int], path: tuple[Status, ...] = HAPPY_PATH) -> None:
    """Move jobs along ``path`` (from its second status) in batches."""
    for origin, target in itertools.pairwise(path):
        moved = store.transition_many(ids, target, expected_from=origin)
        assert not moved.unchanged


def test_a_job_is_late_once_its_target_passes_and_not_once_done(
    timed_store: JobStore, clock: Clock
) -> None:
    due = START + timedelta(hours=2)
    result = timed_store.insert_jobs(
        [NewJob("ops", f"P{i}", input_publication_date=START, due_at=due) for i in range(3)]
        + [NewJob("ops", "no-target")]
    )
    ids = result.inserted_ids
    late = JobFilter(late_at=clock.now)
    assert timed_store.list_jobs(JobFilter(late_at=clock.now)).jobs == []
    assert timed_store.late_counts() == {}

    clock.now = due + timedelta(seconds=1)
    late = JobFilter(late_at=clock.now)
    assert [job.id for job in timed_store.list_jobs(late).jobs] == ids[:3]
    assert timed_store.late_counts() == {"ops": 3}
    assert timed_store.get_job(ids[0]).is_late(clock.now)
    assert not timed_store.get_job(ids[3]).is_late(clock.now)  # no target: never late

    _finish(timed_store, ids[:1])
    timed_store.cancel(ids[1])
    assert [job.id for job in timed_store.list_jobs(late).jobs] == [ids[2]]
    assert timed_store.late_counts() == {"ops": 1}
    done = timed_store.get_job(ids[0])
    assert not done.is_late(clock.now)
    assert done.latency == clock.now - START  # recorded: input publication to the end
    figures = timed_store.finished_since(START)["ops"]
    assert (figures.done, figures.done_late, figures.cancelled) == (1, 1, 1)


def _exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_histogram_percentiles_match_a_direct_computation(
    timed_store: JobStore, clock: Clock
) -> None:
    chance = random.Random(16)
    ages = [chance.lognormvariate(math.log(600), 1.0) for _ in range(300)]
    jobs = [
        NewJob("ops", f"P{i}", input_publication_date=START - timedelta(seconds=age))
        for i, age in enumerate(ages)
    ]
    ids = timed_store.insert_jobs(jobs).inserted_ids
    failed = ids[:7]
    _finish(timed_store, failed, (Status.INITIALIZED, Status.INTERNAL_ERROR))
    _finish(timed_store, ids[7:])
    done = timed_store.get_jobs(ids[7:])
    latencies = [job.latency.total_seconds() for job in done if job.latency is not None]
    assert len(latencies) == 293

    figures = timed_store.finished_since(START - timedelta(hours=1))["ops"]
    assert (figures.done, figures.failed) == (293, 7)
    latency = figures.latency
    assert latency.count == 293
    assert latency.maximum == pytest.approx(max(latencies), abs=1e-3)
    assert latency.minimum == pytest.approx(min(latencies), abs=1e-3)
    assert latency.mean == pytest.approx(sum(latencies) / 293, rel=1e-6)
    for q in (0.5, 0.95):
        estimate = latency.percentile(q)
        exact = _exact_percentile(latencies, q)
        assert estimate is not None
        assert abs(bucket_of(estimate) - bucket_of(exact)) <= 1, (q, estimate, exact)


def test_a_note_shows_in_the_history_and_changes_no_status(timed_store: JobStore) -> None:
    [job_id] = timed_store.insert_jobs([NewJob("ops", "P1")]).inserted_ids
    timed_store.add_note(job_id, "input looks corrupt, asked the provider", author="ops-anna")
    history = timed_store.history(job_id)
    assert [(c.kind, c.to_status) for c in history] == [
        ("status", "initialized"),
        ("note", "initialized"),
    ]
    assert history[-1].message == "input looks corrupt, asked the provider"
    assert timed_store.get_job(job_id).status == "initialized"
    with pytest.raises(ValueError, match="note"):
        timed_store.add_note(job_id, "  ")


def test_a_paused_job_type_or_queue_is_not_claimed(timed_store: JobStore) -> None:
    ids = timed_store.insert_jobs(
        [NewJob("ops", "P1", queue="q1"), NewJob("other", "P2", queue="q1")]
    ).inserted_ids
    _finish(timed_store, ids, HAPPY_PATH[:3])
    timed_store.pause("job_type", "ops", reason="bad calibration")
    assert [j.id for j in timed_store.claim("q1", 10, "w")] == [ids[1]]
    timed_store.pause("queue", "q1")
    timed_store.resume("job_type", "ops")
    assert timed_store.claim("q1", 10, "w") == []
    assert [(p.kind, p.name) for p in timed_store.pauses()] == [("queue", "q1")]
    assert timed_store.resume("queue", "q1")
    assert not timed_store.resume("queue", "q1")
    assert [j.id for j in timed_store.claim("q1", 10, "w")] == [ids[0]]


def test_bulk_retry_and_cancel_over_a_filter(timed_store: JobStore) -> None:
    ids = timed_store.insert_jobs([NewJob("ops", f"P{i}") for i in range(5)]).inserted_ids
    _finish(timed_store, ids[:3], (Status.INITIALIZED, Status.INTERNAL_ERROR))
    failed = JobFilter(job_type="ops", statuses=(Status.INTERNAL_ERROR,))
    assert timed_store.count_retryable(failed) == 3
    assert timed_store.count_retryable(JobFilter(job_type="nothing")) == 0
    assert timed_store.retry_many(failed) == 3
    assert {j.status for j in timed_store.get_jobs(ids[:3])} == {"ready"}
    assert timed_store.count_cancellable(JobFilter(job_type="ops")) == 5
    assert timed_store.cancel_many(JobFilter(statuses=(Status.INITIALIZED,))) == 2
    assert [j.status for j in timed_store.get_jobs(ids)] == ["ready"] * 3 + ["cancelled"] * 2


def test_stuck_jobs_are_counted_with_their_reason_once_their_limit_passes(
    timed_store: JobStore, clock: Clock
) -> None:
    ids = timed_store.insert_jobs([NewJob("ops", f"P{i}") for i in range(3)]).inserted_ids
    _finish(timed_store, ids[:2], HAPPY_PATH[:3])  # two ready jobs, one initialized
    assert timed_store.late_and_stuck() == ({}, [])
    clock.now = START + timedelta(minutes=30)
    [initialized] = timed_store.late_and_stuck()[1]  # its limit is 15 minutes
    assert (initialized.status, initialized.jobs) == ("initialized", 1)
    clock.now = START + timedelta(hours=1, seconds=1)
    groups = {g.status: g for g in timed_store.late_and_stuck()[1]}
    assert groups["ready"].jobs == 2
    assert groups["ready"].oldest_change == START
    assert "paused" in groups["ready"].reason
    overview = production_overview(timed_store, {"ops": timedelta(hours=2)})
    [ops] = overview.job_types
    assert [(s.status.value, s.jobs) for s in ops.stuck] == [("initialized", 1), ("ready", 2)]
    assert ops.by_phase == {"queued": 3}
    assert ops.timeliness_24h.target_seconds == 7200
