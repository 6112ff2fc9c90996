"""Shared fixtures. Services are real: a fresh PostgreSQL database per test session, SQLite files.

When ``CI=true`` a missing service fails the run; elsewhere the tests that need it are skipped
with the reason.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from db.migrate import upgrade
from db.store import JobStore
from jobline.settings import Settings
from tests.support.database import empty_database

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_SERVER_URL = os.environ.get(
    "JOBLINE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def missing_service(reason: str) -> None:
    """Fail in CI, skip elsewhere: a service the test needs is not there."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database on the test server; dropped afterwards."""
    admin = create_engine(
        Settings(database_url=PG_SERVER_URL).resolved_database_url, isolation_level="AUTOCOMMIT"
    )
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        missing_service(f"PostgreSQL at {PG_SERVER_URL} is not reachable: {error}")
    try:
        yield make_url(admin.url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head, dropped afterwards."""
    with scratch_database("jobline_test") as database_url:
        upgrade(Settings(database_url=database_url))
        yield database_url


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """The URL of a brand-new, empty PostgreSQL database, dropped after the test."""
    with scratch_database("jobline_empty") as database_url:
        yield database_url


@pytest.fixture
def pg_settings(pg_database_url: str, tmp_path: Path) -> Settings:
    """Settings on the session's PostgreSQL database, emptied before the test."""
    settings = Settings(database_url=pg_database_url, data_dir=tmp_path / "data")
    empty_database(settings)
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


@pytest.fixture(scope="session")
def prefect_server_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PREFECT_HOME of the session's Prefect server; its log is ``server.log`` in it."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server_home: Path) -> Iterator[str]:
    """One Prefect server for the whole test session (on PostgreSQL); flows in tests report
    to it."""
    with scratch_database("prefect_test") as database_url:
        yield from _serve_prefect(database_url, prefect_server_home)


def _serve_prefect(database_url: str, home: Path) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from bench.prefect_server import serve

    for api_url in serve(database_url, home):
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
            # Send the last run logs while the server still listens.
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture
def jobline_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Settings], Settings]]:
    """Make ``get_settings()`` (used by Prefect tasks) return the given settings' values."""
    from jobline.settings import get_settings
    from tasks.lifecycle import _store

    def apply(settings: Settings) -> Settings:
        for name, value in settings.model_dump(exclude_none=True).items():
            if name == "api_token":
                value = value.get_secret_value()
            if isinstance(value, dict | list):
                value = json.dumps(value)
            monkeypatch.setenv(f"JOBLINE_{name.upper()}", str(value))
        get_settings.cache_clear()
        return get_settings()

    yield apply
    get_settings.cache_clear()
    _store.cache_clear()
