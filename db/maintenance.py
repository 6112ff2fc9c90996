"""Maintenance's store operations (no Prefect): rescue the jobs of lost workers and stuck jobs,
expire old done jobs, collect finished jobs' metadata.

Every move is a set-based conditional UPDATE whose WHERE states the expected status AND what makes
the job rescuable (an expired lease, a status older than its limit). A worker extending its lease
at the same moment therefore either wins or loses, never both: on PostgreSQL the second writer
waits for the first, re-reads the row it committed and re-checks its own WHERE (a heartbeat finds
the job gone: :class:`~jobline.exceptions.LeaseLost`; a rescue finds the lease renewed: nothing to
do); SQLite serialises writers. A rescue and its retry decision are one transaction, so no job is
left half-rescued in a terminal ``internal_error``.

The tasks layer (:mod:`tasks.maintenance`) adds what needs job types or sinks: configuring jobs
stuck in ``initialized``, finishing publications, deleting expired outputs, orphaned containers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, exists, func, literal, or_, select, update
from sqlalchemy.orm import Session

from db.models import Job, JobMetadata, Publication, UtcDateTime
from db.outbox import PENDING
from db.records import RunIds
from db.statuses import LEASED, Status
from db.store import JobStore

S = Status
#: ``error_class`` of a job whose worker stopped renewing its lease (history and job record).
WORKER_LOST = "WorkerLost"
#: ``error_class`` of a job that sat in a status longer than its limit; the subtype names it.
STUCK = "StuckJob"
#: ``error_class`` of a job whose publication messages were not confirmed within the limit.
PUBLICATION_NOT_CONFIRMED = "PublicationNotConfirmed"
#: Statuses in which a worker holds the job's lease (claimed, then started..post_processing).
HELD: tuple[Status, ...] = (S.QUEUED, *sorted(LEASED, key=lambda status: status.id))
#: The stuck statuses this module handles; ``initialized`` and ``processed`` need job types.
STORE_STUCK_STATUSES = (
    S.CONFIGURED,
    S.QUEUED,
    S.START_PUBLICATION,
    S.EXTERNAL_ERROR,
    S.ERROR_CHECKED,
)

#: Seconds to wait before the next attempt, given the attempts made (the retry policy).
Backoff = Callable[[int], float]
#: The retention of a job type's done jobs (by import path); None keeps them forever.
RetentionFor = Callable[[str], timedelta | None]


def no_backoff(attempts: int) -> float:
    """Retry at once."""
    return 0.0


@dataclass(frozen=True, slots=True)
class ExpiredJob:
    """A job moved ``done -> expired``, and where its outputs are."""

    job_id: int
    output_path: str | None


# ------------------------------------------------------------------------------ lost workers


def expired_leases(store: JobStore, now: datetime) -> list[int]:
    """Jobs held by a worker (``queued`` to ``post_processing``) whose lease expired before
    ``now``, in id order."""
    table = Job.__table__.c
    with store.session() as session:
        return list(
            session.scalars(
                select(table.id)
                .where(table.status.in_([s.value for s in HELD]), table.lease_expires_at < now)
                .order_by(table.id)
            )
        )


def rescue_lost(
    store: JobStore, now: datetime, *, backoff: Backoff = no_backoff, run: RunIds | None = None
) -> list[int]:
    """Jobs whose worker stopped renewing its lease before ``now``: ``internal_error`` ("worker
    lost", error class :data:`WORKER_LOST`, the lost worker named in the history row), then the
    retry policy: ``error_checked -> ready`` (after ``backoff``) or ``cancelled`` when attempts
    are exhausted. Returns the rescued job ids."""
    table = Job.__table__.c
    message = (
        literal("worker lost: ")
        + func.coalesce(table.worker, literal("an unknown worker"))
        + literal(" stopped renewing the lease")
    )
    with store.session() as session:
        lost = _move_to_error(
            session,
            store,
            HELD,
            S.INTERNAL_ERROR,
            [table.lease_expires_at < now],
            message=message,
            error_class=WORKER_LOST,
            error_subtype="lease_expired",
            run=run,
        )
        _retry_policy(session, store, lost, backoff, run)
    return lost


# ------------------------------------------------------------------------------ stuck jobs


def rescue_stuck(
    store: JobStore,
    now: datetime,
    limits: Mapping[Status | str, timedelta],
    *,
    backoff: Backoff = no_backoff,
    run: RunIds | None = None,
) -> dict[str, list[int]]:
    """Jobs longer than ``limits[status]`` in one of :data:`STORE_STUCK_STATUSES`, by status:

    * ``configured`` (waiting for a dependency that never came): ``internal_error``, final; an
      operator may retry it.
    * ``queued`` with no live lease (never started): ``internal_error``, then the retry policy.
    * ``start_publication`` (messages still not confirmed) with no message being sent right now:
      its pending messages are withdrawn and it goes ``external_error``, then the retry policy
      (the next attempt queues them again with the same message ids).
    * ``external_error`` / ``error_checked`` (the retry policy did not finish): the retry policy.

    Statuses without a limit are left alone; other statuses in ``limits`` are ignored here.
    """
    found: dict[str, list[int]] = {}
    for raw_status, limit in limits.items():
        status = Status(raw_status)
        if status not in STORE_STUCK_STATUSES:
            continue
        cutoff = now - limit
        with store.session() as session:
            found[status.value] = _RESCUERS[status](
                session, store, now, cutoff, limit, backoff, run
            )
    return found


def _stuck_configured(
    session: Session,
    store: JobStore,
    now: datetime,
    cutoff: datetime,
    limit: timedelta,
    backoff: Backoff,
    run: RunIds | None,
) -> list[int]:
    return _move_to_error(
        session,
        store,
        (S.CONFIGURED,),
        S.INTERNAL_ERROR,
        [Job.__table__.c.status_changed_at < cutoff],
        message=f"stuck: waited more than {limit} in configured for its dependency",
        error_class=STUCK,
        error_subtype=S.CONFIGURED.value,
        run=run,
    )


def _stuck_queued(
    session: Session,
    store: JobStore,
    now: datetime,
    cutoff: datetime,
    limit: timedelta,
    backoff: Backoff,
    run: RunIds | None,
) -> list[int]:
    table = Job.__table__.c
    stuck = _move_to_error(
        session,
        store,
        (S.QUEUED,),
        S.INTERNAL_ERROR,
        [
            table.status_changed_at < cutoff,
            # A live lease means a worker holds it and will start it: leave it to that worker.
            or_(table.lease_expires_at.is_(None), table.lease_expires_at < now),
        ],
        message=f"stuck: queued for more than {limit} without being started",
        error_class=STUCK,
        error_subtype=S.QUEUED.value,
        run=run,
    )
    _retry_policy(session, store, stuck, backoff, run)
    return stuck


def _stuck_publication(
    session: Session,
    store: JobStore,
    now: datetime,
    cutoff: datetime,
    limit: timedelta,
    backoff: Backoff,
    run: RunIds | None,
) -> list[int]:
    table, outbox = Job.__table__.c, Publication.__table__.c
    being_sent = exists().where(
        outbox.job_id == table.id, outbox.status == PENDING, outbox.lease_expires_at > now
    )
    stuck = _move_to_error(
        session,
        store,
        (S.START_PUBLICATION,),
        S.EXTERNAL_ERROR,
        [table.status_changed_at < cutoff, ~being_sent],
        message=f"publication not confirmed within {limit}; pending messages withdrawn",
        error_class=PUBLICATION_NOT_CONFIRMED,
        error_subtype="publication",
        run=run,
    )
    if stuck:
        # A cancelled job must publish nothing; a retried one queues its messages again.
        session.execute(
            delete(Publication).where(outbox.job_id.in_(stuck), outbox.status == PENDING)
        )
    _retry_policy(session, store, stuck, backoff, run)
    return stuck


def _stuck_in_retry(
    session: Session,
    store: JobStore,
    now: datetime,
    cutoff: datetime,
    limit: timedelta,
    backoff: Backoff,
    run: RunIds | None,
    *,
    status: Status,
) -> list[int]:
    table = Job.__table__.c
    stuck = list(
        session.scalars(
            select(table.id)
            .where(table.status == status.value, table.status_changed_at < cutoff)
            .order_by(table.id)
            .with_for_update(skip_locked=True)
        )
    )
    _retry_policy(session, store, stuck, backoff, run)
    return stuck


_RESCUERS: dict[Status, Callable[..., list[int]]] = {
    S.CONFIGURED: _stuck_configured,
    S.QUEUED: _stuck_queued,
    S.START_PUBLICATION: _stuck_publication,
    S.EXTERNAL_ERROR: lambda *a: _stuck_in_retry(*a, status=S.EXTERNAL_ERROR),
    S.ERROR_CHECKED: lambda *a: _stuck_in_retry(*a, status=S.ERROR_CHECKED),
}


def stuck_jobs(
    store: JobStore, status: Status | str, before: datetime, limit: int = 500
) -> list[Job]:
    """Jobs in ``status`` since before ``before``, oldest change first (at most ``limit``)."""
    table = Job.__table__.c
    with store.session() as session:
        return list(
            session.scalars(
                select(Job)
                .where(table.status == Status(status).value, table.status_changed_at < before)
                .order_by(table.status_changed_at, table.id)
                .limit(limit)
            )
        )


def leased_job_ids(store: JobStore, job_ids: Iterable[int]) -> set[int]:
    """Those of ``job_ids`` whose job is in progress under a lease (``started`` to
    ``post_processing``): the only jobs that may own a running container."""
    ids = list(job_ids)
    if not ids:
        return set()
    table = Job.__table__.c
    with store.session() as session:
        return set(
            session.scalars(
                select(table.id).where(
                    table.id.in_(ids), table.status.in_([s.value for s in LEASED])
                )
            )
        )


# ------------------------------------------------------------------------ expiry, collection


def expire_done(
    store: JobStore, now: datetime, retention_for: RetentionFor, *, run: RunIds | None = None
) -> list[ExpiredJob]:
    """Done jobs neither accessed nor finished within their job type's retention: ``expired``.
    One UPDATE per job type; returns each expired job with its output path."""
    table = Job.__table__.c
    with store.session() as session:
        job_types = list(
            session.scalars(select(table.job_type).where(table.status == S.DONE.value).distinct())
        )
    expired: list[ExpiredJob] = []
    for job_type in sorted(job_types):
        retention = retention_for(job_type)
        if retention is None:
            continue
        cutoff = now - retention
        assignments = store._assignments(
            S.EXPIRED, f"expired: not accessed for {retention}", None, None, run, False, None
        )
        with store.session() as session:
            rows = session.execute(
                update(Job.__table__)
                .where(
                    table.status == S.DONE.value,
                    table.job_type == job_type,
                    table.last_accessed_at < cutoff,
                    table.finished_at < cutoff,
                )
                .values(**assignments)
                .returning(table.id, table.output_path)
            )
            expired.extend(ExpiredJob(job_id, path) for job_id, path in rows)
    return sorted(expired, key=lambda job: job.job_id)


def collect_metadata(store: JobStore, now: datetime, policy: Mapping[str, timedelta | None]) -> int:
    """Delete finished jobs' metadata older than the policy allows: ``policy[key]`` after the
    job finished, ``policy["*"]`` for keys not named; None keeps. Returns documents removed."""
    named = [key for key in policy if key != "*"]
    table, metadata = Job.__table__.c, JobMetadata.__table__.c
    removed = 0
    with store.session() as session:
        for key, keep in policy.items():
            if keep is None:
                continue
            finished = select(table.id).where(
                table.finished_at.is_not(None), table.finished_at < now - keep
            )
            statement = delete(JobMetadata).where(metadata.job_id.in_(finished))
            if key == "*":
                statement = statement.where(metadata.key.not_in(named))
            else:
                statement = statement.where(metadata.key == key)
            removed += session.execute(statement).rowcount or 0
    return removed


# ------------------------------------------------------------------------------ helpers


def _move_to_error(
    session: Session,
    store: JobStore,
    expected: Sequence[Status],
    target: Status,
    conditions: list[ColumnElement[bool]],
    *,
    message: str | ColumnElement[str],
    error_class: str,
    error_subtype: str,
    run: RunIds | None,
) -> list[int]:
    """One UPDATE: jobs in ``expected`` matching ``conditions`` go to ``target`` (an error);
    the history row keeps the worker that held the job. Returns their ids."""
    store._check_edge(None, target, expected)
    table = Job.__table__.c
    assignments = store._assignments(target, None, error_class, error_subtype, run, False, None)
    assignments.update(status_message=message, last_error=message, worker=table.worker)
    moved = session.execute(
        update(Job.__table__)
        .where(table.status.in_([s.value for s in expected]), *conditions)
        .values(**assignments)
        .returning(table.id)
    )
    return sorted(moved.scalars())


def _retry_policy(
    session: Session,
    store: JobStore,
    job_ids: list[int],
    backoff: Backoff,
    run: RunIds | None,
) -> None:
    """The retry policy for failed jobs, in the caller's transaction: ``error_checked``, then
    ``ready`` after ``backoff(attempts)`` while attempts remain, else ``cancelled``. Jobs an
    operator sent to ``error_checked`` are taken from there; jobs no longer failed are skipped."""
    if not job_ids:
        return
    table = Job.__table__.c
    checked = store._assignments(
        S.ERROR_CHECKED, "error checked by maintenance", None, None, run, False, None
    )
    session.execute(
        update(Job.__table__)
        .where(
            table.id.in_(job_ids),
            table.status.in_([S.INTERNAL_ERROR.value, S.EXTERNAL_ERROR.value]),
        )
        .values(**checked)
    )
    rows = session.execute(
        select(table.id, table.attempts, table.max_attempts).where(
            table.id.in_(job_ids), table.status == S.ERROR_CHECKED.value
        )
    ).all()
    now = store.clock()
    retried: list[dict[str, Any]] = []
    cancelled: list[dict[str, Any]] = []
    for job_id, attempts, max_attempts in rows:
        if attempts >= max_attempts:
            message = f"attempts exhausted ({attempts} of {max_attempts})"
            cancelled.append({"b_id": job_id, "b_message": message, "b_retry_at": None})
            continue
        delay = backoff(attempts)
        message = f"retry {attempts + 1} of {max_attempts} after {delay:.1f} s"
        due = now + timedelta(seconds=delay)
        retried.append({"b_id": job_id, "b_message": message, "b_retry_at": due})
    for target, params in ((S.CANCELLED, cancelled), (S.READY, retried)):
        if params:
            session.execute(_decided(store, target, run), params)


def _decided(store: JobStore, target: Status, run: RunIds | None) -> Any:
    """``error_checked -> target`` for one job, with its own message and ``retry_at`` (the
    statement runs once per job: executemany)."""
    table = Job.__table__.c
    assignments = store._assignments(target, None, None, None, run, False, None)
    assignments.update(
        status_message=bindparam("b_message"),
        retry_at=bindparam("b_retry_at", type_=UtcDateTime()),
    )
    return (
        update(Job.__table__)
        .where(table.id == bindparam("b_id"), table.status == S.ERROR_CHECKED.value)
        .values(**assignments)
    )
