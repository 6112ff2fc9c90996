"""Maintenance on both backends, with a controllable clock: rescue of expired leases, live
heartbeats, lost leases, stuck jobs, backoff times, expiry, revival, metadata collection."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel
from sqlalchemy import select, update

from db import launcher, maintenance, outbox
from db.models import Job
from db.records import NewJob
from db.statuses import Status, is_legal
from db.store import JobStore
from jobline.exceptions import LeaseLost, TransitionError
from jobline.settings import Settings
from jobtypes.base import load_job_type
from tasks.heartbeat import LeaseKeeper
from tasks.maintenance import run_maintenance
from tasks.retry import backoff_seconds
from tasks.runners.base import RunRequest
from tasks.runners.local import LocalRunner
from tests.support.jobtypes import write_partner_module, write_products

S = Status
QUEUE = "maint"
START = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = 30.0


class Clock:
    """The store's clock, moved by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class Note(BaseModel):
    text: str = ""


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def timed_store(any_settings: Settings, clock: Clock) -> Iterator[JobStore]:
    store = JobStore.from_settings(any_settings, clock=clock)
    yield store
    store.engine.dispose()


def ready_jobs(
    store: JobStore, count: int, *, max_attempts: int = 3, prefix: str = "p"
) -> list[int]:
    jobs = [
        NewJob("tests:Maint", f"{prefix}{n}", queue=QUEUE, max_attempts=max_attempts)
        for n in range(count)
    ]
    job_ids = store.insert_jobs(jobs).inserted_ids
    store.transition_many(job_ids, S.CONFIGURED, expected_from=S.INITIALIZED)
    store.transition_many(job_ids, S.READY, expected_from=S.CONFIGURED)
    return job_ids


def run_to(store: JobStore, job_id: int, status: Status, worker: str = "w1") -> str:
    """Claim the (ready) job and walk it up to ``status``; returns its lease token."""
    (claimed,) = store.claim(QUEUE, 1, worker, lease_seconds=LEASE, job_ids=[job_id])
    token = claimed.lease_token or ""
    path = [S.STARTED, S.PRE_PROCESSING, S.PROCESSING, S.POST_PROCESSING]
    origin = S.QUEUED
    for target in path[: path.index(status) + 1] if status in path else []:
        store.transition(
            job_id,
            target,
            expected_from=origin,
            lease_token=token,
            count_attempt=target is S.STARTED,
        )
        origin = target
    return token


def statuses(store: JobStore, job_id: int) -> list[str]:
    return [change.to_status for change in store.history(job_id)]


def assert_legal_history(store: JobStore, job_id: int) -> None:
    previous: str | None = None
    for change in store.history(job_id):
        assert is_legal(previous, change.to_status), f"{previous} -> {change.to_status}"
        previous = change.to_status


# ---------------------------------------------------------------------------- lost workers


def test_expired_lease_is_rescued_to_ready_with_backoff(
    timed_store: JobStore, clock: Clock
) -> None:
    (job_id,) = ready_jobs(timed_store, 1)
    run_to(timed_store, job_id, S.PROCESSING, worker="host-a:42")
    assert maintenance.expired_leases(timed_store, clock.now) == []

    now = clock.advance(LEASE + 1)
    assert maintenance.expired_leases(timed_store, now) == [job_id]
    rescued = maintenance.rescue_lost(timed_store, now, backoff=lambda attempts: 40.0 * attempts)

    assert rescued == [job_id]
    job = timed_store.get_job(job_id, touch=False)
    assert job.status == "ready" and job.attempts == 1
    assert job.worker is None and job.lease_token is None
    assert job.retry_at == now + timedelta(seconds=40)
    assert job.last_error == "worker lost: host-a:42 stopped renewing the lease"
    history = timed_store.history(job_id)
    lost = history[-3]
    assert [c.to_status for c in history[-4:]] == [
        "processing", "internal_error", "error_checked", "ready",
    ]  # fmt: skip
    assert (lost.error_class, lost.error_subtype) == (maintenance.WORKER_LOST, "lease_expired")
    assert lost.worker == "host-a:42", "the history names the lost worker"
    assert history[-1].message == "retry 2 of 3 after 40.0 s"
    assert_legal_history(timed_store, job_id)

    assert timed_store.claim(QUEUE, 10, "w2") == [], "not claimed before its retry time"
    clock.advance(40)
    (again,) = timed_store.claim(QUEUE, 10, "w2")
    assert again.id == job_id


def test_rescue_cancels_a_job_whose_attempts_are_exhausted(
    timed_store: JobStore, clock: Clock
) -> None:
    (job_id,) = ready_jobs(timed_store, 1, max_attempts=1)
    run_to(timed_store, job_id, S.PRE_PROCESSING)

    maintenance.rescue_lost(timed_store, clock.advance(LEASE + 1))

    assert statuses(timed_store, job_id)[-3:] == ["internal_error", "error_checked", "cancelled"]
    assert timed_store.history(job_id)[-1].message == "attempts exhausted (1 of 1)"
    assert timed_store.get_job(job_id).status == "cancelled"


def test_a_claimed_job_whose_lease_expired_in_queued_is_rescued(
    timed_store: JobStore, clock: Clock
) -> None:
    (job_id,) = ready_jobs(timed_store, 1)
    run_to(timed_store, job_id, S.QUEUED)

    assert maintenance.rescue_lost(timed_store, clock.advance(LEASE + 1)) == [job_id]
    assert statuses(timed_store, job_id)[-4:] == [
        "queued",
        "internal_error",
        "error_checked",
        "ready",
    ]
    assert timed_store.get_job(job_id).attempts == 0, "no attempt was started"


def test_a_live_heartbeat_prevents_the_rescue(timed_store: JobStore, clock: Clock) -> None:
    (job_id,) = ready_jobs(timed_store, 1)
    token = run_to(timed_store, job_id, S.PROCESSING)
    for _ in range(5):  # two and a half lease lengths, renewed every 15 s
        clock.advance(LEASE / 2)
        timed_store.heartbeat(job_id, token, LEASE)
        assert maintenance.rescue_lost(timed_store, clock.now + timedelta(seconds=1)) == []
    assert timed_store.get_job(job_id).status == "processing"


def test_a_heartbeat_waiting_on_the_rescue_lock_wins_when_it_commits_first(
    timed_store: JobStore, clock: Clock
) -> None:
    """The rescue's WHERE is re-checked after the worker's renewal commits: no rescue."""
    (job_id,) = ready_jobs(timed_store, 1)
    token = run_to(timed_store, job_id, S.PROCESSING)
    now = clock.advance(LEASE + 1)  # expired: a rescue would take it
    holding, renewed = threading.Event(), threading.Event()
    result: list[list[int]] = []

    def renew_slowly() -> None:
        with timed_store.session() as session:  # takes the row (SQLite: the database) first
            session.execute(select(Job.id).where(Job.id == job_id).with_for_update()).all()
            holding.set()
            time.sleep(0.5)  # the rescue is now waiting for this transaction
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_token == token)
                .values(lease_expires_at=now + timedelta(seconds=LEASE))
            )
        renewed.set()

    worker = threading.Thread(target=renew_slowly)
    worker.start()
    assert holding.wait(10)
    result.append(maintenance.rescue_lost(timed_store, now))
    worker.join(10)

    assert renewed.is_set()
    assert result == [[]]
    assert timed_store.get_job(job_id).status == "processing"


def test_a_worker_that_lost_its_lease_cannot_write(timed_store: JobStore, clock: Clock) -> None:
    (job_id,) = ready_jobs(timed_store, 1)
    old = run_to(timed_store, job_id, S.PROCESSING, worker="stalled")
    maintenance.rescue_lost(timed_store, clock.advance(LEASE + 1))
    new = run_to(timed_store, job_id, S.PROCESSING, worker="fresh")  # the second attempt
    before = statuses(timed_store, job_id)

    with pytest.raises(LeaseLost):
        timed_store.heartbeat(job_id, old, LEASE)
    with pytest.raises(LeaseLost):
        timed_store.transition(
            job_id, S.POST_PROCESSING, expected_from=S.PROCESSING, lease_token=old
        )
    with pytest.raises(LeaseLost):
        timed_store.set_metadata(job_id, "run-container", Note(text="stale"), lease_token=old)
    with pytest.raises(TransitionError):
        timed_store.transition(
            job_id, S.INTERNAL_ERROR, expected_from=S.PROCESSING, lease_token=old
        )

    assert statuses(timed_store, job_id) == before
    job = timed_store.get_job(job_id)
    assert (job.worker, job.lease_token, job.attempts) == ("fresh", new, 2)
    assert "run-container" not in timed_store.list_metadata(job_id)
    timed_store.set_metadata(job_id, "run-container", Note(text="fresh"), lease_token=new)


def test_the_lease_keeper_extends_leases_and_flags_a_lost_one(
    timed_store: JobStore, clock: Clock
) -> None:
    kept, lost = ready_jobs(timed_store, 2)
    kept_token = run_to(timed_store, kept, S.PROCESSING)
    lost_token = run_to(timed_store, lost, S.PROCESSING)
    keeper = LeaseKeeper(timed_store, LEASE, interval=3600)  # beats only when told
    kept_lease = keeper.hold(kept, kept_token)
    lost_lease = keeper.hold(lost, lost_token)
    timed_store.heartbeat(lost, lost_token, 1)  # this worker stalls: its lease runs out first
    clock.advance(10)
    maintenance.rescue_lost(timed_store, clock.now)

    keeper.beat()

    assert timed_store.get_job(kept).lease_expires_at == clock.now + timedelta(seconds=LEASE)
    assert not kept_lease.lost.is_set()
    assert lost_lease.lost.is_set(), "the keeper tells the worker its job was taken"
    assert [lease.job_id for lease in keeper.held()] == [kept]
    keeper.close()


def test_a_runner_stops_the_processing_when_the_lease_is_lost(tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()

    result = LocalRunner().run(
        RunRequest(
            job_id=1,
            job_key="00",
            attempt=1,
            image="",
            command=["sh", "-c", "echo begun; sleep 30"],
            work_dir=tmp_path,
            cancel=cancel,
        )
    )

    assert time.monotonic() - started < 10
    assert not result.succeeded
    assert result.log_tail[-1] == "stopped: the worker lost the job's lease"


# ------------------------------------------------------------------------------ stuck jobs


def stuck_limits(seconds: float) -> dict[Status, timedelta]:
    return {status: timedelta(seconds=seconds) for status in maintenance.STORE_STUCK_STATUSES}


def test_stuck_jobs_are_moved_on_by_status(timed_store: JobStore, clock: Clock) -> None:
    unleased, leased, publishing, failed, checked = ready_jobs(timed_store, 5)
    (waiting,) = timed_store.insert_jobs([NewJob("tests:Maint", "waits", queue=QUEUE)]).inserted_ids
    timed_store.transition(waiting, S.CONFIGURED, expected_from=S.INITIALIZED)  # for a dependency
    run_to(timed_store, unleased, S.QUEUED)
    with timed_store.session() as session:  # queued by something that holds no lease
        session.execute(update(Job).where(Job.id == unleased).values(lease_expires_at=None))
    run_to(timed_store, leased, S.QUEUED)
    token = run_to(timed_store, publishing, S.POST_PROCESSING)
    timed_store.transition(
        publishing, S.PROCESSED, expected_from=S.POST_PROCESSING, lease_token=token
    )
    outbox.start_publication(timed_store, publishing, [("product", {"id": "product"})])
    timed_store.transition(failed, S.EXTERNAL_ERROR, expected_from=S.READY)
    timed_store.transition(checked, S.INTERNAL_ERROR, expected_from=S.READY)
    timed_store.transition(checked, S.ERROR_CHECKED, expected_from=S.INTERNAL_ERROR)

    clock.advance(20)
    assert maintenance.rescue_stuck(timed_store, clock.now, stuck_limits(60)) == {
        status.value: [] for status in maintenance.STORE_STUCK_STATUSES
    }, "nothing is stuck before its limit"
    timed_store.heartbeat(leased, timed_store.get_job(leased).lease_token or "", 3600)
    now = clock.advance(60)
    found = maintenance.rescue_stuck(timed_store, now, stuck_limits(60))

    assert found == {
        "configured": [waiting],
        "queued": [unleased],
        "start_publication": [publishing],
        "external_error": [failed],
        "error_checked": [checked],
    }
    assert statuses(timed_store, waiting)[-1] == "internal_error"
    assert timed_store.history(waiting)[-1].error_subtype == "configured"
    assert statuses(timed_store, unleased)[-3:] == ["internal_error", "error_checked", "ready"]
    assert timed_store.get_job(leased).status == "queued", "a live lease protects a queued job"
    assert statuses(timed_store, publishing)[-3:] == ["external_error", "error_checked", "ready"]
    assert outbox.publications_of(timed_store, publishing) == [], "pending messages withdrawn"
    assert statuses(timed_store, failed)[-2:] == ["error_checked", "ready"]
    assert statuses(timed_store, checked)[-1] == "ready"
    for job_id in (waiting, unleased, leased, publishing, failed, checked):
        assert_legal_history(timed_store, job_id)


def test_a_publication_being_sent_is_not_withdrawn(timed_store: JobStore, clock: Clock) -> None:
    (job_id,) = ready_jobs(timed_store, 1)
    token = run_to(timed_store, job_id, S.POST_PROCESSING)
    timed_store.transition(job_id, S.PROCESSED, expected_from=S.POST_PROCESSING, lease_token=token)
    outbox.start_publication(timed_store, job_id, [("product", {"id": "product"})])
    now = clock.advance(3600)
    outbox.pending(timed_store, 10)  # a sender claims the message now

    limits = {S.START_PUBLICATION: timedelta(seconds=60)}
    assert maintenance.rescue_stuck(timed_store, now, limits) == {"start_publication": []}
    assert timed_store.get_job(job_id).status == "start_publication"


# ------------------------------------------------------------------------------ backoff


def test_backoff_times_grow_exponentially_with_jitter(timed_store: JobStore, clock: Clock) -> None:
    settings = Settings(retry_base_seconds=10, retry_max_seconds=25)
    job_ids = ready_jobs(timed_store, 12, max_attempts=5)
    for job_id in job_ids:
        run_to(timed_store, job_id, S.PROCESSING)
    now = clock.advance(LEASE + 1)
    maintenance.rescue_lost(
        timed_store, now, backoff=lambda attempts: backoff_seconds(attempts, settings)
    )
    first = [(timed_store.get_job(i).retry_at - now).total_seconds() for i in job_ids]
    assert all(5 <= delay <= 10 for delay in first), first
    assert len(set(first)) > 1, "jitter spreads jobs that failed together"

    clock.advance(10)
    for job_id in job_ids:
        run_to(timed_store, job_id, S.PROCESSING)
    now = clock.advance(LEASE + 1)
    maintenance.rescue_lost(
        timed_store, now, backoff=lambda attempts: backoff_seconds(attempts, settings)
    )
    second = [(timed_store.get_job(i).retry_at - now).total_seconds() for i in job_ids]
    assert all(10 <= delay <= 20 for delay in second), second
    assert [timed_store.get_job(i).attempts for i in job_ids] == [2] * 12

    assert 12.5 <= backoff_seconds(3, settings) <= 25, "capped at retry_max_seconds"


# ----------------------------------------------------------------------- expiry, revival


def done_job(store: JobStore, product: str, job_type: str = "tests:Maint") -> int:
    (job_id,) = store.insert_jobs([NewJob(job_type, product, queue=QUEUE)]).inserted_ids
    store.transition(job_id, S.CONFIGURED, expected_from=S.INITIALIZED)
    store.transition(job_id, S.READY, expected_from=S.CONFIGURED)
    token = run_to(store, job_id, S.POST_PROCESSING)
    store.transition(job_id, S.PROCESSED, expected_from=S.POST_PROCESSING, lease_token=token)
    store.transition(job_id, S.DONE, expected_from=S.PROCESSED)
    return job_id


def test_done_jobs_expire_after_their_retention_unless_accessed(
    timed_store: JobStore, clock: Clock
) -> None:
    old, read, kept = done_job(timed_store, "old"), done_job(timed_store, "read"), 0
    kept = done_job(timed_store, "forever", job_type="tests:Forever")
    retention = {"tests:Maint": timedelta(days=30), "tests:Forever": None}

    clock.advance(29 * 86400)
    timed_store.get_job(read)  # a user looks at it: its retention starts over
    assert maintenance.expire_done(timed_store, clock.now, retention.get) == []
    now = clock.advance(2 * 86400)
    expired = maintenance.expire_done(timed_store, now, retention.get)

    assert [job.job_id for job in expired] == [old]
    assert statuses(timed_store, old)[-2:] == ["done", "expired"]
    assert timed_store.get_job(read).status == "done"
    assert timed_store.get_job(kept).status == "done", "retention None keeps done jobs"
    assert timed_store.get_job(old).finished_at is not None


def test_a_request_for_an_expired_jobs_key_runs_it_again(
    timed_store: JobStore, clock: Clock
) -> None:
    job_id = done_job(timed_store, "again")
    clock.advance(31 * 86400)
    maintenance.expire_done(timed_store, clock.now, lambda _type: timedelta(days=30))

    result = timed_store.insert_jobs(
        [NewJob("tests:Maint", "again", queue=QUEUE), NewJob("tests:Maint", "fresh", queue=QUEUE)]
    )

    assert result.skipped == []
    assert len(result.inserted_ids) == 2
    assert job_id in result.inserted_ids, "the expired job itself is initialized again"
    job = timed_store.get_job(job_id)
    assert (job.status, job.attempts, job.output_files, job.finished_at) == (
        "initialized", 0, [], None,
    )  # fmt: skip
    assert statuses(timed_store, job_id)[-2:] == ["expired", "initialized"]
    assert_legal_history(timed_store, job_id)
    assert timed_store.insert_jobs([NewJob("tests:Maint", "again", queue=QUEUE)]).skipped == [
        "again"
    ], "a job that is not expired is still skipped"


# ---------------------------------------------------------------------- metadata collection


def test_metadata_is_collected_per_key_policy(timed_store: JobStore, clock: Clock) -> None:
    finished, running = done_job(timed_store, "f"), ready_jobs(timed_store, 1, prefix="r")[0]
    for job_id in (finished, running):
        for key in ("configure", "run-container", "publish"):
            timed_store.set_metadata(job_id, key, Note(text=key))
    policy = {"*": timedelta(days=7), "configure": timedelta(days=1), "run-container": None}

    clock.advance(2 * 86400)
    assert maintenance.collect_metadata(timed_store, clock.now, policy) == 1
    assert set(timed_store.list_metadata(finished)) == {"run-container", "publish"}
    clock.advance(6 * 86400)
    assert maintenance.collect_metadata(timed_store, clock.now, policy) == 1

    assert set(timed_store.list_metadata(finished)) == {"run-container"}, "null keeps it"
    assert len(timed_store.list_metadata(running)) == 3, "an unfinished job keeps its metadata"


# ------------------------------------------------------------------- the maintenance pass


@pytest.fixture
def partner(tmp_path: Path) -> tuple[str, Path, Path]:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    path = write_partner_module(tmp_path / "src", inputs, outputs)
    return path, inputs, outputs


def test_a_pass_configures_publishes_expires_and_deletes_outputs(
    any_settings: Settings,
    timed_store: JobStore,
    clock: Clock,
    partner: tuple[str, Path, Path],
    tmp_path: Path,
) -> None:
    from tasks import steps

    job_type_path, inputs, _ = partner
    settings = any_settings.model_copy(
        update={
            "expire_deletes_outputs": True,
            "remove_orphan_containers": False,
            "publication_sink": f"file://{tmp_path / 'messages.jsonl'}",
        }
    )
    ctx = steps.StepContext(settings=settings, store=timed_store)
    kind = load_job_type(job_type_path, settings)

    def discover(product: str) -> int:
        write_products(inputs, [product])
        today = datetime.now(UTC)  # the product's files were written just now
        discovery = steps.discover_inputs(ctx, kind, today - timedelta(1), today + timedelta(1))
        return steps.insert_jobs(ctx, kind, discovery).inserted[0]

    published = discover("ok-1")
    steps.configure_jobs(ctx, kind, [published])
    (claimed,) = steps.claim_jobs(ctx, kind, 1)
    outcome = steps.post_process(
        ctx,
        kind,
        steps.run_container(ctx, kind, steps.pre_process(ctx, kind, claimed), LocalRunner()),
    )
    assert outcome.ok  # ... and the worker died before publishing
    forgotten = discover("ok-2")  # ... and this flow run died before configuring

    report = run_maintenance(settings, timed_store, clock.advance(3600))

    assert report.errors == []
    assert report.stuck == {"initialized": [forgotten], "processed": [published]}
    assert timed_store.get_job(forgotten).status == "ready"
    assert timed_store.get_job(published).status == "done"
    assert len((tmp_path / "messages.jsonl").read_text().splitlines()) == 1
    output = Path((timed_store.get_job(published).output_path or "").removeprefix("file://"))
    assert output.is_dir()

    later = clock.advance(kind.retention.total_seconds() + 60)  # nobody read it meanwhile
    report = run_maintenance(settings, timed_store, later)

    assert report.expired == [published]
    assert report.outputs_deleted == 1
    assert not output.exists()
    assert timed_store.get_job(published).status == "expired"


def test_jobline_maintenance_rescues_and_reports_as_json(
    pg_settings: Settings, jobline_env: Callable[[Settings], Settings]
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    settings = jobline_env(pg_settings.model_copy(update={"remove_orphan_containers": False}))
    store = JobStore.from_settings(settings)
    (job_id,) = ready_jobs(store, 1)
    store.claim(QUEUE, 1, "gone", lease_seconds=0.001)
    time.sleep(0.05)

    result = CliRunner().invoke(app, ["maintenance", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["rescued"] == [job_id] and report["errors"] == []
    assert store.get_job(job_id).status == "ready"


def test_jobline_maintenance_checks_launches_only_against_a_prefect_server(
    pg_settings: Settings,
    jobline_env: Callable[[Settings], Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without PREFECT_API_URL every launched job would look deleted: the check refuses, the
    rest of the pass runs, and the queued job stays queued."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from cli.main import app

    settings = jobline_env(pg_settings.model_copy(update={"remove_orphan_containers": False}))
    store = JobStore.from_settings(settings)
    (job_id,) = ready_jobs(store, 1)
    (claimed,) = launcher.admit_and_claim(
        store, {"tests:Maint": launcher.TypePolicy("tests:Maint")}, launcher.Limits(10, 10), "L"
    ).claimed
    launcher.record_flow_runs(store, {job_id: (claimed.lease_token, str(uuid.uuid4()))})
    monkeypatch.delenv("PREFECT_API_URL", raising=False)

    with temporary_settings(updates={PREFECT_API_URL: None}):
        result = CliRunner().invoke(app, ["maintenance", "--launches", "--json"])

    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert "needs PREFECT_API_URL" in report["errors"][0]
    assert "launches" not in report
    assert store.get_job(job_id).status == "queued"
