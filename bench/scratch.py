"""The scratch PostgreSQL database a benchmark run works in, its child processes, and the
machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import prefect
import psycopg
import sqlalchemy
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from db.migrate import upgrade
from jobline.exceptions import ConfigurationError
from jobline.settings import Settings


def admin_url(settings: Settings) -> str:
    """The server to benchmark against: ``JOBLINE_DATABASE_URL``, which must be PostgreSQL."""
    url = settings.database_url
    if not url or make_url(url).get_backend_name() != "postgresql":
        raise ConfigurationError(
            "JOBLINE_DATABASE_URL: the benchmarks need a PostgreSQL URL "
            "(e.g. postgresql://postgres@127.0.0.1:5432/postgres); they create and drop a scratch "
            f"database on that server. Got {url or 'nothing'!r}."
        )
    return url


def admin_engine(url: str) -> Engine:
    return create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)


@contextmanager
def scratch_database(url: str, *, migrate: bool = True) -> Iterator[str]:
    """A new database on the server of ``url`` (migrated to head), dropped afterwards."""
    admin = admin_engine(url)
    name = f"jobline_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    scratch = make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            upgrade(Settings(database_url=scratch))
        yield scratch
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_child_process(
    module: str, args: list[str], *, env: dict[str, str], scratch: Path, timeout: float, what: str
) -> dict[str, Any]:
    """``python -m module args`` in a fresh process; its report, the JSON last line of its
    output. Its log goes to ``scratch/child.log``, whose end a failure (``what`` failed) shows."""
    log = scratch / "child.log"
    with log.open("w") as stderr:
        process = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=timeout,
            check=False,
        )
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed: {log.read_text()[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def machine_facts(url: str) -> dict[str, Any]:
    """Core count and the versions of PostgreSQL, Prefect, Python and the drivers."""
    admin = admin_engine(url)
    try:
        with admin.connect() as connection:
            server = connection.execute(text("SHOW server_version")).scalar_one()
            settings = {
                name: connection.execute(text(f"SHOW {name}")).scalar_one()
                for name in ("shared_buffers", "synchronous_commit", "max_connections")
            }
    finally:
        admin.dispose()
    return {
        "cores": os.cpu_count(),
        "load_average_1_5_15_min_after": [round(load, 2) for load in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": server,
        "postgresql_settings": settings,
        "prefect": prefect.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
    }
