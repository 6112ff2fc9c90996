"""``db.migrate.require_current_schema``: what a worker's first task finds on each kind of store."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from db.engine import make_engine
from db.migrate import (
    describe_database,
    head_revision,
    known_revisions,
    require_current_schema,
    upgrade,
)
from jobline.exceptions import SchemaNotCurrent
from jobline.settings import Settings


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(data_dir=tmp_path / "data")
    return Settings(database_url=request.getfixturevalue("empty_pg_url"), data_dir=tmp_path)


def check(settings: Settings) -> None:
    engine = make_engine(settings)
    try:
        require_current_schema(engine, settings)
    finally:
        engine.dispose()


def test_empty_older_newer_and_current_stores(empty_store: Settings) -> None:
    with pytest.raises(SchemaNotCurrent, match=r"has no jobline schema: run `jobline db upgrade`"):
        check(empty_store)

    older = known_revisions()[1]
    upgrade(empty_store, older)
    expected = rf"is at revision {older}, older than this jobline's {head_revision()}: run"
    with pytest.raises(SchemaNotCurrent, match=expected):
        check(empty_store)

    upgrade(empty_store)
    check(empty_store)  # current: no error

    engine = make_engine(empty_store)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = 'from-the-future'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaNotCurrent, match="does not know: a newer jobline migrated it"):
        check(empty_store)


def test_the_message_names_the_store_without_its_password(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(SchemaNotCurrent) as refused:
        check(settings)
    assert str(tmp_path / "store.db") in str(refused.value)
    pg = Settings(database_url="postgresql://worker:s3cret@127.0.0.1:1/jobs")
    assert "s3cret" not in describe(pg)


def describe(settings: Settings) -> str:
    engine = make_engine(settings)
    try:
        return describe_database(engine, settings)
    finally:
        engine.dispose()
