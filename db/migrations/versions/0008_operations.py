"""Operations: timeliness of jobs, statistics kept by the database, operator notes, pauses.

Why: operators ask how production goes, which products are late and what is stuck, without a
scan of a million jobs for each answer.

* ``jobs.due_at`` (when the job becomes late: its input's publication plus its job type's
  ``timeliness_target``) and ``jobs.sensing_time``; ``ix_jobs_unfinished`` holds only the jobs
  that can still be late or stuck (status, status time, job type, due time), so one index-only
  scan counts both without reading the done ones.
* ``job_stats``: finished jobs per job type and hour (done, failed, cancelled, done late) with
  a latency histogram, appended by triggers like ``job_counts`` (``db.stats``), backfilled here
  from the jobs finished so far.
* ``job_status_changes.kind``: ``status`` for the trigger's rows, ``note`` for an operator's
  note, which so shows in the job's history.
* ``pauses``: paused job types and queues (``db.pauses``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db import stats
from db.models import UNFINISHED, BigId, UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _schema() -> str:
    return op.get_context().config.attributes["schema"] or ""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column("jobs", sa.Column("due_at", UtcDateTime(), nullable=True))
    op.add_column("jobs", sa.Column("sensing_time", UtcDateTime(), nullable=True))
    op.create_index(
        "ix_jobs_unfinished",
        "jobs",
        ["status", "status_changed_at"],
        postgresql_include=["job_type", "due_at"],
        postgresql_where=sa.text(UNFINISHED),
        sqlite_where=sa.text(UNFINISHED),
    )
    # A plain ADD COLUMN (no CHECK): SQLite would rebuild the table, under the guard's triggers.
    op.add_column(
        "job_status_changes",
        sa.Column("kind", sa.String(16), nullable=False, server_default=sa.text("'status'")),
    )
    op.create_table(
        "job_stats",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("job_type", sa.String(200), nullable=False),
        sa.Column("hour", UtcDateTime(), nullable=False),
        sa.Column("done", sa.BigInteger, nullable=False),
        sa.Column("failed", sa.BigInteger, nullable=False),
        sa.Column("cancelled", sa.BigInteger, nullable=False),
        sa.Column("done_late", sa.BigInteger, nullable=False),
        sa.Column("latency_bucket", sa.Integer, nullable=True),
        sa.Column("latency_sum", sa.Float, nullable=True),
        sa.Column("latency_min", sa.Float, nullable=True),
        sa.Column("latency_max", sa.Float, nullable=True),
    )
    op.create_index("ix_job_stats_hour", "job_stats", ["hour"])
    op.create_table(
        "pauses",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("paused_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('job_type', 'queue')", name=op.f("ck_pauses_kind_known")),
    )
    triggers = (
        stats.postgresql_triggers(_schema()) if dialect == "postgresql" else stats.sqlite_triggers()
    )
    for statement in triggers:
        op.execute(statement)
    # The triggers hold their lock on jobs until this transaction commits: no finish is missed.
    op.execute(stats.backfill_statement(dialect, _schema()))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in stats.drop_statements(dialect, _schema()):
        op.execute(statement)
    op.drop_table("pauses")
    op.drop_index("ix_job_stats_hour", table_name="job_stats")
    op.drop_table("job_stats")
    op.drop_column("job_status_changes", "kind")
    op.drop_index("ix_jobs_unfinished", table_name="jobs")
    op.drop_column("jobs", "sensing_time")
    op.drop_column("jobs", "due_at")
