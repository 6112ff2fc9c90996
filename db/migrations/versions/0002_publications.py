"""The publication outbox.

Why: a job's publication messages must not be lost between "outputs uploaded" and "message
confirmed by the broker". They are written to ``publications`` in the same transaction that moves
the job to ``start_publication``, and a sender delivers them afterwards, at least once, marking
each row sent when the sink confirmed it. ``message_id`` is deterministic (job key, product id),
so a message sent twice after a crash carries the same id and consumers dedupe on it.
``lease_expires_at`` is a sender's short claim on a row, so that concurrent senders on either
backend never send one row at the same time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.models import BigId, JsonDoc, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # op.f(): these names are final; the models' naming convention would prefix them again.
    op.create_table(
        "publications",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            BigId,
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name=op.f("fk_publications_job_id_jobs")),
            nullable=False,
        ),
        sa.Column("product_id", sa.String(300), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("body", JsonDoc, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("sent_at", UtcDateTime),
        sa.Column("lease_expires_at", UtcDateTime),
        sa.Column("last_error", sa.Text),
        sa.UniqueConstraint("message_id", name=op.f("uq_publications_message_id")),
        sa.CheckConstraint(
            "status IN ('pending', 'sent')", name=op.f("ck_publications_status_known")
        ),
        sa.CheckConstraint(
            "(status = 'sent') = (sent_at IS NOT NULL)",
            name=op.f("ck_publications_sent_iff_sent_at"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_publications_attempts_not_negative")),
    )
    op.create_index("ix_publications_status_id", "publications", ["status", "id"])
    op.create_index("ix_publications_job_id", "publications", ["job_id"])


def downgrade() -> None:
    op.drop_table("publications")
