"""The status guard decides in WHEN clauses, so legal transitions call no function per row.

Why (measured by ``python -m bench``, see the README's "Performance"): migration 0001's guard was
one BEFORE row trigger calling a PL/pgSQL function on every insert and update of ``jobs``; that
call was 10-25 % of inserting 100,000 jobs (COPY into ``jobs`` with the guard off: 1.8 s instead
of 2.0-2.4 s) and a function call per job per status in the lifecycle. The same rules now sit in
the triggers' WHEN conditions (``db.guard``): the function runs only for an illegal move (to
raise) or for raw SQL that changed the status alone (to give it a context and ``finished_at``).
What the database accepts and records is unchanged; ``tests/integration/test_guard.py`` checks
every pair of statuses.

SQLite's guard already used WHEN clauses: nothing changes there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from db.guard import guard_statements

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for statement in guard_statements("postgresql", op.get_context().config.attributes["schema"]):
        op.execute(statement)


def downgrade() -> None:
    # The first layout accepted and recorded exactly what this one does; db.guard only generates
    # the current layout, which revision 0004 works with as it is.
    pass
