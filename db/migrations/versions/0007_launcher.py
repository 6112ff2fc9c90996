"""The launcher's admission order: ready jobs by job type and the time they became ready.

Why: the ``launch-jobs`` flow (issue 15) ranks each job type's ready jobs by priority escalated
with their wait, so its query filters ``status = 'ready' AND job_type = ?`` and reads
``status_changed_at`` (when the job became ready). ``ix_jobs_claim`` is by queue, not job type;
this partial index holds only ready jobs, like it, so no other transition pays for it. The
launched job's flow run id goes into the existing ``flow_run_id`` column; no column changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.models import READY_ONLY

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_admission",
        "jobs",
        ["job_type", "status_changed_at", "id"],
        postgresql_where=sa.text(READY_ONLY),
        sqlite_where=sa.text(READY_ONLY),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_admission", table_name="jobs")
