"""The publication outbox: messages written with the job's status change, delivered afterwards.

Publishing a job is two steps that can each fail on their own:

1. :func:`start_publication` writes one ``publications`` row per output product AND moves the job
   ``processed -> start_publication``, in ONE transaction: either the job is publishing and its
   messages are waiting, or neither.
2. A sender (``tasks.publication.deliver_pending``) claims pending rows with :func:`pending`,
   sends each to the sink, and :func:`mark_sent` once the sink confirmed it;
   :func:`finish_published` moves a job whose rows are all sent ``start_publication ->
   published -> done``.

Delivery is at least once: a sender that crashes between the sink's confirmation and
:func:`mark_sent` sends that row again later. ``message_id`` is deterministic (job key, product
id, and the job's run: see :func:`message_id_for`), so consumers dedupe on it.

Claims: :func:`pending` claims rows with a short lease (``lease_expires_at``) in one UPDATE; on
PostgreSQL the candidates are locked ``FOR UPDATE SKIP LOCKED`` so concurrent senders never claim
one row twice, and SQLite serialises writers. No transaction stays open while messages travel to
the broker (on SQLite that would block every other writer). A sender that dies leaves its rows
claimed until the lease expires; then another sender takes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Job, JobStatusChange, Publication
from db.records import RunIds, content_key
from db.statuses import Status
from db.store import INSERT_CHUNK, JobStore
from jobline.exceptions import JobNotFound

PENDING = "pending"
SENT = "sent"
#: How long a sender owns the rows it claimed; far longer than a batch takes to send.
DEFAULT_LEASE = timedelta(seconds=120)
#: Longest error text kept on a row.
MAX_ERROR_LENGTH = 2_000


def message_id_for(job_key: bytes, product_id: str, rerun: int = 0) -> str:
    """The deterministic message id of one output product of a job (32 hex digits).

    ``rerun`` counts how often the job ran again after it expired (its ``expired -> initialized``
    changes): a re-run makes new outputs, whose messages must reach consumers that dedupe on the
    id, while every attempt within one run queues the same ids again. The first run's ids are
    those of (job key, product id) alone."""
    parts = (job_key.hex(), product_id) + ((f"rerun-{rerun}",) if rerun else ())
    return content_key(*parts).hex()


def reruns_of(session: Session, job_id: int) -> int:
    """How often the job was requested again after it expired, according to its history."""
    return (
        session.scalar(
            select(func.count())
            .select_from(JobStatusChange)
            .where(
                JobStatusChange.job_id == job_id,
                JobStatusChange.from_status == Status.EXPIRED.value,
                JobStatusChange.to_status == Status.INITIALIZED.value,
            )
        )
        or 0
    )


def start_publication(
    store: JobStore,
    job_id: int,
    messages: Sequence[tuple[str, dict[str, Any]]],
    *,
    run: RunIds | None = None,
    lease_token: str | None = None,
) -> list[str]:
    """Queue ``messages`` (product id, body) and move the job ``processed -> start_publication``
    in one transaction; returns the message ids in the order given.

    Idempotent: rows are keyed by message id (``ON CONFLICT DO NOTHING``), and a job already in
    ``start_publication`` (a retried task whose first try committed) is left there. Any other
    status raises :class:`StaleTransition` and writes nothing. ``lease_token`` is checked when
    given; the store releases a job's lease when it reaches ``processed``, so callers normally
    leave it out.
    """
    now = store.clock()
    with store.session() as session:
        job_key = session.scalar(select(Job.job_key).where(Job.id == job_id))
        if job_key is None:
            raise JobNotFound(job_id)
        rerun = reruns_of(session, job_id)
        rows: dict[str, dict[str, Any]] = {}
        for product_id, body in messages:
            message_id = message_id_for(bytes(job_key), product_id, rerun)
            rows.setdefault(message_id, _new_row(job_id, product_id, message_id, body, now))
        insert = _insert(store).on_conflict_do_nothing(index_elements=["message_id"])
        chunk = list(rows.values())
        for start in range(0, len(chunk), INSERT_CHUNK):
            session.execute(insert, chunk[start : start + INSERT_CHUNK])
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        if status != Status.START_PUBLICATION.value:
            _transition_in(
                store,
                session,
                job_id,
                Status.START_PUBLICATION,
                expected_from=Status.PROCESSED,
                message=f"{len(rows)} publication message(s) queued",
                run=run,
                lease_token=lease_token,
            )
    return list(rows)


def pending(
    store: JobStore,
    limit: int,
    job_id: int | None = None,
    *,
    lease: timedelta = DEFAULT_LEASE,
) -> list[Publication]:
    """Claim up to ``limit`` pending rows (oldest first) for ``lease``; other senders skip them.

    The caller sends each and calls :func:`mark_sent`, :func:`mark_failed` or :func:`release`.
    """
    if limit <= 0:
        return []
    now = store.clock()
    claimable = _claimable(now)
    candidates = (
        select(Publication.id)
        .where(*claimable)
        .order_by(Publication.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if job_id is not None:
        candidates = candidates.where(Publication.job_id == job_id)
    # A CTE, as in JobStore.claim: a correlated subquery would apply the LIMIT per row.
    chosen = candidates.cte("chosen")
    with store.session() as session:
        rows = session.scalars(
            update(Publication)
            .where(Publication.id.in_(select(chosen.c.id)), *claimable)
            .values(lease_expires_at=now + lease)
            .returning(Publication),
            execution_options={"synchronize_session": False},
        ).all()
    return sorted(rows, key=lambda row: row.id)


def mark_sent(store: JobStore, ids: Iterable[int], now: datetime | None = None) -> int:
    """Record that the sink confirmed these rows; returns how many were still pending."""
    ids = list(ids)
    if not ids:
        return 0
    table = Publication.__table__.c
    with store.session() as session:
        result = session.execute(
            update(Publication.__table__)
            .where(table.id.in_(ids), table.status == PENDING)
            .values(
                status=SENT,
                sent_at=now or store.clock(),
                attempts=table.attempts + 1,
                lease_expires_at=None,
                last_error=None,
            )
        )
    return result.rowcount or 0


def mark_failed(store: JobStore, publication_id: int, error: str) -> None:
    """Record a failed delivery; the row stays pending and is free for the next sender."""
    table = Publication.__table__.c
    with store.session() as session:
        session.execute(
            update(Publication.__table__)
            .where(table.id == publication_id, table.status == PENDING)
            .values(
                attempts=table.attempts + 1,
                lease_expires_at=None,
                last_error=error[:MAX_ERROR_LENGTH],
            )
        )


def release(store: JobStore, ids: Iterable[int]) -> None:
    """Give claimed rows back without an attempt (the sender stopped before trying them)."""
    ids = list(ids)
    if not ids:
        return
    table = Publication.__table__.c
    with store.session() as session:
        session.execute(
            update(Publication.__table__)
            .where(table.id.in_(ids), table.status == PENDING)
            .values(lease_expires_at=None)
        )


def finish_published(store: JobStore, job_id: int, run: RunIds | None = None) -> bool:
    """When every row of the job is sent, move it ``start_publication -> published -> done`` in
    one transaction. Returns whether the job's publication is finished: True when this call
    moved it, or when it is ``done`` already (a sender finished it first), so callers can
    retry safely.

    False, and nothing written, while rows are pending or when the job is elsewhere (for
    instance moved to an error by an operator). ``output_publication_date`` is set to now
    unless it was set before.
    """
    now = store.clock()
    with store.session() as session:
        if session.scalar(
            select(func.count())
            .select_from(Publication)
            .where(Publication.job_id == job_id, Publication.status == PENDING)
        ):
            return False
        published = _conditional_update(
            store,
            session,
            job_id,
            Status.PUBLISHED,
            Status.START_PUBLICATION,
            message="every publication message was confirmed",
            run=run,
            values={"output_publication_date": func.coalesce(Job.output_publication_date, now)},
        )
        if published is None:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            return status == Status.DONE.value
        _transition_in(
            store,
            session,
            job_id,
            Status.DONE,
            expected_from=Status.PUBLISHED,
            message="published",
            run=run,
        )
    return True


def publishing_jobs_without_pending(store: JobStore, job_id: int | None = None) -> list[int]:
    """Jobs in ``start_publication`` with no pending row: a sender died between its last
    :func:`mark_sent` and :func:`finish_published`, or the job had no message."""
    waiting = exists().where(Publication.job_id == Job.id, Publication.status == PENDING)
    statement = (
        select(Job.id)
        .where(Job.status == Status.START_PUBLICATION.value, ~waiting)
        .order_by(Job.id)
    )
    if job_id is not None:
        statement = statement.where(Job.id == job_id)
    with store.session() as session:
        return list(session.scalars(statement))


def publications_of(store: JobStore, job_id: int) -> list[Publication]:
    """Every outbox row of a job, in id order."""
    with store.session() as session:
        return list(
            session.scalars(
                select(Publication).where(Publication.job_id == job_id).order_by(Publication.id)
            )
        )


# --------------------------------------------------------------------------------- helpers


def _new_row(
    job_id: int, product_id: str, message_id: str, body: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "product_id": product_id,
        "message_id": message_id,
        "body": body,
        "status": PENDING,
        "attempts": 0,
        "created_at": now,
    }


def _insert(store: JobStore) -> Any:
    module = postgresql if store.dialect == "postgresql" else sqlite
    return module.insert(Publication.__table__)


def _claimable(now: datetime) -> list[Any]:
    return [
        Publication.status == PENDING,
        or_(Publication.lease_expires_at.is_(None), Publication.lease_expires_at <= now),
    ]


def _conditional_update(
    store: JobStore,
    session: Session,
    job_id: int,
    to: Status,
    expected_from: Status,
    *,
    message: str,
    run: RunIds | None = None,
    lease_token: str | None = None,
    values: dict[str, Any] | None = None,
) -> Job | None:
    """The store's transition UPDATE inside the caller's session; None when no row matched."""
    target, expected = store._check_edge(job_id, to, expected_from)
    assignments = store._assignments(target, message, None, None, run, False, None)
    assignments.update(values or {})
    conditions = [Job.id == job_id, Job.status.in_(expected)]
    if lease_token is not None:
        conditions.append(Job.lease_token == lease_token)
    return session.scalars(
        update(Job).where(*conditions).values(**assignments).returning(Job),
        execution_options={"synchronize_session": False},
    ).one_or_none()


def _transition_in(
    store: JobStore,
    session: Session,
    job_id: int,
    to: Status,
    *,
    expected_from: Status,
    message: str,
    run: RunIds | None = None,
    lease_token: str | None = None,
) -> Job:
    """Like :meth:`JobStore.transition`, in the caller's transaction: raising rolls it back."""
    job = _conditional_update(
        store,
        session,
        job_id,
        to,
        expected_from,
        message=message,
        run=run,
        lease_token=lease_token,
    )
    if job is None:
        raise store._why_unchanged(session, job_id, (expected_from,), to, lease_token)
    return job
