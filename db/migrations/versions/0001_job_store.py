"""The job store: jobs, their history, their metadata and the store's bookkeeping.

Why: the first schema. Tables are created unqualified: on PostgreSQL the engine puts jobline's
schema first on the search path, so they land there. The status guard and the history triggers
are generated from db.statuses (see db.guard).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.guard import drop_statements, guard_statements
from db.models import BigId, JsonDoc, UtcDateTime, sql_list
from db.statuses import TERMINAL, Status

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _schema() -> str:
    return op.get_context().config.attributes["schema"] or ""


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("job_key", sa.LargeBinary(16), nullable=False),
        sa.Column("job_type", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("product_id", sa.String(300), nullable=False),
        sa.Column("tile_id", sa.String(64)),
        sa.Column("input_path", sa.Text),
        sa.Column("input_publication_date", UtcDateTime),
        sa.Column("output_path", sa.Text),
        sa.Column("output_publication_date", UtcDateTime),
        sa.Column("config", JsonDoc, nullable=False),
        sa.Column("input_files", JsonDoc, nullable=False),
        sa.Column("output_files", JsonDoc, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("status_seq", sa.Integer, nullable=False),
        sa.Column("status_changed_at", UtcDateTime, nullable=False),
        sa.Column("status_message", sa.Text),
        sa.Column("error_class", sa.String(100)),
        sa.Column("error_subtype", sa.String(100)),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("task_run_id", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("retry_at", UtcDateTime),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("last_accessed_at", UtcDateTime, nullable=False),
        sa.Column("claimed_at", UtcDateTime),
        sa.Column("finished_at", UtcDateTime),
        sa.Column("worker", sa.String(200)),
        sa.Column("lease_token", sa.String(64)),
        sa.Column("lease_expires_at", UtcDateTime),
        sa.UniqueConstraint("job_key", name="uq_jobs_job_key"),
        # op.f(): these names are final; the models' naming convention would prefix them again.
        sa.CheckConstraint(
            f"status IN ({sql_list(list(Status))})", name=op.f("ck_jobs_status_known")
        ),
        sa.CheckConstraint(
            f"(status IN ({sql_list(TERMINAL)})) = (finished_at IS NOT NULL)",
            name=op.f("ck_jobs_finished_iff_terminal"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_jobs_attempts_not_negative")),
        sa.CheckConstraint("max_attempts >= 1", name=op.f("ck_jobs_max_attempts_positive")),
    )
    op.create_index("ix_jobs_type_status", "jobs", ["job_type", "status"])
    op.create_index("ix_jobs_claim", "jobs", ["queue", "status", "priority", "id"])
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.create_index("ix_jobs_product_id", "jobs", ["product_id"])
    op.create_index("ix_jobs_tile_date", "jobs", ["tile_id", "input_publication_date"])
    op.create_index("ix_jobs_created_id", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_lease", "jobs", ["status", "lease_expires_at"])

    op.create_table(
        "job_status_changes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            BigId,
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_job_status_changes_job_id_jobs"),
            nullable=False,
        ),
        sa.Column("from_status", sa.String(32)),
        sa.Column("to_status", sa.String(32), nullable=False),
        sa.Column("changed_at", UtcDateTime, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("error_class", sa.String(100)),
        sa.Column("error_subtype", sa.String(100)),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(200)),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("task_run_id", sa.String(64)),
    )
    op.create_index("ix_job_status_changes_job_id_id", "job_status_changes", ["job_id", "id"])

    op.create_table(
        "job_metadata",
        sa.Column(
            "job_id",
            BigId,
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_job_metadata_job_id_jobs"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("value", JsonDoc, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )

    op.create_table(
        "meta",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )

    dialect = op.get_bind().dialect.name
    for statement in guard_statements(dialect, _schema()):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in drop_statements(dialect, _schema()):
        op.execute(statement)
    op.drop_table("meta")
    op.drop_table("job_metadata")
    op.drop_table("job_status_changes")
    op.drop_table("jobs")
