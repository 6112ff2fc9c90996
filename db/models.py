"""The tables jobline owns, declared once. Alembic migrations in ``db/migrations`` create them;
``tests/integration/test_migrations.py`` checks that the migrated schema equals these models.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.statuses import TERMINAL, Status

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: A 64-bit id on PostgreSQL; SQLite only auto-increments an INTEGER primary key.
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


def require_aware(value: datetime, field: str | None = None) -> None:
    """Refuse a naive datetime: jobline stores UTC-aware ones (``field`` names it in the error)."""
    if value.tzinfo is None:
        where = f"{field}: " if field else ""
        raise ValueError(f"{where}naive datetime {value!r}: jobline stores UTC-aware datetimes")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        require_aware(value)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Predicates of the partial indexes on ``jobs``.
READY_ONLY = "status = 'ready'"
LEASED_ONLY = "lease_expires_at IS NOT NULL"
#: Statuses after which a job is never late: it delivered (done, expired) or was given up.
NEVER_LATE: frozenset[Status] = frozenset({Status.DONE, Status.EXPIRED, Status.CANCELLED})
#: Predicate of ``ix_jobs_unfinished``: jobs that can still be late or stuck.
UNFINISHED = "status NOT IN ('" + "', '".join(sorted(s.value for s in NEVER_LATE)) + "')"


def sql_list(values: set[Status] | frozenset[Status] | list[Status]) -> str:
    """A SQL list literal of status names, in lifecycle order."""
    return ", ".join(f"'{status.value}'" for status in sorted(values, key=lambda s: s.id))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One job per input product (or per API submission): the job record of REFERENCE.md."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_key: Mapped[bytes] = mapped_column(LargeBinary(16), unique=True)
    job_type: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(100))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    product_id: Mapped[str] = mapped_column(String(300))
    tile_id: Mapped[str | None] = mapped_column(String(64))
    input_path: Mapped[str | None] = mapped_column(Text)
    input_publication_date: Mapped[datetime | None] = mapped_column(UtcDateTime)
    output_path: Mapped[str | None] = mapped_column(Text)
    output_publication_date: Mapped[datetime | None] = mapped_column(UtcDateTime)
    config: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict)
    input_files: Mapped[list[Any]] = mapped_column(JsonDoc, default=list)
    output_files: Mapped[list[Any]] = mapped_column(JsonDoc, default=list)

    status: Mapped[str] = mapped_column(String(32))
    # The context of the latest transition; the database copies it into job_status_changes.
    status_seq: Mapped[int] = mapped_column(Integer, default=0)
    status_changed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    status_message: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(100))
    error_subtype: Mapped[str | None] = mapped_column(String(100))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    task_run_id: Mapped[str | None] = mapped_column(String(64))

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    retry_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_accessed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Timeliness (migration 0008): when the job becomes late (its input's publication, or its
    # creation, plus its job type's target; None: no target), and the input's sensing time.
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sensing_time: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint(f"status IN ({sql_list(list(Status))})", name="status_known"),
        CheckConstraint(
            f"(status IN ({sql_list(TERMINAL)})) = (finished_at IS NOT NULL)",
            name="finished_iff_terminal",
        ),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_product_id", "product_id"),
        Index("ix_jobs_tile_date", "tile_id", "input_publication_date"),
        Index("ix_jobs_created_id", "created_at", "id"),
        # Only jobs holding a lease, for the sweep of expired leases (migration 0004).
        Index(
            "ix_jobs_lease",
            "lease_expires_at",
            postgresql_where=text(LEASED_ONLY),
            sqlite_where=text(LEASED_ONLY),
        ),
        # Only the jobs that can still be late or stuck (migration 0008), with what the
        # overview counts of them: on PostgreSQL one index-only scan answers both.
        Index(
            "ix_jobs_unfinished",
            "status",
            "status_changed_at",
            postgresql_include=["job_type", "due_at"],
            postgresql_where=text(UNFINISHED),
            sqlite_where=text(UNFINISHED),
        ),
    )

    @property
    def key_hex(self) -> str:
        return self.job_key.hex()

    def is_late(self, now: datetime) -> bool:
        """Past its due time and not done (nor expired or cancelled): derived, never stored."""
        return (
            self.due_at is not None and self.due_at < now and Status(self.status) not in NEVER_LATE
        )

    @property
    def latency(self) -> timedelta | None:
        """A done job's latency: input publication (else creation) to output publication (else
        the job's end), as ``job_stats`` counts it; None for a job not done."""
        if self.status not in (Status.DONE.value, Status.EXPIRED.value) or self.finished_at is None:
            return None
        start = self.input_publication_date or self.created_at
        return (self.output_publication_date or self.finished_at) - start

    @property
    def sensing_latency(self) -> timedelta | None:
        """A done job's latency from its input's sensing time, when known."""
        if self.latency is None or self.sensing_time is None:
            return None
        return (self.output_publication_date or self.finished_at) - self.sensing_time  # type: ignore[operator]


# Only ready jobs, in claim order: a transition elsewhere adds no entry (migration 0004).
Index(
    "ix_jobs_claim",
    Job.queue,
    Job.priority.desc(),
    Job.id,
    postgresql_where=text(READY_ONLY),
    sqlite_where=text(READY_ONLY),
)

# Only ready jobs, by job type and the time they became ready: the launcher's admission order
# (migration 0007).
Index(
    "ix_jobs_admission",
    Job.job_type,
    Job.status_changed_at,
    Job.id,
    postgresql_where=text(READY_ONLY),
    sqlite_where=text(READY_ONLY),
)


class JobCount(Base):
    """Changes of the number of jobs per (job type, status), appended by triggers on ``jobs``
    (PostgreSQL, migration 0004): the counts are the sums, so ``count_by_type_status`` reads a few
    rows instead of every job. Writers only append (no row is shared between transactions);
    :meth:`db.store.JobStore.count_by_type_status` folds the rows into one per pair now and then.
    """

    __tablename__ = "job_counts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_type: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32))
    jobs: Mapped[int] = mapped_column(BigInteger)


class JobStatusChange(Base):
    """Append-only history: one row per status change, written by the database's trigger."""

    __tablename__ = "job_status_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigId, ForeignKey("jobs.id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    message: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(100))
    error_subtype: Mapped[str | None] = mapped_column(String(100))
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    task_run_id: Mapped[str | None] = mapped_column(String(64))
    # 'status' (written by the trigger) or 'note' (an operator's note: from = to = the status
    # the job was in; migration 0008).
    kind: Mapped[str] = mapped_column(String(16), server_default=text("'status'"))

    __table_args__ = (Index("ix_job_status_changes_job_id_id", "job_id", "id"),)


class JobMetadata(Base):
    """Per job and key (normally the task name): a JSON document validated by a pydantic model."""

    __tablename__ = "job_metadata"

    job_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(300))
    value: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Meta(Base):
    """The store's own bookkeeping: schema version, discovery watermarks."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Publication(Base):
    """The publication outbox: one message per output product, written in the same transaction
    that moves the job to ``start_publication`` and delivered afterwards (at least once)."""

    __tablename__ = "publications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigId, ForeignKey("jobs.id", ondelete="CASCADE"))
    product_id: Mapped[str] = mapped_column(String(300))
    # Deterministic (job key, product id, run after expiry: db.outbox.message_id_for): a re-sent
    # message carries the same id, so consumers dedupe on it.
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A sender's claim: until then no other sender takes the row (see db.outbox.pending).
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sent')", name="status_known"),
        CheckConstraint("(status = 'sent') = (sent_at IS NOT NULL)", name="sent_iff_sent_at"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        Index("ix_publications_status_id", "status", "id"),
        Index("ix_publications_job_id", "job_id"),
    )


class JobStat(Base):
    """Changes of the per job type and hour figures of finished jobs, appended by triggers on
    ``jobs`` (migration 0008, :mod:`db.stats`) like ``job_counts``: the figures are the sums
    (min and max the extremes) over the rows of a (job type, hour); a row with a
    ``latency_bucket`` counts done jobs whose latency fell in that bucket of
    :data:`db.stats.BUCKET_EDGES`, so percentiles come from a few rows, not from the jobs."""

    __tablename__ = "job_stats"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_type: Mapped[str] = mapped_column(String(200))
    hour: Mapped[datetime] = mapped_column(UtcDateTime)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    cancelled: Mapped[int] = mapped_column(BigInteger, default=0)
    done_late: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_bucket: Mapped[int | None] = mapped_column(Integer)
    latency_sum: Mapped[float | None] = mapped_column(Float)
    latency_min: Mapped[float | None] = mapped_column(Float)
    latency_max: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_job_stats_hour", "hour"),)


class Pause(Base):
    """A paused job type or queue: its ready jobs are neither claimed nor launched
    (:func:`db.pauses.not_paused`)."""

    __tablename__ = "pauses"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str | None] = mapped_column(Text)
    paused_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (CheckConstraint("kind IN ('job_type', 'queue')", name="kind_known"),)
