"""A temporary Prefect server for the pipeline benchmarks, on its own PostgreSQL database (the
same way the test suite runs one), or the server ``PREFECT_API_URL`` already names.

:func:`serve` starts ``prefect server start`` as the README does, on PostgreSQL or on Prefect's
own SQLite default; its log is ``<home>/server.log``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from bench.scratch import scratch_database

STARTUP_TIMEOUT_SECONDS = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def prefect_api(server_url: str) -> Iterator[str]:
    """The API URL of a Prefect server: ``PREFECT_API_URL`` if set, else a temporary one."""
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing
        return
    with (
        scratch_database(server_url, migrate=False) as database_url,
        tempfile.TemporaryDirectory(prefix="jobline-bench-prefect-") as home,
    ):
        yield from serve(database_url, Path(home))


def serve(database_url: str | None, home: Path) -> Iterator[str]:
    """Start a Prefect server on the empty PostgreSQL database ``database_url`` (None: Prefect's
    default, an SQLite file in ``home``), yield its API URL, stop it afterwards (the test
    suite's session server is started the same way)."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    if database_url is not None:
        database = make_url(database_url).set(drivername="postgresql+asyncpg")
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database.render_as_string(hide_password=False)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with (home / "server.log").open("w") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        api_url = f"http://127.0.0.1:{port}/api"
        try:
            _wait_healthy(api_url, process, home / "server.log")
            yield api_url
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _wait_healthy(api_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {STARTUP_TIMEOUT_SECONDS} s")
