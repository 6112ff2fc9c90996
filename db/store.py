"""The job store: the only code that reads or writes job state.

Tasks, flows, the API and the CLI call the named methods of :class:`JobStore`. Every transition is
one conditional UPDATE (``WHERE status IN (expected)``, and the worker's lease token where one is
held); the database's triggers (:mod:`db.guard`) refuse illegal moves and write the history row in
the same transaction.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    LargeBinary,
    Result,
    Select,
    String,
    Update,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.orm import (
    Session,
    configure_mappers,
    sessionmaker,
)
from sqlalchemy.orm.attributes import instance_state

from db import rekey, stats
from db.engine import make_engine
from db.guard import ILLEGAL_TRANSITION_MARKER
from db.models import (
    NEVER_LATE,
    Job,
    JobCount,
    JobMetadata,
    JobStatusChange,
    Meta,
    Pause,
    UtcDateTime,
)
from db.pauses import PauseKind, check_kind, not_paused
from db.pg_insert import ARRAY_CHUNK, insert_new_jobs
from db.records import (
    BatchResult,
    InsertResult,
    JobFilter,
    MetadataLimits,
    MetadataSummary,
    NewJob,
    Page,
    RunIds,
)
from db.statuses import INITIAL, LEASED, TERMINAL, TRANSITIONS, Status, is_legal
from jobline.exceptions import (
    IllegalTransition,
    JobNotFound,
    LeaseLost,
    MetadataModelMismatch,
    MetadataNotFound,
    MetadataTooLarge,
    StaleTransition,
    TooManyMetadataKeys,
)
from jobline.settings import Settings

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
logger = logging.getLogger(__name__)
Clock = Callable[[], datetime]

#: Rows per INSERT statement: well under PostgreSQL's 65,535 bind parameters at 16 columns.
INSERT_CHUNK = 2_000
#: ``job_counts`` rows (by id span) above which counting folds them first (see migration 0004).
COUNT_ROWS_TO_FOLD = 2_000
#: The ``meta`` key of the store's identity (:meth:`JobStore.store_id`).
STORE_ID_KEY = "store_id"
#: Columns a transition may set besides the status and its context.
TRANSITION_FIELDS = frozenset(
    {
        "output_path",
        "output_publication_date",
        "output_files",
        "input_files",
        "config",
        "priority",
        "last_error",
        "retry_at",
        "max_attempts",
    }
)


#: Statuses a job may be cancelled from (by an operator's bulk cancel).
CANCELLABLE: tuple[Status, ...] = tuple(
    status
    for status in Status
    if Status.CANCELLED in TRANSITIONS[status] and status is not Status.CANCELLED
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_statuses(value: Status | str | Iterable[Status | str]) -> tuple[Status, ...]:
    if isinstance(value, str):
        return (Status(value),)
    return tuple(Status(v) for v in value)


def model_name(model: type[BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


class JobStore:
    """Named operations on jobs, their history and metadata, over one SQLAlchemy engine.

    ``clock`` gives the current time for everything the store timestamps, so tests of leases,
    backoff and expiry can move time forward without sleeping.

    ``reconnect_seconds`` (a worker's store sets it from ``Settings.db_reconnect_seconds``): for
    that long, a method whose database connection was lost (server restart, terminated backend)
    runs its transaction again (see :data:`RECONNECTING_METHODS` and :meth:`reconnecting`).
    """

    def __init__(
        self, engine: Engine, *, clock: Clock = utcnow, reconnect_seconds: float = 0.0
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.reconnect_seconds = reconnect_seconds
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        configure_mappers()  # _detached_job fills instances without the ORM's first-use setup

    def reconnecting(self, call: Callable[[], T]) -> T:
        """``call()`` (whole transactions, safe to repeat), run again while the database
        connection is lost, for up to ``reconnect_seconds``; other errors propagate at once."""
        deadline = time.monotonic() + self.reconnect_seconds
        pause = 0.1
        while True:
            try:
                return call()
            except DBAPIError as error:
                if not connection_lost(error) or time.monotonic() + pause > deadline:
                    raise
                reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
                logger.warning("job store: connection lost (%s); again in %.1f s", reason, pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Clock = utcnow, reconnect_seconds: float = 0.0
    ) -> JobStore:
        engine = make_engine(settings, pool_pre_ping=False)
        _ping_idle_connections(engine)
        return cls(engine, clock=clock, reconnect_seconds=reconnect_seconds)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction, committed on success; guard errors become jobline's."""
        with self._sessions.begin() as session, _translate_guard_errors():
            yield session

    # ----------------------------------------------------------------------------- insert

    def insert_jobs(self, jobs: Iterable[NewJob], *, run: RunIds | None = None) -> InsertResult:
        """Insert jobs in bulk, idempotently by content key, with their first history rows.

        A product whose key exists already (or repeats within ``jobs``) is skipped and reported.
        On PostgreSQL see :mod:`db.pg_insert` (a key look-up, then COPY or ``unnest`` arrays);
        elsewhere multi-row ``INSERT … ON CONFLICT (job_key) DO NOTHING RETURNING``.
        """
        now = self.clock()
        new: dict[bytes, NewJob] = {}
        skipped: list[str] = []
        for job in jobs:
            if job.status not in INITIAL:
                raise IllegalTransition(None, None, job.status)
            key = job.key
            if key in new:
                skipped.append(job.product_id)
                continue
            new[key] = job
        run = run or RunIds()
        with self.session() as session:
            if self.dialect == "postgresql":
                inserted = insert_new_jobs(session.connection(), new, now, run)
            else:
                inserted = self._insert_portable(session, new, now, run)
            inserted.update(self._revive_expired(session, new, inserted, run))
        skipped.extend(job.product_id for key, job in new.items() if key not in inserted)
        return InsertResult(inserted=inserted, skipped=skipped)

    def _insert_portable(
        self, session: Session, new: Mapping[bytes, NewJob], now: datetime, run: RunIds
    ) -> dict[bytes, int]:
        """Multi-row INSERTs, ``INSERT_CHUNK`` rows per statement (SQLite)."""
        rows = [self._insert_row(job, key, now, run) for key, job in new.items()]
        statement = (
            self._insert_statement()
            .on_conflict_do_nothing(index_elements=["job_key"])
            .returning(Job.__table__.c.id, Job.__table__.c.job_key)
        )
        inserted: dict[bytes, int] = {}
        for start in range(0, len(rows), INSERT_CHUNK):
            result = session.execute(statement, rows[start : start + INSERT_CHUNK])
            inserted.update((bytes(key), job_id) for job_id, key in result)
        return inserted

    def _insert_statement(self) -> Any:
        module = postgresql if self.dialect == "postgresql" else sqlite
        return module.insert(Job.__table__)

    @staticmethod
    def _insert_row(job: NewJob, key: bytes, now: datetime, run: RunIds) -> dict[str, Any]:
        return {
            "job_key": key,
            "job_type": job.job_type,
            "queue": job.queue,
            "priority": job.priority,
            "product_id": job.product_id,
            "tile_id": job.tile_id,
            "input_path": job.input_path,
            "input_publication_date": job.input_publication_date,
            "config": job.config,
            "input_files": job.input_files,
            "output_files": [],
            "status": job.status.value,
            "status_seq": 1,
            "status_changed_at": now,
            "status_message": job.message,
            "flow_run_id": run.flow_run_id,
            "task_run_id": run.task_run_id,
            "attempts": 0,
            "max_attempts": job.max_attempts,
            "created_at": now,
            "last_accessed_at": now,
            "finished_at": now if job.status in TERMINAL else None,
            "due_at": job.due_at,
            "sensing_time": job.sensing_time,
        }

    # ------------------------------------------------------------------------- transitions

    def transition(
        self,
        job_id: int,
        to: Status | str,
        *,
        expected_from: Status | str | Iterable[Status | str],
        message: str | None = None,
        error_class: str | None = None,
        error_subtype: str | None = None,
        run: RunIds | None = None,
        lease_token: str | None = None,
        count_attempt: bool = False,
        values: Mapping[str, Any] | None = None,
    ) -> Job:
        """Move one job to ``to`` if it is in one of ``expected_from``; returns the updated job.

        Raises :class:`IllegalTransition` (no such edge), :class:`StaleTransition` (the job is
        elsewhere), :class:`LeaseLost` (``lease_token`` no longer owns the job) or
        :class:`JobNotFound`; in every case nothing is written.
        """
        target, expected = self._check_edge(job_id, to, expected_from)
        shape = _TransitionShape.of(
            target, error_class, count_attempt, values, lease_token is not None, many=False
        )
        params = self._transition_params(
            target, expected, message, error_class, error_subtype, run, values
        )
        params.update(b_job_id=job_id, b_lease_token=lease_token)
        with self._one_statement() as connection:
            jobs = _detached_jobs(connection.execute(_transition_statement(shape), params))
            if not jobs:
                raise self._why_unchanged(connection, job_id, expected, target, lease_token)
        return jobs[0]

    def transition_many(
        self,
        job_ids: Sequence[int],
        to: Status | str,
        *,
        expected_from: Status | str | Iterable[Status | str],
        message: str | None = None,
        error_class: str | None = None,
        error_subtype: str | None = None,
        run: RunIds | None = None,
        count_attempt: bool = False,
        values: Mapping[str, Any] | None = None,
    ) -> BatchResult:
        """Move many jobs in one UPDATE; jobs not in an expected status are reported, not moved."""
        target, expected = self._check_edge(None, to, expected_from)
        shape = _TransitionShape.of(target, error_class, count_attempt, values, False, many=True)
        statement = _transition_statement(shape, self.dialect == "postgresql")
        params = self._transition_params(
            target, expected, message, error_class, error_subtype, run, values
        )
        chunk = ARRAY_CHUNK if self.dialect == "postgresql" else INSERT_CHUNK
        changed: list[int] = []
        # One chunk is one statement: on PostgreSQL it commits by itself (no BEGIN, no COMMIT).
        batches = self._one_statement() if len(job_ids) <= chunk else self._transaction()
        with batches as connection:
            for start in range(0, len(job_ids), chunk):
                ids = list(job_ids[start : start + chunk])
                changed.extend(
                    connection.execute(statement, {**params, "b_job_ids": ids}).scalars()
                )
        moved = set(changed)
        return BatchResult(changed=changed, unchanged=[i for i in job_ids if i not in moved])

    @contextmanager
    def _one_statement(self) -> Iterator[Connection]:
        """A connection for work that is one statement: on PostgreSQL in autocommit mode, so the
        statement is its own transaction and costs one round trip instead of three (BEGIN,
        statement, COMMIT); elsewhere a transaction committed on success."""
        if self.dialect != "postgresql":
            with self._transaction() as connection:
                yield connection
            return
        with self._autocommit.connect() as connection, _translate_guard_errors():
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A connection in one transaction, committed on success; guard errors translated."""
        with self.engine.begin() as connection, _translate_guard_errors():
            yield connection

    def _transition_params(
        self,
        target: Status,
        expected: tuple[Status, ...],
        message: str | None,
        error_class: str | None,
        error_subtype: str | None,
        run: RunIds | None,
        values: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The bound values of :func:`_transition_statement` (the job ids apart)."""
        unknown = set(values or {}) - TRANSITION_FIELDS
        if unknown:
            raise ValueError(
                f"values: a transition cannot set {sorted(unknown)}; "
                f"allowed are {sorted(TRANSITION_FIELDS)}"
            )
        return {
            "b_to": target.value,
            "b_expected": [status.value for status in expected],
            "b_now": self.clock(),
            "b_message": message,
            "b_error_class": error_class,
            "b_error_subtype": error_subtype,
            "b_flow_run_id": run.flow_run_id if run else None,
            "b_task_run_id": run.task_run_id if run else None,
            **{f"b_value_{key}": value for key, value in (values or {}).items()},
        }

    @staticmethod
    def _check_edge(
        job_id: int | None, to: Status | str, expected_from: Any
    ) -> tuple[Status, tuple[Status, ...]]:
        target = Status(to)
        expected = _as_statuses(expected_from)
        if not expected:
            raise ValueError("expected_from: name at least one status the job is believed in")
        for origin in expected:
            if not is_legal(origin, target):
                raise IllegalTransition(job_id, origin, target)
        return target, expected

    def _assignments(
        self,
        target: Status,
        message: str | None,
        error_class: str | None,
        error_subtype: str | None,
        run: RunIds | None,
        count_attempt: bool,
        values: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        unknown = set(values or {}) - TRANSITION_FIELDS
        if unknown:
            raise ValueError(
                f"values: a transition cannot set {sorted(unknown)}; "
                f"allowed are {sorted(TRANSITION_FIELDS)}"
            )
        now = self.clock()
        table = Job.__table__.c
        assignments: dict[str, Any] = {
            "status": target.value,
            "status_seq": table.status_seq + 1,
            "status_changed_at": now,
            "status_message": message,
            "error_class": error_class,
            "error_subtype": error_subtype,
            "flow_run_id": run.flow_run_id if run else None,
            "task_run_id": run.task_run_id if run else None,
            "finished_at": func.coalesce(table.finished_at, now) if target in TERMINAL else None,
            **(values or {}),
        }
        if error_class is not None:
            assignments["last_error"] = message
        if count_attempt:
            assignments["attempts"] = table.attempts + 1
        if target not in LEASED and target is not Status.QUEUED:
            assignments.update(worker=None, lease_token=None, lease_expires_at=None)
        return assignments

    def _why_unchanged(
        self,
        session: Session | Connection,
        job_id: int,
        expected: tuple[Status, ...],
        target: Status,
        lease_token: str | None,
    ) -> Exception:
        row = session.execute(
            select(Job.status, Job.lease_token).where(Job.id == job_id)
        ).one_or_none()
        if row is None:
            return JobNotFound(job_id)
        status, token = row
        if lease_token is not None and token != lease_token and status in expected:
            return LeaseLost(job_id, lease_token)
        return StaleTransition(job_id, tuple(s.value for s in expected), status, target.value)

    def update_job_fields(
        self, job_id: int, fields: Mapping[str, Any], *, lease_token: str | None = None
    ) -> Job:
        """Change fields of a job that are not its status (see ``TRANSITION_FIELDS``)."""
        unknown = set(fields) - TRANSITION_FIELDS
        if unknown:
            raise ValueError(
                f"fields: cannot set {sorted(unknown)}; allowed are {sorted(TRANSITION_FIELDS)}"
            )
        conditions = [Job.id == job_id]
        if lease_token is not None:
            conditions.append(Job.lease_token == lease_token)
        with self.session() as session:
            job = session.scalars(
                update(Job).where(*conditions).values(**fields).returning(Job),
                execution_options={"synchronize_session": False},
            ).one_or_none()
            if job is None:
                if session.get(Job, job_id) is None:
                    raise JobNotFound(job_id)
                raise LeaseLost(job_id, lease_token or "")
            return job

    # ------------------------------------------------------------------- claims and leases

    def claim(
        self,
        queue: str,
        limit: int,
        worker: str,
        *,
        lease_seconds: float = 30.0,
        job_type: str | None = None,
        job_ids: Sequence[int] | None = None,
        run: RunIds | None = None,
    ) -> list[Job]:
        """Atomically move up to ``limit`` ready jobs of ``queue`` to ``queued`` for ``worker``.

        Highest priority first, then oldest. On PostgreSQL the candidates are locked with
        ``FOR UPDATE SKIP LOCKED``, so concurrent claimers never get the same job; SQLite
        serialises writers. Each claimed job gets a lease token and expiry (see :meth:`heartbeat`).
        A job waiting for a retry (``retry_at`` in the future) is not claimed.
        """
        if limit <= 0:
            return []
        now = self.clock()
        statement = _claim_statement(
            job_type is not None, job_ids is not None, self.dialect == "postgresql"
        )
        params = {
            "b_queue": queue,
            "b_limit": limit,
            "b_job_type": job_type,
            "b_job_ids": list(job_ids) if job_ids is not None else None,
            "b_now": now,
            "b_message": f"claimed by {worker}",
            "b_flow_run_id": run.flow_run_id if run else None,
            "b_task_run_id": run.task_run_id if run else None,
            "b_worker": worker,
            "b_lease_token": uuid.uuid4().hex,
            "b_lease_expires_at": now + timedelta(seconds=lease_seconds),
        }
        with self._one_statement() as connection:
            jobs = _detached_jobs(connection.execute(statement, params))
        return sorted(jobs, key=lambda job: (-job.priority, job.id))

    def earliest_retry(self, queue: str, job_type: str | None = None) -> datetime | None:
        """When the next ready job of ``queue`` that waits for a retry becomes claimable."""
        statement = select(func.min(Job.retry_at)).where(
            Job.queue == queue, Job.status == Status.READY.value, Job.retry_at > self.clock()
        )
        if job_type is not None:
            statement = statement.where(Job.job_type == job_type)
        with self.session() as session:
            value = session.execute(statement).scalar()
        return UtcDateTime().process_result_value(value, self.engine.dialect)

    def heartbeat(self, job_id: int, lease_token: str, lease_seconds: float = 30.0) -> datetime:
        """Extend the lease of a job the worker still owns; :class:`LeaseLost` otherwise."""
        expires = self.clock() + timedelta(seconds=lease_seconds)
        with self.session() as session:
            updated = session.execute(
                update(Job.__table__)
                .where(
                    Job.__table__.c.id == job_id,
                    Job.__table__.c.lease_token == lease_token,
                    Job.__table__.c.status.in_([s.value for s in (*LEASED, Status.QUEUED)]),
                )
                .values(lease_expires_at=expires)
                .returning(Job.__table__.c.id)
            ).first()
        if updated is None:
            raise LeaseLost(job_id, lease_token)
        return expires

    # ------------------------------------------------------------------------- metadata

    def set_metadata(
        self, job_id: int, key: str, value: BaseModel, *, lease_token: str | None = None
    ) -> None:
        """Store ``value`` under ``key`` for the job, replacing what was there; with
        ``lease_token``, only while that lease owns the job (:class:`LeaseLost` otherwise)."""
        params = {
            "b_job_id": job_id,
            "b_key": key,
            "b_model": model_name(type(value)),
            "b_value": value.model_dump(mode="json"),
            "b_now": self.clock(),
            "b_lease_token": lease_token,
        }
        statement = _set_metadata_statement(self.dialect, lease_token is not None)
        # One statement (one round trip on PostgreSQL): the job's row, locked while the lease
        # is checked, is the source of the row written.
        with self._one_statement() as connection:
            if connection.execute(statement, params).first() is not None:
                return
            exists = connection.execute(select(Job.id).where(Job.id == job_id)).first()
        if exists is None:
            raise JobNotFound(job_id)
        raise LeaseLost(job_id, lease_token or "")

    @staticmethod
    def _lock_lease(session: Session, job_id: int, lease_token: str) -> None:
        """Lock the job's row until the transaction ends, if ``lease_token`` still owns it: a
        rescue cannot take the job between this check and the caller's write."""
        owner = session.execute(
            select(Job.lease_token).where(Job.id == job_id).with_for_update()
        ).scalar_one_or_none()
        if owner != lease_token:
            raise LeaseLost(job_id, lease_token)

    def set_metadata_many(self, items: Sequence[tuple[int, str, BaseModel]]) -> None:
        """Store many (job id, key, value) documents in one transaction (one statement per
        chunk), replacing what was there."""
        if not items:
            return
        now = self.clock()
        module = postgresql if self.dialect == "postgresql" else sqlite
        rows = [
            {
                "job_id": job_id,
                "key": key,
                "model": model_name(type(value)),
                "value": value.model_dump(mode="json"),
                "created_at": now,
                "updated_at": now,
            }
            for job_id, key, value in items
        ]
        statement = module.insert(JobMetadata.__table__)
        statement = statement.on_conflict_do_update(
            index_elements=["job_id", "key"],
            set_={
                "model": statement.excluded.model,
                "value": statement.excluded.value,
                "updated_at": statement.excluded.updated_at,
            },
        )
        with self.session() as session:
            for start in range(0, len(rows), INSERT_CHUNK):
                session.execute(statement, rows[start : start + INSERT_CHUNK])

    def get_metadata(self, job_id: int, key: str, model: type[M]) -> M:
        """The metadata under ``key`` as a ``model`` instance.

        :class:`MetadataNotFound` when there is none; :class:`MetadataModelMismatch` when the
        stored document does not validate as ``model`` or carries fields ``model`` lacks.
        """
        with self.session() as session:
            row = session.get(JobMetadata, (job_id, key))
        if row is None:
            raise MetadataNotFound(job_id, key)
        # A document with fields the model lacks was written by another model, unless the
        # model takes any field.
        extra = set(row.value) - set(model.model_fields)
        if extra and model.model_config.get("extra") != "allow":
            raise MetadataModelMismatch(
                job_id, key, model_name(model), row.model, f"unknown fields {sorted(extra)}"
            )
        try:
            return model.model_validate(row.value)
        except ValidationError as error:
            reason = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
            )
            raise MetadataModelMismatch(job_id, key, model_name(model), row.model, reason) from None

    def list_metadata(self, job_id: int) -> dict[str, dict[str, Any]]:
        """Every metadata document of the job as plain JSON, by key."""
        with self.session() as session:
            rows = session.scalars(
                select(JobMetadata)
                .where(JobMetadata.job_id == job_id)
                .order_by(JobMetadata.created_at, JobMetadata.key)
            ).all()
        return {row.key: row.value for row in rows}

    def delete_metadata(self, job_id: int, key: str) -> bool:
        """Delete one metadata document; False when there was none."""
        with self.session() as session:
            result = session.execute(
                delete(JobMetadata).where(JobMetadata.job_id == job_id, JobMetadata.key == key)
            )
        return bool(result.rowcount)

    def collect_metadata(
        self, *, finished_before: datetime, keys: Iterable[str] | None = None
    ) -> int:
        """Delete the metadata of jobs finished before ``finished_before`` (only ``keys`` if
        given); returns the number of documents removed. Running jobs keep theirs."""
        finished = select(Job.id).where(
            Job.finished_at.is_not(None), Job.finished_at < finished_before
        )
        statement = delete(JobMetadata).where(JobMetadata.job_id.in_(finished))
        if keys is not None:
            statement = statement.where(JobMetadata.key.in_(list(keys)))
        with self.session() as session:
            return session.execute(statement).rowcount or 0

    # ------------------------------------------------------------------------- queries

    def get_job(self, job_id: int, *, touch: bool = True) -> Job:
        """The job; ``touch`` records the access (``last_accessed_at``) for the expiry policy."""
        params = {"b_job_id": job_id, "b_now": self.clock()}
        with self._one_statement() as connection:
            jobs = _detached_jobs(connection.execute(_get_job_statement(touch), params))
        if not jobs:
            raise JobNotFound(job_id)
        return jobs[0]

    def get_job_by_key(self, job_key: bytes) -> Job | None:
        with self.session() as session:
            return session.scalars(select(Job).where(Job.job_key == job_key)).one_or_none()

    def get_jobs(self, job_ids: Iterable[int]) -> list[Job]:
        """Several jobs in id order, without touching them."""
        ids = list(job_ids)
        with self.session() as session:
            return list(session.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id)))

    def count_statuses(self, job_ids: Iterable[int]) -> dict[str, int]:
        """How many of the given jobs are in each status."""
        ids = list(dict.fromkeys(job_ids))
        counts: dict[str, int] = {}
        with self.session() as session:
            for start in range(0, len(ids), INSERT_CHUNK):
                rows = session.execute(
                    select(Job.status, func.count())
                    .where(Job.id.in_(ids[start : start + INSERT_CHUNK]))
                    .group_by(Job.status)
                )
                for status, count in rows:
                    counts[status] = counts.get(status, 0) + count
        return counts

    def list_jobs(
        self, filters: JobFilter | None = None, *, after: int | None = None, limit: int = 100
    ) -> Page:
        """Jobs in id order, ``limit`` per page; pass the page's ``next_cursor`` as ``after``."""
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit: must be between 1 and 10000, got {limit}")
        filters = filters or JobFilter()
        values = _filter_values(filters)
        statement = _page_statement(tuple(values), after is not None)
        params = {**values, "b_after": after, "b_limit": limit + 1}
        # One statement: no transaction around it (on PostgreSQL), no ORM session.
        with self._one_statement() as connection:
            jobs = _detached_jobs(connection.execute(statement, params))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return Page(jobs=jobs, next_cursor=jobs[-1].id if more else None)

    def count_by_type_status(self, filters: JobFilter | None = None) -> dict[tuple[str, str], int]:
        """Number of jobs per (job type, status).

        On PostgreSQL, unless filtered by more than job type and statuses, the answer comes from
        ``job_counts`` (kept by the database's triggers: a few rows, whatever the number of jobs),
        whose rows are first folded into one per pair when more than ``COUNT_ROWS_TO_FOLD``
        piled up; otherwise a ``GROUP BY`` over the jobs.
        """
        filters = filters or JobFilter()
        if self.dialect == "postgresql" and _counted_by_the_database(filters):
            return self._counts_from_job_counts(filters)
        statement = _filtered(select(Job.job_type, Job.status, func.count()), filters).group_by(
            Job.job_type, Job.status
        )
        with self.session() as session:
            return {(t, s): n for t, s, n in session.execute(statement)}

    def _counts_from_job_counts(self, filters: JobFilter) -> dict[tuple[str, str], int]:
        table = JobCount.__table__.c
        statement = select(table.job_type, table.status, func.sum(table.jobs)).group_by(
            table.job_type, table.status
        )
        if filters.job_type is not None:
            statement = statement.where(table.job_type == filters.job_type)
        if filters.statuses:
            statement = statement.where(
                table.status.in_([Status(s).value for s in filters.statuses])
            )
        with self.session() as session:
            span = session.execute(select(func.max(table.id) - func.min(table.id))).scalar()
            if span is not None and span > COUNT_ROWS_TO_FOLD:
                session.execute(_FOLD_JOB_COUNTS)
            return {(t, s): int(n) for t, s, n in session.execute(statement) if n}

    def history(self, job_id: int, *, after: int | None = None) -> list[JobStatusChange]:
        """The job's status changes, oldest first (only those after history id ``after``)."""
        statement = (
            select(JobStatusChange)
            .where(JobStatusChange.job_id == job_id)
            .order_by(JobStatusChange.id)
        )
        if after is not None:
            statement = statement.where(JobStatusChange.id > after)
        with self.session() as session:
            changes = list(session.scalars(statement))
            if not changes and session.get(Job, job_id) is None:
                raise JobNotFound(job_id)
        return changes

    # ------------------------------------------- operators and API clients (REST API, CLI)

    def retry(self, job_id: int, *, message: str = "retried by an operator") -> Job:
        """Send a failed job back to ``ready`` through ``error_checked``, in one transaction.

        Only a job in ``internal_error``, ``external_error`` or ``error_checked`` is retried;
        any other status raises :class:`IllegalTransition` naming it. A pending backoff is dropped.
        """
        retryable = (Status.INTERNAL_ERROR, Status.EXTERNAL_ERROR, Status.ERROR_CHECKED)
        with self.session() as session:
            status = session.execute(
                select(Job.status).where(Job.id == job_id).with_for_update()
            ).scalar_one_or_none()
            if status is None:
                raise JobNotFound(job_id)
            current = Status(status)
            if current not in retryable:
                names = ", ".join(s.value for s in retryable)
                raise IllegalTransition(
                    job_id,
                    current.value,
                    Status.READY.value,
                    f"job {job_id} is {current.value}: only a failed job ({names}) can be retried",
                )
            path = [Status.READY]
            if current is not Status.ERROR_CHECKED:
                path.insert(0, Status.ERROR_CHECKED)
            for target in path:
                assignments = self._assignments(
                    target, message, None, None, None, False, {"retry_at": None}
                )
                session.execute(
                    update(Job.__table__).where(Job.__table__.c.id == job_id).values(**assignments)
                )
            return session.scalars(select(Job).where(Job.id == job_id)).one()

    def cancel(self, job_id: int, *, message: str = "cancelled by an operator") -> Job:
        """Cancel a job from its current status if the state machine allows it (idempotent)."""
        job = self.get_job(job_id, touch=False)
        if job.status == Status.CANCELLED.value:
            return job
        return self.transition(job_id, Status.CANCELLED, expected_from=job.status, message=message)

    def set_metadata_document(
        self,
        job_id: int,
        key: str,
        document: Mapping[str, Any],
        model: str,
        *,
        limits: MetadataLimits | None = None,
    ) -> JobMetadata:
        """Store a plain JSON ``document`` under ``key``, recorded as written by ``model``.

        Replaces a document the same model wrote; refuses with :class:`MetadataModelMismatch`
        to replace one another model wrote (a task reading its own metadata back must never get
        a foreign shape: delete it first). With ``limits``, refuses (:class:`MetadataTooLarge`,
        :class:`TooManyMetadataKeys`) a write after which the job would hold more keys or bytes
        (its documents' stored JSON text) than they allow; writes to one job are serialised
        by a lock on its row, so concurrent writers cannot pass a limit together.
        """
        now = self.clock()
        module = postgresql if self.dialect == "postgresql" else sqlite
        statement = module.insert(JobMetadata).values(
            job_id=job_id,
            key=key,
            model=model,
            value=dict(document),
            created_at=now,
            updated_at=now,
        )
        statement = statement.on_conflict_do_update(
            index_elements=["job_id", "key"],
            set_={"value": statement.excluded.value, "updated_at": now},
            where=JobMetadata.__table__.c.model == statement.excluded.model,
        ).returning(JobMetadata)
        with self.session() as session:
            locked = select(Job.id).where(Job.id == job_id)
            if session.execute(locked.with_for_update() if limits else locked).first() is None:
                raise JobNotFound(job_id)
            new_key = limits is not None and session.get(JobMetadata, (job_id, key)) is None
            row = session.scalars(
                statement, execution_options={"populate_existing": True}
            ).one_or_none()
            if row is None:
                stored_as = session.execute(
                    select(JobMetadata.model).where(
                        JobMetadata.job_id == job_id, JobMetadata.key == key
                    )
                ).scalar_one()
                raise MetadataModelMismatch(
                    job_id, key, model, stored_as, "delete the document first to replace it"
                )
            if limits is not None:
                # Measured after the write, in its transaction: an exception rolls it back.
                self._check_metadata_limits(session, job_id, key, limits, new_key)
            return row

    def _check_metadata_limits(
        self, session: Session, job_id: int, key: str, limits: MetadataLimits, new_key: bool
    ) -> None:
        keys, size = session.execute(
            select(func.count(), func.coalesce(func.sum(self._document_size()), 0)).where(
                JobMetadata.job_id == job_id
            )
        ).one()
        if new_key and keys > limits.max_keys:
            raise TooManyMetadataKeys(job_id, key, limits.max_keys)
        if size > limits.max_job_bytes:
            raise MetadataTooLarge(job_id, key, limits.max_job_bytes)

    def _document_size(self) -> Any:
        """The size in bytes of a stored document's JSON text, as SQL."""
        if self.dialect == "postgresql":
            return func.octet_length(cast(JobMetadata.value, String))
        return func.length(cast(JobMetadata.value, LargeBinary))

    def metadata_summaries(
        self, job_id: int, *, after: str | None = None, limit: int = 100
    ) -> list[MetadataSummary]:
        """The job's metadata keys in key order after ``after``, with model, size and times
        (no documents); :class:`JobNotFound` for an unknown job."""
        size = self._document_size().label("size_bytes")
        statement = (
            select(
                JobMetadata.key, JobMetadata.model, size, JobMetadata.created_at,
                JobMetadata.updated_at,
            )
            .where(JobMetadata.job_id == job_id)
            .order_by(JobMetadata.key)
            .limit(limit)
        )  # fmt: skip
        if after is not None:
            statement = statement.where(JobMetadata.key > after)
        with self.session() as session:
            if session.get(Job, job_id) is None:
                raise JobNotFound(job_id)
            return [MetadataSummary(*row) for row in session.execute(statement)]

    def get_metadata_document(self, job_id: int, key: str) -> JobMetadata:
        """The stored metadata row (plain JSON and the model that wrote it), whatever its model."""
        with self.session() as session:
            row = session.get(JobMetadata, (job_id, key))
            if row is None:
                if session.get(Job, job_id) is None:
                    raise JobNotFound(job_id)
                raise MetadataNotFound(job_id, key)
        return row

    def metadata_documents(self, job_id: int) -> list[JobMetadata]:
        """Every stored metadata row of the job, oldest first; :class:`JobNotFound` if none."""
        with self.session() as session:
            if session.get(Job, job_id) is None:
                raise JobNotFound(job_id)
            return list(
                session.scalars(
                    select(JobMetadata)
                    .where(JobMetadata.job_id == job_id)
                    .order_by(JobMetadata.created_at, JobMetadata.key)
                )
            )

    def status_changes(
        self,
        *,
        after: int,
        until: int | None = None,
        job_id: int | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[JobStatusChange, str]]:
        """History rows of all jobs with ``after < id <= until``, in id order, each with its
        job's type (the live event stream's query; see :mod:`db.notify`)."""
        statement = (
            select(JobStatusChange, Job.job_type)
            .join(Job, Job.id == JobStatusChange.job_id)
            .where(JobStatusChange.id > after)
            .order_by(JobStatusChange.id)
        )
        if until is not None:
            statement = statement.where(JobStatusChange.id <= until)
        if job_id is not None:
            statement = statement.where(JobStatusChange.job_id == job_id)
        if job_type is not None:
            statement = statement.where(Job.job_type == job_type)
        if limit is not None:
            statement = statement.limit(limit)
        with self.session() as session:
            return [(change, kind) for change, kind in session.execute(statement)]

    def last_change_id(self) -> int:
        """The newest history id (0 before the first change): where a live stream starts."""
        with self.session() as session:
            return session.execute(select(func.max(JobStatusChange.id))).scalar() or 0

    # ------------------------------------------------------------------- operations

    def add_note(self, job_id: int, note: str, *, author: str | None = None) -> JobStatusChange:
        """An operator's note on a job, stored as a history row of kind ``note`` (from and to
        the job's current status), so it shows in the job's history; the status is unchanged."""
        if not note.strip():
            raise ValueError("note: must not be empty")
        with self.session() as session:
            job = session.execute(
                select(Job.status, Job.attempts).where(Job.id == job_id)
            ).one_or_none()
            if job is None:
                raise JobNotFound(job_id)
            change = JobStatusChange(
                job_id=job_id,
                from_status=job.status,
                to_status=job.status,
                changed_at=self.clock(),
                message=note,
                attempt=job.attempts,
                worker=author,
                kind="note",
            )
            session.add(change)
            session.flush()
            return change

    def pause(self, kind: PauseKind, name: str, *, reason: str | None = None) -> Pause:
        """Pause a job type (its import path) or a queue: its ready jobs are no longer claimed.
        Pausing what is paused keeps the first pause."""
        check_kind(kind)
        module = postgresql if self.dialect == "postgresql" else sqlite
        statement = module.insert(Pause.__table__).values(
            kind=kind, name=name, reason=reason, paused_at=self.clock()
        )
        with self.session() as session:
            session.execute(statement.on_conflict_do_nothing(index_elements=["kind", "name"]))
            return session.get_one(Pause, (kind, name))

    def resume(self, kind: PauseKind, name: str) -> bool:
        """Resume a paused job type or queue; False when it was not paused."""
        check_kind(kind)
        with self.session() as session:
            result = session.execute(delete(Pause).where(Pause.kind == kind, Pause.name == name))
        return bool(result.rowcount)

    def pauses(self) -> list[Pause]:
        """Every pause, oldest first."""
        with self.session() as session:
            return list(session.scalars(select(Pause).order_by(Pause.paused_at, Pause.name)))

    def matching_ids(
        self, filters: JobFilter, statuses: Iterable[Status], *, limit: int = 1_000_000
    ) -> list[int]:
        """Ids of the jobs of ``filters`` that are in one of ``statuses``, in id order."""
        allowed = [s.value for s in statuses]
        if filters.statuses:
            allowed = [s for s in allowed if s in {Status(x).value for x in filters.statuses}]
        if not allowed:
            return []
        statement = (
            _filtered(select(Job.id), filters)
            .where(Job.status.in_(allowed))
            .order_by(Job.id)
            .limit(limit)
        )
        with self.session() as session:
            return list(session.scalars(statement))

    def retry_many(self, filters: JobFilter, *, message: str = "retried by an operator") -> int:
        """Send every failed job of ``filters`` back to ``ready`` (see :meth:`retry`); returns
        how many moved."""
        failed = (Status.INTERNAL_ERROR, Status.EXTERNAL_ERROR)
        ids = self.matching_ids(filters, (*failed, Status.ERROR_CHECKED))
        if not ids:
            return 0
        self.transition_many(ids, Status.ERROR_CHECKED, expected_from=failed, message=message)
        moved = self.transition_many(
            ids,
            Status.READY,
            expected_from=Status.ERROR_CHECKED,
            message=message,
            values={"retry_at": None},
        )
        return len(moved.changed)

    def cancel_many(self, filters: JobFilter, *, message: str = "cancelled by an operator") -> int:
        """Cancel every job of ``filters`` whose status allows it; returns how many moved."""
        ids = self.matching_ids(filters, CANCELLABLE)
        if not ids:
            return 0
        return len(
            self.transition_many(
                ids, Status.CANCELLED, expected_from=CANCELLABLE, message=message
            ).changed
        )

    def count_retryable(self, filters: JobFilter) -> int:
        """How many jobs :meth:`retry_many` would move (a dry run)."""
        retryable = (Status.INTERNAL_ERROR, Status.EXTERNAL_ERROR, Status.ERROR_CHECKED)
        return len(self.matching_ids(filters, retryable))

    def count_cancellable(self, filters: JobFilter) -> int:
        """How many jobs :meth:`cancel_many` would move (a dry run)."""
        return len(self.matching_ids(filters, CANCELLABLE))

    def finished_since(self, since: datetime) -> dict[str, stats.Finished]:
        """Per job type, what finished from ``since``'s hour on (from ``job_stats``)."""
        with self._transaction() as connection:
            stats.fold_if_needed(connection)
            return stats.finished_since(connection, since)

    def daily_series(self, since: datetime) -> dict[str, list[tuple[str, stats.Finished]]]:
        """Per job type, what finished each UTC day from ``since``'s day on."""
        with self._transaction() as connection:
            return stats.daily_series(connection, since)

    def late_and_stuck(self) -> tuple[dict[str, int], list[stats.StuckGroup]]:
        """Now: late jobs per job type, and jobs whose status is older than its limit per job
        type and status (one pass over the unfinished jobs)."""
        with self._transaction() as connection:
            return stats.late_and_stuck(connection, self.clock())

    def late_counts(self) -> dict[str, int]:
        """Late jobs per job type, now."""
        return self.late_and_stuck()[0]

    # ------------------------------------------------------------ expired jobs run again

    def _revive_expired(
        self,
        session: Session,
        new: Mapping[bytes, NewJob],
        inserted: Mapping[bytes, int],
        run: RunIds,
    ) -> dict[bytes, int]:
        """A request for an expired job's key runs it again: ``expired -> initialized`` for the
        keys :meth:`insert_jobs` found stored, in its transaction; attempts and outputs start
        over. Returns the revived jobs' ids by key."""
        wanted = [
            key
            for key, job in new.items()
            if key not in inserted and job.status is Status.INITIALIZED
        ]
        if not wanted:
            return {}
        # One index probe spares the key lookups when no job is expired at all (the usual case).
        any_expired = select(Job.id).where(Job.status == Status.EXPIRED.value).limit(1)
        if session.execute(any_expired).first() is None:
            return {}
        table = Job.__table__.c
        assignments = self._assignments(
            Status.INITIALIZED,
            "requested again after it expired",
            None,
            None,
            run,
            False,
            {"retry_at": None, "last_error": None, "output_path": None, "output_files": []},
        )
        assignments.update(attempts=0, output_publication_date=None, last_accessed_at=self.clock())
        revived: dict[bytes, int] = {}
        for start in range(0, len(wanted), INSERT_CHUNK):
            result = session.execute(
                update(Job.__table__)
                .where(
                    table.job_key.in_(wanted[start : start + INSERT_CHUNK]),
                    table.status == Status.EXPIRED.value,
                )
                .values(**assignments)
                .returning(table.id, table.job_key)
            )
            revived.update((bytes(key), job_id) for job_id, key in result)
        return revived

    # ------------------------------------------------------------------------- job keys

    def finish_pending_rekey(self, import_path: str, name: str) -> rekey.RekeyReport | None:
        """Rewrite the keys of a job type migration 0006 could not load, if it is pending
        (one primary-key look-up otherwise); call before looking up or inserting its keys."""
        with self.session() as session:
            return rekey.finish_pending_rekey(session.connection(), import_path, name)

    def rekey_job_type(self, import_path: str, name: str) -> rekey.RekeyReport:
        """Rewrite the keys of the jobs of ``import_path`` from ``name`` (see :mod:`db.rekey`)."""
        with self.session() as session:
            report = rekey.rekey_job_type(session.connection(), import_path, name)
            session.execute(
                delete(Meta).where(Meta.key == (rekey.PENDING_PREFIX + import_path)[:200])
            )
        return report

    def pending_rekeys(self) -> dict[str, str]:
        """Job types whose jobs still have keys made from their import path, and why."""
        with self.session() as session:
            return rekey.pending_rekeys(session.connection())

    # --------------------------------------------------------------------- bookkeeping

    def get_meta(self, key: str) -> str | None:
        with self.session() as session:
            row = session.get(Meta, key)
        return row.value if row else None

    def store_id(self) -> str:
        """This job store's identity: a random id made on first use and kept in ``meta``.

        Job containers carry it (label ``jobline.store``), so two job stores sharing one Docker
        engine never take each other's containers for leftovers or orphans. Read each time
        (one primary-key look-up), so a store emptied under a running process is not confused.
        """
        module = postgresql if self.dialect == "postgresql" else sqlite
        statement = module.insert(Meta.__table__).values(
            key=STORE_ID_KEY, value=uuid.uuid4().hex, updated_at=self.clock()
        )
        with self.session() as session:
            session.execute(statement.on_conflict_do_nothing(index_elements=["key"]))
            return session.get_one(Meta, STORE_ID_KEY).value

    def set_meta(self, key: str, value: str) -> None:
        module = postgresql if self.dialect == "postgresql" else sqlite
        now = self.clock()
        statement = module.insert(Meta.__table__).values(key=key, value=value, updated_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": value, "updated_at": now}
        )
        with self.session() as session:
            session.execute(statement)


@dataclass(frozen=True)
class _TransitionShape:
    """What decides the text of a transition's UPDATE; its values are bound parameters."""

    terminal: bool
    releases_lease: bool
    records_error: bool
    count_attempt: bool
    checks_lease: bool
    value_keys: tuple[str, ...]
    many: bool

    @classmethod
    def of(
        cls,
        target: Status,
        error_class: str | None,
        count_attempt: bool,
        values: Mapping[str, Any] | None,
        checks_lease: bool,
        *,
        many: bool,
    ) -> _TransitionShape:
        return cls(
            terminal=target in TERMINAL,
            releases_lease=target not in LEASED and target is not Status.QUEUED,
            records_error=error_class is not None,
            count_attempt=count_attempt,
            checks_lease=checks_lease,
            value_keys=tuple(sorted(values or {})),
            many=many,
        )


@functools.lru_cache(maxsize=256)
def _transition_statement(shape: _TransitionShape, id_array: bool = False) -> Update:
    """The UPDATE of a transition, built once per shape: a statement reused as is skips
    SQLAlchemy's construction and compilation (most of a single transition's time in Python).

    Sets what :meth:`JobStore._assignments` sets; the guard's triggers check the move and write
    the history row. One job (``:b_job_id``, returning the whole row) or many (``:b_job_ids``,
    one array parameter on PostgreSQL, returning their ids)."""
    c = Job.__table__.c
    now = bindparam("b_now", type_=UtcDateTime())
    assignments: dict[str, Any] = {
        "status": bindparam("b_to"),
        "status_seq": c.status_seq + 1,
        "status_changed_at": now,
        "status_message": bindparam("b_message"),
        "error_class": bindparam("b_error_class"),
        "error_subtype": bindparam("b_error_subtype"),
        "flow_run_id": bindparam("b_flow_run_id"),
        "task_run_id": bindparam("b_task_run_id"),
        "finished_at": func.coalesce(c.finished_at, now) if shape.terminal else None,
        **{key: bindparam(f"b_value_{key}", type_=c[key].type) for key in shape.value_keys},
    }
    if shape.records_error:
        assignments["last_error"] = bindparam("b_message")
    if shape.count_attempt:
        assignments["attempts"] = c.attempts + 1
    if shape.releases_lease:
        assignments.update(worker=None, lease_token=None, lease_expires_at=None)
    if not shape.many:
        which = c.id == bindparam("b_job_id")
    elif id_array:
        which = c.id == any_(bindparam("b_job_ids", type_=ARRAY(BigInteger)))
    else:
        which = c.id.in_(bindparam("b_job_ids", expanding=True))
    statement = update(Job.__table__).where(
        which, c.status.in_(bindparam("b_expected", expanding=True))
    )
    if shape.checks_lease:
        statement = statement.where(c.lease_token == bindparam("b_lease_token"))
    statement = statement.values(**assignments)
    return statement.returning(c.id) if shape.many else statement.returning(*c)


@functools.lru_cache(maxsize=8)
def _claim_statement(by_type: bool, by_ids: bool, id_array: bool) -> Update:
    """The claim's UPDATE, built once per shape: ready jobs of ``:b_queue`` (of ``:b_job_type``,
    among ``:b_job_ids``) not waiting for a retry, highest priority then oldest first, at most
    ``:b_limit``, locked with SKIP LOCKED, moved to ``queued`` with the worker's lease."""
    c = Job.__table__.c
    now = bindparam("b_now", type_=UtcDateTime())
    candidates = (
        select(c.id)
        .where(
            c.queue == bindparam("b_queue"),
            c.status == Status.READY.value,
            or_(c.retry_at.is_(None), c.retry_at <= now),
        )
        .order_by(c.priority.desc(), c.id)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
    )
    # A paused job type or queue is not handed out (migration 0008).
    candidates = candidates.where(not_paused(c))
    if by_type:
        candidates = candidates.where(c.job_type == bindparam("b_job_type"))
    if by_ids:
        candidates = candidates.where(
            c.id == any_(bindparam("b_job_ids", type_=ARRAY(BigInteger)))
            if id_array
            else c.id.in_(bindparam("b_job_ids", expanding=True))
        )
    # A CTE, not a subquery in WHERE: SQLAlchemy would correlate a subquery on ``jobs`` with the
    # UPDATE's own ``jobs`` and the LIMIT would apply per row.
    claimable = candidates.cte("claimable")
    return (
        update(Job.__table__)
        .where(c.id.in_(select(claimable.c.id)), c.status == Status.READY.value)
        .values(
            status=Status.QUEUED.value,
            status_seq=c.status_seq + 1,
            status_changed_at=now,
            status_message=bindparam("b_message"),
            error_class=None,
            error_subtype=None,
            flow_run_id=bindparam("b_flow_run_id"),
            task_run_id=bindparam("b_task_run_id"),
            finished_at=None,
            worker=bindparam("b_worker"),
            lease_token=bindparam("b_lease_token"),
            lease_expires_at=bindparam("b_lease_expires_at", type_=UtcDateTime()),
            claimed_at=now,
        )
        .returning(*c)
    )


@functools.lru_cache(maxsize=2)
def _get_job_statement(touch: bool) -> Any:
    """One job by ``:b_job_id``, as one statement; ``touch`` records the access at ``:b_now``."""
    c = Job.__table__.c
    if not touch:
        return select(*c).where(c.id == bindparam("b_job_id"))
    return (
        update(Job.__table__)
        .where(c.id == bindparam("b_job_id"))
        .values(last_accessed_at=bindparam("b_now", type_=UtcDateTime()))
        .returning(*c)
    )


@functools.lru_cache(maxsize=8)
def _set_metadata_statement(dialect: str, checks_lease: bool) -> Any:
    """Upsert one metadata document for ``:b_job_id`` if that job exists (and, with
    ``checks_lease``, is owned by ``:b_lease_token``: its row is locked until the write commits,
    so a rescue cannot take the job in between); returns the job id, or nothing."""
    module = postgresql if dialect == "postgresql" else sqlite
    c = Job.__table__.c
    now = bindparam("b_now", type_=UtcDateTime())
    source = select(
        c.id,
        bindparam("b_key", type_=String()),
        bindparam("b_model", type_=String()),
        bindparam("b_value", type_=JobMetadata.__table__.c.value.type),
        now,
        now,
    ).where(c.id == bindparam("b_job_id"))
    if checks_lease:
        source = source.where(c.lease_token == bindparam("b_lease_token")).with_for_update()
    statement = module.insert(JobMetadata.__table__).from_select(
        ["job_id", "key", "model", "value", "created_at", "updated_at"], source
    )
    statement = statement.on_conflict_do_update(
        index_elements=["job_id", "key"],
        set_={
            "model": statement.excluded.model,
            "value": statement.excluded.value,
            "updated_at": statement.excluded.updated_at,
        },
    )
    return statement.returning(JobMetadata.__table__.c.job_id)


def _detached_jobs(result: Result[Any]) -> list[Job]:
    """:class:`Job` instances holding the rows of a Core statement, as if loaded and detached.

    The values go straight into each instance's dict, as the ORM's own loading does: through
    ``Job(**values)`` each would be an attribute event (25 times slower: 50 jobs of a claim
    took 5 ms)."""
    columns = list(result.keys())
    jobs = []
    for row in result:
        job = _JOB_CLASS.new_instance()
        job.__dict__.update(zip(columns, row, strict=True))
        # What make_transient_to_detached() does, less its bookkeeping of attribute history
        # that a fresh instance has none of (it took 60% of this loop): the identity key.
        instance_state(job).key = (Job, (job.id,), None)
        jobs.append(job)
    return jobs


_JOB_CLASS = Job._sa_class_manager


#: Folds the rows of ``job_counts`` into one per (job type, status). Safe beside writers and
#: other folds: it deletes only the rows its snapshot sees (rows committed meanwhile stay) and
#: rows another fold deleted first are skipped, not counted twice.
_FOLD_JOB_COUNTS = text(
    "WITH folded AS (DELETE FROM job_counts RETURNING job_type, status, jobs) "
    "INSERT INTO job_counts (job_type, status, jobs) "
    "SELECT job_type, status, sum(jobs) FROM folded GROUP BY job_type, status "
    "HAVING sum(jobs) <> 0"
)


def _counted_by_the_database(filters: JobFilter) -> bool:
    """Whether ``job_counts`` answers ``filters``: job type and statuses only."""
    return all(
        getattr(filters, name) is None
        for name in (
            "tile_id",
            "product_id",
            "created_after",
            "created_before",
            "input_date_from",
            "input_date_until",
            "late_at",
        )
    )


#: Each filter of :class:`JobFilter` as a condition on a bound parameter ``b_<name>``.
_FILTER_CONDITIONS: dict[str, Callable[[Any], Any]] = {
    "statuses": lambda c: c.status.in_(bindparam("b_statuses", expanding=True)),
    "job_type": lambda c: c.job_type == bindparam("b_job_type"),
    "tile_id": lambda c: c.tile_id == bindparam("b_tile_id"),
    "product_id": lambda c: c.product_id == bindparam("b_product_id"),
    "created_after": lambda c: c.created_at >= bindparam("b_created_after"),
    "created_before": lambda c: c.created_at < bindparam("b_created_before"),
    "input_date_from": lambda c: c.input_publication_date >= bindparam("b_input_date_from"),
    "input_date_until": lambda c: c.input_publication_date < bindparam("b_input_date_until"),
    "late_at": lambda c: and_(
        c.due_at < bindparam("b_late_at", type_=UtcDateTime()),
        c.status.not_in([s.value for s in NEVER_LATE]),
    ),
}


def _filter_values(filters: JobFilter) -> dict[str, Any]:
    """The bound values of the filters that are set, by parameter name."""
    values: dict[str, Any] = {}
    for name in _FILTER_CONDITIONS:
        value = getattr(filters, name)
        if name == "statuses":
            if value:
                values["b_statuses"] = [Status(status).value for status in value]
        elif value is not None:
            values[f"b_{name}"] = value
    return values


@functools.lru_cache(maxsize=128)
def _page_statement(parameters: tuple[str, ...], with_after: bool) -> Select[Any]:
    """A page of jobs in id order for the filters set (``parameters``), built once per shape."""
    c = Job.__table__.c
    conditions = [_FILTER_CONDITIONS[name.removeprefix("b_")](c) for name in parameters]
    if with_after:
        conditions.append(c.id > bindparam("b_after"))
    return select(*c).where(*conditions).order_by(c.id).limit(bindparam("b_limit"))


def _filtered(statement: Select[Any], filters: JobFilter) -> Select[Any]:
    conditions = []
    if filters.statuses:
        conditions.append(Job.status.in_([Status(s).value for s in filters.statuses]))
    if filters.job_type is not None:
        conditions.append(Job.job_type == filters.job_type)
    if filters.tile_id is not None:
        conditions.append(Job.tile_id == filters.tile_id)
    if filters.product_id is not None:
        conditions.append(Job.product_id == filters.product_id)
    if filters.created_after is not None:
        conditions.append(Job.created_at >= filters.created_after)
    if filters.created_before is not None:
        conditions.append(Job.created_at < filters.created_before)
    if filters.input_date_from is not None:
        conditions.append(Job.input_publication_date >= filters.input_date_from)
    if filters.input_date_until is not None:
        conditions.append(Job.input_publication_date < filters.input_date_until)
    if filters.late_at is not None:
        conditions.append(Job.due_at < filters.late_at)
        conditions.append(Job.status.not_in([s.value for s in NEVER_LATE]))
    return statement.where(*conditions)


#: A pooled connection idle for longer than this is pinged before it is used again.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection before use only if it sat idle for ``PING_AFTER_IDLE_SECONDS``.

    Why: SQLAlchemy's ``pool_pre_ping`` pings at every checkout: one more round trip for every
    statement, 0.5 ms of a 2 ms transition. A server restart or a terminated backend is noticed
    on idle connections all the same; a connection used less than a second ago is taken as alive
    (should it fail anyway, the error is a lost connection, which ``reconnect_seconds`` repeats).
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # any failure means: use another connection
            # The pool discards this connection and checks out another one.
            raise DisconnectionError(f"pooled connection is gone: {error}") from error


def connection_lost(error: BaseException) -> bool:
    """Whether a database error means the connection or the server went away (a restart, a
    terminated backend, a refused connection): the whole transaction may be tried again."""
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    # psycopg's OperationalError covers lost and refused connections and rolled-back (deadlocked)
    # transactions; SQLite's also covers "no such table", which no repeat fixes.
    driver = type(error.orig).__module__ if error.orig is not None else ""
    return isinstance(error, OperationalError | InterfaceError) and driver.startswith("psycopg")


def _reconnecting(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def repeated(self: JobStore, *args: Any, **kwargs: Any) -> T:
        if self.reconnect_seconds <= 0:
            return method(self, *args, **kwargs)
        return self.reconnecting(functools.partial(method, self, *args, **kwargs))

    return repeated


def _reconnecting_transition(method: Callable[..., Job]) -> Callable[..., Job]:
    @functools.wraps(method)
    def repeated(self: JobStore, job_id: int, to: Status | str, **kwargs: Any) -> Job:
        if self.reconnect_seconds <= 0:
            return method(self, job_id, to, **kwargs)
        tries = 0

        def once() -> Job:
            nonlocal tries
            tries += 1
            try:
                return method(self, job_id, to, **kwargs)
            except StaleTransition as stale:
                # The connection was lost after the first try committed: its answer never came
                # back, and the job is already where that try moved it.
                if tries > 1 and stale.actual == Status(to).value:
                    job = self.get_job(job_id, touch=False)
                    token = kwargs.get("lease_token")
                    if token is None or Status(to) not in LEASED or job.lease_token == token:
                        return job
                raise

        return self.reconnecting(once)

    return repeated


#: Methods that are one transaction each: a store with ``reconnect_seconds`` repeats them whole
#: when the connection was lost. (``cancel`` repeats through the methods it calls.)
RECONNECTING_METHODS = (
    "insert_jobs",
    "transition_many",
    "update_job_fields",
    "claim",
    "earliest_retry",
    "heartbeat",
    "set_metadata",
    "set_metadata_many",
    "get_metadata",
    "list_metadata",
    "delete_metadata",
    "collect_metadata",
    "get_job",
    "get_job_by_key",
    "get_jobs",
    "list_jobs",
    "count_by_type_status",
    "history",
    "retry",
    "set_metadata_document",
    "get_metadata_document",
    "metadata_documents",
    "status_changes",
    "last_change_id",
    "get_meta",
    "set_meta",
    "count_statuses",
    "finish_pending_rekey",
    "pending_rekeys",
    "add_note",
    "pause",
    "resume",
    "pauses",
    "matching_ids",
    "finished_since",
    "daily_series",
    "late_and_stuck",
)
for _name in RECONNECTING_METHODS:
    setattr(JobStore, _name, _reconnecting(getattr(JobStore, _name)))
JobStore.transition = _reconnecting_transition(JobStore.transition)  # type: ignore[method-assign]


@contextmanager
def _translate_guard_errors() -> Iterator[None]:
    """The database's guard speaks SQL errors; callers get :class:`IllegalTransition`."""
    try:
        yield
    except DBAPIError as error:
        reason = str(error.orig).splitlines()[0]
        if ILLEGAL_TRANSITION_MARKER in reason:
            raise IllegalTransition(None, None, "?", f"refused by the database: {reason}") from None
        raise
