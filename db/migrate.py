"""Create or migrate jobline's schema with alembic, idempotently, on PostgreSQL and SQLite."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from db.engine import make_engine
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
