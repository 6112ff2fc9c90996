"""The launcher's admission on PostgreSQL, without Prefect: caps, escalation of waiting jobs,
back-processing last, two launchers at once, and the bookkeeping of launched jobs (flow run
recorded, adopted by its flow run, sent back when the run never reports back). The clock is the
store's, moved by the tests."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from db import launcher
from db.launcher import Limits, TypePolicy, admit_and_claim
from db.records import NewJob
from db.statuses import RUNNING, Status
from db.store import JobStore
from jobline.settings import Settings

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ESCALATION = ((600.0, 10.0), (3600.0, 20.0))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def timed_store(pg_settings: Settings, clock: Clock) -> Iterator[JobStore]:
    store = JobStore.from_settings(pg_settings, clock=clock)
    yield store
    store.engine.dispose()


_serial = iter(range(10**9))


def ready_jobs(
    store: JobStore,
    count: int,
    *,
    job_type: str = "a",
    priority: int = 0,
    published: datetime | None = None,
) -> list[int]:
    jobs = [
        NewJob(
            job_type,
            f"{job_type}-{next(_serial):07d}",
            priority=priority,
            input_publication_date=published,
        )
        for _ in range(count)
    ]
    ids = store.insert_jobs(jobs).inserted_ids
    store.transition_many(ids, "configured", expected_from="initialized")
    store.transition_many(ids, "ready", expected_from="configured")
    return ids


def launched_ids(store: JobStore, policies: dict[str, TypePolicy], limits: Limits) -> list[int]:
    return [job.job_id for job in admit_and_claim(store, policies, limits, "test").claimed]


def running_weight(store: JobStore, policies: dict[str, TypePolicy]) -> float:
    counts = store.count_by_type_status()
    return sum(
        n * policies[kind].weight for (kind, status), n in counts.items() if status in RUNNING
    )


def test_a_pass_launches_in_priority_order_up_to_the_caps(timed_store: JobStore) -> None:
    light = ready_jobs(timed_store, 10, job_type="light")
    heavy = ready_jobs(timed_store, 4, job_type="heavy", priority=5)
    policies = {
        "light": TypePolicy("light", weight=1.0, max_running_weight=3.0),
        "heavy": TypePolicy("heavy", weight=2.0, max_running_weight=4.0),
    }
    first = launched_ids(timed_store, policies, Limits(max_running_weight=7, max_launches=10))
    # heavy first (priority 5): 2 jobs reach its cap of 4; light fills 3 (its cap is 3).
    assert first == heavy[:2] + light[:3]
    assert running_weight(timed_store, policies) == 7
    assert launched_ids(timed_store, policies, Limits(7, 10)) == [], "the caps are full"


def test_the_launches_per_pass_are_capped(timed_store: JobStore) -> None:
    ids = ready_jobs(timed_store, 20)
    policies = {"a": TypePolicy("a")}
    assert launched_ids(timed_store, policies, Limits(100, 6)) == ids[:6]
    assert launched_ids(timed_store, policies, Limits(100, 6)) == ids[6:12]


def test_a_paused_job_type_or_queue_is_not_launched_until_resumed(timed_store: JobStore) -> None:
    paused_type = ready_jobs(timed_store, 2, job_type="held")
    running_type = ready_jobs(timed_store, 2, job_type="a")
    policies = {"a": TypePolicy("a"), "held": TypePolicy("held")}
    timed_store.pause("job_type", "held", reason="a test")
    timed_store.pause("queue", "default")
    assert launched_ids(timed_store, policies, Limits(100, 10)) == [], "the queue is paused"
    timed_store.resume("queue", "default")
    assert launched_ids(timed_store, policies, Limits(100, 10)) == running_type
    timed_store.resume("job_type", "held")
    assert launched_ids(timed_store, policies, Limits(100, 10)) == paused_type


def test_a_pass_creates_at_most_its_flow_runs_and_fills_the_batches_it_opened(
    timed_store: JobStore,
) -> None:
    batched = ready_jobs(timed_store, 25, job_type="batched", priority=5)
    single = ready_jobs(timed_store, 5, job_type="single")
    policies = {
        "batched": TypePolicy("batched", batch_size=10),
        "single": TypePolicy("single"),
    }
    limits = Limits(max_running_weight=1000, max_launches=1000, max_flow_runs=3)
    # batched first (priority 5): batches of 10, 10 and 5 are the three flow runs; a single
    # job would open a fourth.
    assert launched_ids(timed_store, policies, limits) == batched
    assert launched_ids(timed_store, policies, limits) == single[:3]
    assert launched_ids(timed_store, policies, limits) == single[3:]


def test_an_old_low_priority_job_is_launched_under_a_stream_of_new_urgent_ones(
    timed_store: JobStore, clock: Clock
) -> None:
    """Every 5 minutes 3 new priority-10 jobs arrive and a pass launches 2: without escalation
    the priority-0 job waits forever; with it, it is launched within the hour."""
    launched_at: dict[bool, datetime | None] = {}
    for job_type, escalation in (("starved", ()), ("fair", ESCALATION)):
        clock.now = T0
        policies = {job_type: TypePolicy(job_type)}
        old = ready_jobs(timed_store, 1, job_type=job_type, priority=0)[0]
        launched_at[bool(escalation)] = None
        for _ in range(13):  # one hour, a pass every 5 minutes
            ready_jobs(timed_store, 3, job_type=job_type, priority=10)
            if old in launched_ids(timed_store, policies, Limits(1000, 2, escalation)):
                launched_at[bool(escalation)] = clock.now
                break
            clock.advance(minutes=5)
    assert launched_at[False] is None, "without escalation the stream starves the old job"
    waited = launched_at[True]
    assert waited is not None and waited - T0 <= timedelta(hours=1)
    assert waited - T0 >= timedelta(minutes=10), "fresh priority-10 jobs go first at first"


def test_escalation_in_python_matches_the_steps() -> None:
    assert launcher.escalated(0, timedelta(minutes=5), ESCALATION) == 0
    assert launcher.escalated(0, timedelta(minutes=10), ESCALATION) == 10
    assert launcher.escalated(3, timedelta(hours=2), ESCALATION) == 23


def test_back_processing_goes_after_live_jobs(timed_store: JobStore, clock: Clock) -> None:
    old_products = ready_jobs(timed_store, 3, priority=50, published=clock.now - timedelta(days=30))
    live = ready_jobs(timed_store, 3, priority=0, published=clock.now - timedelta(hours=1))
    unknown_date = ready_jobs(timed_store, 1, priority=0)
    policies = {"a": TypePolicy("a", backprocessing_horizon=timedelta(days=2))}
    order = launched_ids(timed_store, policies, Limits(100, 100))
    assert order == live + unknown_date + old_products


def test_two_launchers_at_once_never_take_a_job_twice_nor_pass_the_cap(
    timed_store: JobStore,
) -> None:
    ready_jobs(timed_store, 200)
    policies = {"a": TypePolicy("a")}
    start = threading.Barrier(4)

    def launch_repeatedly() -> list[int]:
        start.wait(timeout=30)
        taken: list[int] = []
        # A pass that finds the other launcher's lock launches nothing: repeat until full.
        for _ in range(500):
            taken += launched_ids(timed_store, policies, Limits(50, 7))
            if running_weight(timed_store, policies) >= 50:
                break
        return taken

    with ThreadPoolExecutor(4) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(launch_repeatedly) for _ in "abcd"]]
    claims = Counter(job_id for taken in results for job_id in taken)
    assert claims and claims.most_common(1)[0][1] == 1, "a job was launched twice"
    assert sum(claims.values()) == 50, "the running-weight cap held across launchers"
    assert running_weight(timed_store, policies) == 50


def test_a_launched_job_is_recorded_adopted_by_its_flow_run_only_and_sent_back_when_lost(
    timed_store: JobStore, clock: Clock
) -> None:
    first, second, third = ready_jobs(timed_store, 3)
    claimed = admit_and_claim(timed_store, {"a": TypePolicy("a")}, Limits(10, 10), "L").claimed
    tokens = {job.job_id: job.lease_token for job in claimed}
    assert len(set(tokens.values())) == 3
    recorded = launcher.record_flow_runs(
        timed_store, {second: (tokens[second], "run-2"), first: (tokens[first], "run-1")}
    )
    assert recorded == [second, first], "in the order given"
    assert launcher.record_flow_runs(timed_store, {third: ("not-its-token", "run-3")}) == []
    job = timed_store.get_job(first)
    assert (job.status, job.flow_run_id, job.lease_expires_at) == ("queued", "run-1", None)
    assert timed_store.history(first)[-1].flow_run_id == "run-1"

    assert launcher.adopt(timed_store, first, "run-9", "w", 30) is None, "not its flow run"
    adopted = launcher.adopt(timed_store, first, "run-1", "w", 30)
    assert adopted is not None and adopted.lease_expires_at is not None
    assert launcher.adopt(timed_store, first, "run-1", "w", 30) is None, "taken once"

    waiting = {w.job_id: w.flow_run_id for w in launcher.launched_waiting(timed_store)}
    assert waiting == {second: "run-2", third: None}
    returned = launcher.return_lost_launches(
        timed_store, {second: ("run-2", "flow run run-2 ended Crashed without starting the job")}
    )
    assert returned == [second]
    job = timed_store.get_job(second)
    assert job.status == Status.READY and job.attempts == 1
    messages = [change.message for change in timed_store.history(second)]
    assert "flow run run-2 ended Crashed without starting the job" in messages
    # A job launched again under another flow run is not sent back for the old one.
    assert launcher.return_lost_launches(timed_store, {third: ("run-old", "lost")}) == []
