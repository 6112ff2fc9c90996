"""A real ``jobline api`` server in a subprocess, for the API tests.

Test modules import the fixtures they use (``from tests.integration.api_server import
api_server``). The server is shared by a module's tests (starting one takes a few seconds); the
``pg_settings`` fixture empties the database before each test all the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.prefect_server import stop_process

TOKEN = "test-token-0123456789"
STARTUP_SECONDS = 60.0
#: A job type every test can submit (it ships with jobline).
JOB_TYPE = "jobtypes.demo:SnowCover"
#: Every status of a job that goes all the way, in order (REFERENCE.md's lifecycle).
HAPPY_PATH = (
    "configured",
    "ready",
    "queued",
    "started",
    "pre_processing",
    "processing",
    "post_processing",
    "processed",
    "start_publication",
    "published",
    "done",
)


@dataclass
class ApiServer:
    """A running server: its base URL, its token, its process and log."""

    url: str
    token: str | None
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def data_dir(self) -> Path:
        """The server's JOBLINE_DATA_DIR (where the demo job type's storage is)."""
        return self.log_path.parent

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client on the server, with the token."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, headers=self.headers, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    database_url: str,
    data_dir: Path,
    *,
    token: str | None = TOKEN,
    extra_args: tuple[str, ...] = (),
    job_types: tuple[str, ...] = (),
    python_path: tuple[Path, ...] = (),
) -> ApiServer:
    """Start ``jobline api`` on a free loopback port and wait until /health answers;
    ``job_types`` are registered (JOBLINE_JOB_TYPES), importable from ``python_path``."""
    port = free_port()
    env = {
        **os.environ,
        "JOBLINE_DATABASE_URL": database_url,
        "JOBLINE_DATA_DIR": str(data_dir),
        "JOBLINE_JOB_TYPES": ",".join(job_types),
    }
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, python_path), env.get("PYTHONPATH", "")])
    env.pop("JOBLINE_API_TOKEN", None)
    if token is not None:
        env["JOBLINE_API_TOKEN"] = token
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"api-{port}.log"
    command = [sys.executable, "-c", "from cli.main import main; main()", "api"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, *extra_args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = ApiServer(f"http://127.0.0.1:{port}", token, process, log_path)
    try:
        _wait_healthy(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def _wait_healthy(server: ApiServer) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the API server exited early:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API server did not answer /health in time:\n{server.log()}")


def stop_server(server: ApiServer) -> None:
    stop_process(server.process, 10)


@pytest.fixture(scope="module")
def api_server(
    pg_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """``jobline api`` on the session's PostgreSQL database, for one test module."""
    server = start_server(pg_database_url, tmp_path_factory.mktemp("api"))
    yield server
    stop_server(server)


# ------------------------------------------------------------------------ event streams


@dataclass
class EventReader:
    """Reads an SSE stream in a thread, collecting ``(id, data)`` of each ``status`` event.

    The stream is closed when ``stop_when(events)`` holds after an event, or by :meth:`close`.
    """

    server: ApiServer
    params: dict[str, Any] = field(default_factory=dict)
    last_event_id: int | None = None
    stop_when: Any = None
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _closing: bool = False
    _response: httpx.Response | None = None

    def start(self) -> EventReader:
        threading.Thread(target=self._run, daemon=True).start()
        assert self.connected.wait(10), "the event stream did not open"
        if self.error is not None:
            raise self.error
        return self

    def close(self) -> None:
        """Disconnect (from any thread)."""
        self._closing = True
        if self._response is not None and not self.finished.is_set():
            with contextlib.suppress(Exception):
                self._response.close()
        self.finished.wait(10)

    def wait_until_finished(self, timeout: float = 30.0) -> list[tuple[int, dict[str, Any]]]:
        """The events, once ``stop_when`` held (AssertionError on timeout)."""
        if not self.finished.wait(timeout):
            self.close()
            raise AssertionError(f"the stream did not reach its end; got {self.events}")
        if self.error is not None:
            raise self.error
        return list(self.events)

    def _run(self) -> None:
        headers = dict(self.server.headers)
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        timeout = httpx.Timeout(10.0, read=60.0)
        try:
            with (
                httpx.Client(base_url=self.server.url, headers=headers, timeout=timeout) as client,
                client.stream("GET", "/events", params=self.params) as response,
            ):
                self._response = response
                assert response.status_code == 200, response.read()
                self.connected.set()
                self._read(response)
        except BaseException as error:  # noqa: BLE001 - surfaced to the test
            if not self._closing:
                self.error = error
        finally:
            self.connected.set()
            self.finished.set()

    def _read(self, response: httpx.Response) -> None:
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if fields.get("event") == "status":
                    self.events.append((int(fields["id"]), json.loads(fields["data"])))
                    if self.stop_when is not None and self.stop_when(self.events):
                        return
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
