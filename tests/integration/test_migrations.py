"""``alembic upgrade head`` builds exactly the schema db.models declares, and can be undone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from db.engine import make_engine
from db.guard import ILLEGAL_TRANSITION_MARKER
from db.migrate import current_revision, downgrade, head_revision, upgrade
from db.models import Base
from db.records import NewJob
from db.store import JobStore
from jobline.settings import Settings


@pytest.fixture
def empty_pg_settings(empty_pg_url: str, tmp_path: Path) -> Settings:
    """Settings on a brand-new, empty PostgreSQL database, dropped after the test."""
    return Settings(database_url=empty_pg_url, data_dir=tmp_path / "data")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """An empty store on each backend."""
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path / "data")
    return request.getfixturevalue("empty_pg_settings")


def schema_differences(connection: Connection) -> list[Any]:
    """What alembic autogenerate would change to make the database match the models."""
    if connection.dialect.name == "postgresql":
        # The models name no schema: compare against jobline's, as the engine's search path does.
        connection.execute(text("SET search_path TO jobline"))
    return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def check_constraints(engine: Engine, schema: str | None) -> dict[str, set[tuple[str, str]]]:
    """Each table's CHECK constraints as (name, SQL text), as the database reports them."""
    inspector = inspect(engine)
    return {
        table: {
            (c["name"], " ".join(c["sqltext"].split()))
            for c in inspector.get_check_constraints(table, schema=schema)
        }
        for table in Base.metadata.tables
    }


def test_sqlite_schema_equals_the_models(sqlite_settings: Settings) -> None:
    engine = make_engine(sqlite_settings)
    try:
        with engine.connect() as connection:
            assert schema_differences(connection) == []
    finally:
        engine.dispose()


def test_postgresql_schema_equals_the_models(pg_database_url: str) -> None:
    engine = make_engine(Settings(database_url=pg_database_url))
    try:
        with engine.connect() as connection:
            assert schema_differences(connection) == []
    finally:
        engine.dispose()


def test_check_constraints_equal_the_models(empty_settings: Settings, tmp_path: Path) -> None:
    """Autogenerate ignores CHECK constraints: compare names and conditions with the models'."""
    upgrade(empty_settings)
    migrated = make_engine(empty_settings)
    if migrated.dialect.name == "postgresql":
        declared = create_engine(
            migrated.url, connect_args={"options": "-c search_path=models_only"}
        )
        with migrated.begin() as connection:
            connection.execute(text("CREATE SCHEMA models_only"))
        schemas = ("jobline", "models_only")
    else:
        declared = create_engine(f"sqlite:///{tmp_path / 'models.db'}")
        schemas = (None, None)
    try:
        Base.metadata.create_all(declared)
        expected = check_constraints(declared, schemas[1])
        assert expected["jobs"], "the models declare CHECK constraints on jobs"
        assert check_constraints(migrated, schemas[0]) == expected
    finally:
        declared.dispose()
        migrated.dispose()


def test_downgrade_to_base_then_upgrade_again(empty_settings: Settings) -> None:
    engine = make_engine(empty_settings)
    schema = "jobline" if engine.dialect.name == "postgresql" else None
    try:
        assert upgrade(empty_settings) == head_revision()
        downgrade(empty_settings, "base")
        assert current_revision(engine, empty_settings) is None
        assert set(inspect(engine).get_table_names(schema=schema)) <= {"alembic_version"}
        if schema is not None:
            with engine.connect() as connection:
                functions = connection.execute(
                    text("SELECT proname FROM pg_proc WHERE pronamespace = 'jobline'::regnamespace")
                )
                assert functions.scalars().all() == []

        assert upgrade(empty_settings) == head_revision()
        with engine.connect() as connection:
            assert schema_differences(connection) == []
        assert_guard_works(JobStore(engine))
    finally:
        engine.dispose()


def assert_guard_works(store: JobStore) -> None:
    """The re-created triggers refuse an illegal change and record history."""
    [job_id] = store.insert_jobs([NewJob("migrations", "p")]).inserted_ids
    with pytest.raises(DBAPIError, match=ILLEGAL_TRANSITION_MARKER), store.engine.begin() as c:
        c.execute(text("UPDATE jobs SET status = 'ready' WHERE id = :id"), {"id": job_id})
    store.transition(job_id, "configured", expected_from="initialized")
    assert [change.to_status for change in store.history(job_id)] == ["initialized", "configured"]


def test_0005_replaces_the_first_guard_layout(empty_pg_settings: Settings) -> None:
    """A database migrated before 0005 had one row trigger on jobs calling
    ``jobs_guard_status()`` on every write; upgrading leaves only the WHEN-clause triggers."""
    upgrade(empty_pg_settings, "0004")
    engine = make_engine(empty_pg_settings)
    try:
        with engine.begin() as connection:
            for trigger in row_triggers(connection):
                connection.execute(text(f"DROP TRIGGER {trigger} ON jobline.jobs"))
            connection.execute(
                text(
                    "CREATE FUNCTION jobline.jobs_guard_status() RETURNS trigger "
                    "LANGUAGE plpgsql AS $fn$ BEGIN RETURN NEW; END $fn$"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER jobs_guard_status BEFORE INSERT OR UPDATE ON jobline.jobs "
                    "FOR EACH ROW EXECUTE FUNCTION jobline.jobs_guard_status()"
                )
            )
        assert upgrade(empty_pg_settings) == head_revision()
        with engine.connect() as connection:
            assert row_triggers(connection) == {
                "jobs_guard_insert": "jobs_refuse_status",
                "jobs_guard_insert_terminal": "jobs_set_finished",
                "jobs_guard_raw_change": "jobs_raw_change",
                "jobs_guard_status": "jobs_refuse_status",
                "jobs_guard_terminal": "jobs_set_finished",
            }
            legacy = connection.execute(
                text(
                    "SELECT count(*) FROM pg_proc WHERE proname = 'jobs_guard_status' "
                    "AND pronamespace = 'jobline'::regnamespace"
                )
            )
            assert legacy.scalar_one() == 0
        assert_guard_works(JobStore(engine))
    finally:
        engine.dispose()


def row_triggers(connection: Connection) -> dict[str, str]:
    """The BEFORE row triggers on jobs (the guard's), with the function each calls."""
    rows = connection.execute(
        text(
            "SELECT tgname, tgfoid::regproc::text FROM pg_trigger "
            "WHERE tgrelid = 'jobline.jobs'::regclass AND NOT tgisinternal "
            "AND tgtype & 2 = 2 AND tgtype & 1 = 1"  # TRIGGER_TYPE_BEFORE, TRIGGER_TYPE_ROW
        )
    )
    return {name: function.removeprefix("jobline.") for name, function in rows}
