"""Indexes that fit the hot queries, and job counts kept up to date by the database.

Why (measured by ``python -m bench``, see the README's "Performance"):

* ``ix_jobs_claim`` becomes ``(queue, priority DESC, id) WHERE status = 'ready'``. The old
  ``(queue, status, priority, id)`` could not give the claim order (priority descending, then
  oldest first), so every claim sorted all ready jobs of its queue; and it took an entry for
  every job in every status, rewritten at every transition. Now only ready jobs are in it.
* ``ix_jobs_type_status`` is dropped: it served the counts, which ``job_counts`` now answers, and
  every transition rewrote an entry in it (no transition is a HOT update: the status is indexed).
  Listing a job type's jobs in a status uses ``ix_jobs_status_id`` and filters the type.
* ``ix_jobs_lease`` becomes ``(lease_expires_at) WHERE lease_expires_at IS NOT NULL``: only
  the jobs holding a lease, which is what a sweep of expired leases looks for.
* ``job_counts``: counts by job type x status on a million jobs took 200-600 ms as a
  ``GROUP BY`` over the table. Statement-level triggers on ``jobs`` now append the change of each
  (job type, status) count made by each statement (one row per pair that changed, never an
  update: concurrent writers share no row and wait for nobody). The counts are the sums;
  ``JobStore.count_by_type_status`` folds the rows into one per pair when they pile up.
  PostgreSQL only: on SQLite the table exists (the schema is the same) but stays empty, and the
  store counts the jobs themselves.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.models import LEASED_ONLY, READY_ONLY, BigId

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COUNT_TRIGGERS = {
    # trigger name: (event, transition tables, body of the function)
    "jobs_count_insert": (
        "INSERT",
        "REFERENCING NEW TABLE AS new_rows",
        "INSERT INTO {s}.job_counts (job_type, status, jobs) "
        "SELECT job_type, status, count(*) FROM new_rows GROUP BY job_type, status;",
    ),
    "jobs_count_update": (
        "UPDATE",
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
        # Old and new rows have the same ids: a pair's change is (new rows) - (old rows).
        "INSERT INTO {s}.job_counts (job_type, status, jobs) "
        "SELECT job_type, status, sum(change) FROM ("
        "SELECT job_type, status, -1 AS change FROM old_rows "
        "UNION ALL SELECT job_type, status, 1 FROM new_rows) AS changes "
        "GROUP BY job_type, status HAVING sum(change) <> 0;",
    ),
    "jobs_count_delete": (
        "DELETE",
        "REFERENCING OLD TABLE AS old_rows",
        "INSERT INTO {s}.job_counts (job_type, status, jobs) "
        "SELECT job_type, status, -count(*) FROM old_rows GROUP BY job_type, status;",
    ),
    "jobs_count_truncate": ("TRUNCATE", "", "DELETE FROM {s}.job_counts;"),
}


def _schema() -> str:
    return op.get_context().config.attributes["schema"] or ""


def upgrade() -> None:
    op.drop_index("ix_jobs_type_status", table_name="jobs")
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index(
        "ix_jobs_claim",
        "jobs",
        [sa.column("queue"), sa.column("priority").desc(), sa.column("id")],
        postgresql_where=sa.text(READY_ONLY),
        sqlite_where=sa.text(READY_ONLY),
    )
    op.drop_index("ix_jobs_lease", table_name="jobs")
    op.create_index(
        "ix_jobs_lease",
        "jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text(LEASED_ONLY),
        sqlite_where=sa.text(LEASED_ONLY),
    )
    op.create_table(
        "job_counts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("job_type", sa.String(200), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("jobs", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    s = f'"{_schema()}"'
    for name, (event, tables, body) in COUNT_TRIGGERS.items():
        op.execute(
            f"CREATE OR REPLACE FUNCTION {s}.{name}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$fn$ BEGIN {body.format(s=s)} RETURN NULL; END $fn$"
        )
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON {s}.jobs {tables} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.{name}()"
        )
    # The triggers hold their lock on jobs until this transaction commits: no write is missed.
    op.execute(
        f"INSERT INTO {s}.job_counts (job_type, status, jobs) "
        f"SELECT job_type, status, count(*) FROM {s}.jobs GROUP BY job_type, status"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        s = f'"{_schema()}"'
        for name in COUNT_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {s}.jobs")
            op.execute(f"DROP FUNCTION IF EXISTS {s}.{name}()")
    op.drop_table("job_counts")
    op.drop_index("ix_jobs_lease", table_name="jobs")
    op.create_index("ix_jobs_lease", "jobs", ["status", "lease_expires_at"])
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["queue", "status", "priority", "id"])
    op.create_index("ix_jobs_type_status", "jobs", ["job_type", "status"])
