"""Alembic environment, driven from :func:`db.migrate.upgrade`, which passes the connection."""

from __future__ import annotations

from alembic import context

from db.models import Base

connection = context.config.attributes["connection"]
schema = context.config.attributes["schema"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table_schema=schema,
)
with context.begin_transaction():
    context.run_migrations()
