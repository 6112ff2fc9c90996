"""Emptying the test session's PostgreSQL database between tests."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from jobline.settings import Settings

#: Every table a test may fill, emptied before each test that uses the session's database.
TABLES = ("jobs", "job_status_changes", "job_metadata", "meta", "job_stats", "pauses")

_OTHER_SESSIONS = text(
    "SELECT pid, application_name, state, now() - xact_start AS in_transaction, query "
    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def empty_database(settings: Settings) -> None:
    """Delete every row and restart the ids at 1 (history ids too: they go backwards)."""
    engine = create_engine(settings.resolved_database_url)
    tables = ", ".join(f'"{settings.db_schema}".{table}' for table in TABLES)
    try:
        with engine.begin() as connection:
            # A connection left in a transaction by an earlier test would make TRUNCATE wait
            # for ever: fail within seconds instead, naming who holds it.
            connection.execute(text("SET LOCAL lock_timeout = '20s'"))
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    except OperationalError as error:
        with engine.connect() as connection:
            holders = connection.execute(_OTHER_SESSIONS).all()
        pytest.fail(f"cannot empty the test database: {error.orig}; other sessions: {holders}")
    finally:
        engine.dispose()
