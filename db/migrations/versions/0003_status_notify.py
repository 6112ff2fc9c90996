"""Notify listeners of committed status changes (PostgreSQL).

Why: the REST API's live event stream and ``wait_for_job`` should react to a status change at
once instead of polling the history. A statement-level trigger on ``job_status_changes`` sends
one notification on channel ``jobline_status`` per statement that wrote history rows; PostgreSQL
delivers it when (and only if) the transaction commits. The payload is
``"<highest history id>:<job id>,<job id>,..."``, or ``"<highest history id>:*"`` when the
statement touched more than 100 jobs (a payload must stay under 8000 bytes). Listeners treat a
notification as a hint and read the history table itself (see ``db.notify``).

SQLite has no notifications: this revision changes nothing there and listeners poll.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CHANNEL = "jobline_status"
#: Above this many distinct jobs in one statement, the payload names none of them ("*").
NOTIFY_JOB_LIMIT = 100


def _schema() -> str:
    return f'"{op.get_context().config.attributes["schema"]}"'


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    s = _schema()
    op.execute(
        f"""
CREATE OR REPLACE FUNCTION {s}.job_status_changes_notify() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    top bigint;
    jobs bigint;
    ids text;
BEGIN
    SELECT max(id), count(DISTINCT job_id) INTO top, jobs FROM new_rows;
    IF top IS NULL THEN
        RETURN NULL;
    END IF;
    IF jobs <= {NOTIFY_JOB_LIMIT} THEN
        SELECT string_agg(DISTINCT job_id::text, ',') INTO ids FROM new_rows;
    ELSE
        ids := '*';
    END IF;
    PERFORM pg_notify('{CHANNEL}', top::text || ':' || ids);
    RETURN NULL;
END
$fn$"""
    )
    op.execute(f"DROP TRIGGER IF EXISTS job_status_changes_notify ON {s}.job_status_changes")
    op.execute(
        f"CREATE TRIGGER job_status_changes_notify AFTER INSERT ON {s}.job_status_changes "
        "REFERENCING NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.job_status_changes_notify()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    s = _schema()
    op.execute(f"DROP TRIGGER IF EXISTS job_status_changes_notify ON {s}.job_status_changes")
    op.execute(f"DROP FUNCTION IF EXISTS {s}.job_status_changes_notify()")
