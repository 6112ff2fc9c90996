"""Create or migrate jobline's schema with alembic, idempotently, on PostgreSQL and SQLite.

Who migrates: an operator, with ``jobline db upgrade`` (and ``jobline run`` / ``jobline demo``,
which upgrade before they run, so the main job needs no step before it). Workers running
deployment flows never do: a shared production database is migrated once, deliberately, by a
user allowed to change its schema, not by whichever worker of whichever version starts first.
A worker's first task checks the schema instead (:func:`require_current_schema`) and fails at
once with a message saying to run ``jobline db upgrade``.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from db.engine import make_engine
from jobline.exceptions import SchemaNotCurrent
from jobline.settings import Settings

#: Serialises concurrent upgrades of the same PostgreSQL database (any constant will do).
_UPGRADE_LOCK_ID = 0x6A6F626C696E65


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "db:migrations")
    return config


def schema_for(engine: Engine, settings: Settings) -> str | None:
    return settings.db_schema if engine.dialect.name == "postgresql" else None


def upgrade(settings: Settings, revision: str = "head", engine: Engine | None = None) -> str:
    """Bring the store to ``revision``; returns the revision the database is at afterwards."""
    engine = engine or make_engine(settings)
    schema = schema_for(engine, settings)
    config = alembic_config()
    with engine.begin() as connection:
        if schema is not None:
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _UPGRADE_LOCK_ID})
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        config.attributes["connection"] = connection
        config.attributes["schema"] = schema
        command.upgrade(config, revision)
    return current_revision(engine, settings) or ""


def downgrade(settings: Settings, revision: str, engine: Engine | None = None) -> None:
    engine = engine or make_engine(settings)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["schema"] = schema_for(engine, settings)
        command.downgrade(config, revision)


def current_revision(engine: Engine, settings: Settings) -> str | None:
    """The revision the database is at, or None before the first upgrade."""
    schema = schema_for(engine, settings)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
        return context.get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def known_revisions() -> list[str]:
    """Every revision this jobline's migrations define, newest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [revision.revision for revision in script.walk_revisions()]


def require_current_schema(engine: Engine, settings: Settings) -> None:
    """Raise :class:`SchemaNotCurrent` unless the database is at this jobline's newest
    revision: empty, older or newer (written by a newer jobline) all stop a worker before it
    writes anything. One query; processes call it once, when they open their store."""
    current = current_revision(engine, settings)
    head = head_revision()
    if current == head:
        return
    where = describe_database(engine, settings)
    if current is None:
        problem = f"{where} has no jobline schema"
    elif current in known_revisions():
        problem = f"{where} is at revision {current}, older than this jobline's {head}"
    else:
        raise SchemaNotCurrent(
            f"{where} is at revision {current}, which this jobline (newest {head}) does not "
            "know: a newer jobline migrated it; install that version on this worker"
        )
    raise SchemaNotCurrent(
        f"{problem}: run `jobline db upgrade` with this JOBLINE_DATABASE_URL "
        "(workers never migrate the schema themselves)"
    )


def describe_database(engine: Engine, settings: Settings) -> str:
    """The database as users name it: its URL without password, and the schema on PostgreSQL."""
    where = engine.url.render_as_string(hide_password=True)
    schema = schema_for(engine, settings)
    return f"job store {where}" + (f" (schema {schema})" if schema else "")
