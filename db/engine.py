"""Engines for the job store: PostgreSQL through psycopg 3, or an SQLite file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from jobline.exceptions import ConfigurationError
from jobline.settings import Settings

#: ``application_name`` of jobline's PostgreSQL sessions (see ``pg_stat_activity``).
APPLICATION_NAME = "jobline"


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    """An engine for the configured store, with the schema on PostgreSQL's search path."""
    url = make_url(settings.resolved_database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return _postgresql_engine(url, settings.db_schema, **kwargs)
    if backend == "sqlite":
        return _sqlite_engine(url, **kwargs)
    raise ConfigurationError(
        f"JOBLINE_DATABASE_URL: jobline supports postgresql and sqlite URLs, not {backend!r}"
    )


def _postgresql_engine(url: Any, schema: str, **kwargs: Any) -> Engine:
    # The schema comes first on the search path so that every unqualified name is jobline's;
    # pre-ping replaces connections a restarted server or pg_terminate_backend has closed.
    # The application name lets operators (and the reliability tests) find jobline's sessions.
    connect_args = {
        "options": f"-c search_path={schema},public",
        "connect_timeout": 10,
        "application_name": APPLICATION_NAME,
    }
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, connect_args=connect_args, **kwargs)


def _sqlite_engine(url: Any, **kwargs: Any) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    # pysqlite's own transaction handling is switched off so that every transaction starts with
    # BEGIN IMMEDIATE: writers queue on the busy timeout instead of failing on lock upgrades.
    engine = create_engine(url, connect_args={"timeout": 60, "isolation_level": None}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
