"""``jobline db upgrade`` as operators run it: the console script, configured by environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from db.migrate import head_revision
from db.models import Base
from jobline.settings import Settings

#: The job store's tables (issue 2); later revisions may add more, all declared in db.models.
JOB_STORE_TABLES = {"jobs", "job_status_changes", "job_metadata", "meta"}
EXPECTED_TABLES = {*Base.metadata.tables, "alembic_version"}


def jobline_command() -> str:
    """The installed console script, next to this interpreter when possible."""
    beside = Path(sys.executable).with_name("jobline")
    found = str(beside) if beside.exists() else shutil.which("jobline")
    if found is None:
        pytest.fail("the jobline console script is not installed: run pip install -e .")
    return found


def run_jobline(*args: str, database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JOBLINE_")},
        "JOBLINE_DATABASE_URL": database_url,
        "JOBLINE_DATA_DIR": str(data_dir),
    }
    return subprocess.run(
        [jobline_command(), *args], env=env, capture_output=True, text=True, timeout=120
    )


def upgrade_twice(database_url: str, data_dir: Path) -> None:
    for attempt in ("first", "second"):
        done = run_jobline("db", "upgrade", database_url=database_url, data_dir=data_dir)
        assert done.returncode == 0, f"{attempt} upgrade failed:\n{done.stdout}\n{done.stderr}"
        assert f"job store at revision {head_revision()}" in done.stdout


def test_upgrade_twice_on_an_empty_postgresql_database(empty_pg_url: str, tmp_path: Path) -> None:
    upgrade_twice(empty_pg_url, tmp_path)
    engine = create_engine(Settings(database_url=empty_pg_url).resolved_database_url)
    try:
        inspector = inspect(engine)
        tables = set(inspector.get_table_names(schema="jobline"))
        assert tables >= JOB_STORE_TABLES
        assert tables == EXPECTED_TABLES
        assert inspector.get_table_names(schema="public") == []
        with engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM jobline.alembic_version"))
            assert version.scalars().all() == [head_revision()]
            triggers = connection.execute(
                text(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'jobline.jobs'::regclass "
                    "AND NOT tgisinternal"
                )
            )
            # The status guard (row triggers with WHEN clauses since 0005), the history,
            # since 0004 the job counts and since 0008 the hourly statistics.
            assert set(triggers.scalars()) == {
                "jobs_guard_insert",
                "jobs_guard_insert_terminal",
                "jobs_guard_raw_change",
                "jobs_guard_status",
                "jobs_guard_terminal",
                "jobs_record_insert",
                "jobs_record_update",
                "jobs_count_insert",
                "jobs_count_update",
                "jobs_count_delete",
                "jobs_count_truncate",
                "jobs_stats_insert",
                "jobs_stats_update",
                "jobs_stats_truncate",
            }
    finally:
        engine.dispose()


def test_upgrade_twice_on_sqlite(tmp_path: Path) -> None:
    upgrade_twice("", tmp_path)
    database = tmp_path / "jobline.db"
    assert database.exists(), "an empty JOBLINE_DATABASE_URL means an SQLite file in data_dir"
    engine = create_engine(f"sqlite:///{database}")
    try:
        tables = set(inspect(engine).get_table_names())
        assert tables >= JOB_STORE_TABLES
        assert tables == EXPECTED_TABLES
        with engine.connect() as connection:
            triggers = connection.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'jobs'")
            )
            assert sorted(triggers.scalars()) == [
                "jobs_guard_insert",
                "jobs_guard_update",
                "jobs_record_insert",
                "jobs_record_update",
                "jobs_stats_insert",
                "jobs_stats_update",
            ]
    finally:
        engine.dispose()
