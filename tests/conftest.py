"""Shared fixtures. Services are real: a fresh PostgreSQL database per test session, SQLite files.

When ``CI=true`` a missing service fails the run; elsewhere the tests that need it are skipped
with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.migrate import upgrade
from db.store import JobStore
from jobline.settings import Settings

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_SERVER_URL = os.environ.get(
    "JOBLINE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def missing_service(reason: str) -> None:
    """Fail in CI, skip elsewhere: a service the test needs is not there."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def _admin_engine():  # type: ignore[no-untyped-def]
    url = Settings(database_url=PG_SERVER_URL).resolved_database_url
    return create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head, dropped afterwards."""
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        missing_service(f"PostgreSQL at {PG_SERVER_URL} is not reachable: {error}")
    name = f"jobline_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(Settings(database_url=PG_SERVER_URL).resolved_database_url).set(database=name)
    database_url = url.render_as_string(hide_password=False)
    upgrade(Settings(database_url=database_url))
    yield database_url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_settings(pg_database_url: str, tmp_path: Path) -> Settings:
    """Settings on the session's PostgreSQL database, emptied before the test."""
    settings = Settings(database_url=pg_database_url, data_dir=tmp_path / "data")
    engine = create_engine(settings.resolved_database_url)
    with engine.begin() as connection:
        tables = ", ".join(
            f'"{settings.db_schema}".{table}'
            for table in ("jobs", "job_status_changes", "job_metadata", "meta")
        )
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return settings


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings)
    return settings


@pytest.fixture(params=["sqlite", "postgresql"])
def any_settings(request: pytest.FixtureRequest) -> Settings:
    """Run the test once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param.replace('postgresql', 'pg')}_settings")


@pytest.fixture
def store(any_settings: Settings) -> Iterator[JobStore]:
    job_store = JobStore.from_settings(any_settings)
    yield job_store
    job_store.engine.dispose()


@pytest.fixture
def pg_store(pg_settings: Settings) -> Iterator[JobStore]:
    job_store = JobStore.from_settings(pg_settings)
    yield job_store
    job_store.engine.dispose()
