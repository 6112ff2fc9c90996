"""The Prefect server's own scheduler, end to end, on both of its database back ends.

Each back end gets what the README's "Deployments and workers" gives an operator: a server
started with ``prefect server start`` (the session's server, on PostgreSQL, and one of this
test's own on Prefect's SQLite default), ``jobline db upgrade``, the ``jobline`` work pool,
``prefect deploy --all`` from the repository root and a worker on the pool. Nobody creates a flow
run by hand: the test waits until the server's scheduler has created runs of the ``maintenance``
deployment and the worker has run one of them to COMPLETED, and checks that this run rescued a
job whose worker was lost. Any ERROR the server logs meanwhile fails the test (this is how
Prefect 3.8.8's scheduler shows that it breaks on SQLAlchemy 2.1: an ERROR on every pass, and
no run is ever created), with one exception on the SQLite server: SQLite's "database is
locked". Under load Prefect's SQLite back end logs it in two ways, both seen here:

* the worker channel persists a heartbeat in a deferred transaction that reads, then writes;
  when another write commits in between, SQLite refuses at once (its busy timeout does not apply
  to a stale snapshot), Prefect logs an ERROR and closes the channel, and the worker goes on
  polling and heartbeating over HTTP (it failed a CI run once);
* a background task (``mark_work_queues_ready``, seen with two test processes on the machine)
  waits out the 60 s busy timeout and fails; its next run does the work.

That is a limit of Prefect's SQLite back end under load, not a broken scheduler: the test counts
and prints those errors, fails on any other, and still needs the runs to be created and one to
complete. Production servers run on PostgreSQL (README, "Deployments and workers").

The back ends run at the same time, so the test costs about one server start, one deployment and
one wait for the next minute, not two of each.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from bench.prefect_server import serve, stop_process
from db.records import NewJob
from db.store import JobStore
from jobline.settings import Settings
from tests.acceptance.test_deployment import REPO, prefect
from tests.conftest import scratch_database
from tests.support.prefect_api import delete_deployment, deployment, scheduled_runs

#: Seconds after deploying within which the scheduler must have created the first runs: its
#: pass over recently changed deployments runs every 5 s.
SCHEDULED_WITHIN = 90
#: Seconds after deploying within which the worker must have finished a scheduled run: the run
#: is due on the next minute, a worker takes 5-10 s to start a flow run, the machine is shared.
COMPLETED_WITHIN = 240
#: A line the server logged at level ERROR: Prefect's ``12:00:00.000 | ERROR | …`` or
#: uvicorn's ``ERROR:    …``.
ERROR_LINE = re.compile(r"^(?:.*\|\s*ERROR\s*\||ERROR:).*$", re.MULTILINE)
#: Where a log record starts (a Prefect or a uvicorn line): a record runs to the next one, so
#: an ERROR's traceback is part of its record.
RECORD_START = re.compile(r"^(?=\d{2}:\d{2}:\d{2}\.\d+ \||[A-Z]+:\s)", re.MULTILINE)
#: The one error the SQLite server may log (module docstring).
SQLITE_LOCKED = "(sqlite3.OperationalError) database is locked"
JOBLINE = str(Path(sys.executable).with_name("jobline"))


@dataclass
class ServerLog:
    """A server's log from the moment this object was made."""

    path: Path
    offset: int = 0
    #: A text that makes an ERROR record tolerable (counted, not failed on).
    tolerated: str | None = None

    @classmethod
    def from_now(cls, path: Path) -> ServerLog:
        return cls(path, path.stat().st_size if path.exists() else 0)

    def assert_no_errors(self) -> int:
        """Fails on an ERROR record; returns how many tolerated ones the log holds."""
        with self.path.open("rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
        errors = [record for record in RECORD_START.split(text) if ERROR_LINE.match(record)]
        tolerated = [e for e in errors if self.tolerated is not None and self.tolerated in e]
        failing = [e for e in errors if e not in tolerated]
        assert not failing, "the Prefect server logged errors:\n" + "\n".join(
            record[-4000:] for record in failing[:2]
        )
        return len(tolerated)


class StoppedForTheOther(Exception):
    """A back end stopped waiting because the other one failed."""


@dataclass
class Outcome:
    backend: str
    phases: dict[str, float]
    seconds_to_first_scheduled_run: float
    scheduled_maintenance_runs: int
    #: ERRORs the server logged that the test tolerates (module docstring).
    tolerated_server_errors: int


@pytest.mark.slow
@pytest.mark.timeout(600)  # a server start, a deployment and the waits above, under load
def test_the_server_schedules_maintenance_and_a_worker_runs_it(
    tmp_path: Path, prefect_api_url: str, prefect_server_home: Path
) -> None:
    session_log = ServerLog.from_now(prefect_server_home / "server.log")
    started = time.monotonic()
    # When one back end fails, the other stops waiting: the failure is reported at once.
    failed = threading.Event()

    def guarded(back_end: Callable[..., Outcome], *args: object) -> Outcome:
        try:
            return back_end(*args, failed)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(
                guarded, on_session_server, tmp_path / "postgresql", prefect_api_url, session_log
            ),
            pool.submit(guarded, on_own_sqlite_server, tmp_path / "sqlite"),
        ]
        errors = [future.exception() for future in futures]
    for error in errors:
        if error is not None and not isinstance(error, StoppedForTheOther):
            raise error
    outcomes = [future.result() for future in futures]
    for outcome in outcomes:
        print(outcome)
    print(f"both back ends: {time.monotonic() - started:.1f} s")


def on_session_server(root: Path, api_url: str, log: ServerLog, failed: threading.Event) -> Outcome:
    """The session's PostgreSQL-backed server, with a jobline store on PostgreSQL."""
    with (
        scratch_database("jobline_sched") as jobline_database,
        httpx.Client(base_url=api_url, timeout=30) as api,
    ):
        # Earlier tests deployed too: start from no maintenance deployment (deleting it deletes
        # its scheduled runs), as on a fresh server.
        delete_deployment(api, "maintenance/maintenance")
        return schedule_and_run("postgresql", root, api_url, log, jobline_database, {}, failed)


def on_own_sqlite_server(root: Path, failed: threading.Event) -> Outcome:
    """A server of its own on Prefect's SQLite default, with a jobline store on SQLite."""
    started = time.monotonic()
    home = root / "server-home"
    home.mkdir(parents=True)
    with contextlib.contextmanager(serve)(None, home) as api_url:
        server = {"server": round(time.monotonic() - started, 1)}
        log = ServerLog(home / "server.log", tolerated=SQLITE_LOCKED)
        database = f"sqlite:///{root / 'jobline.db'}"
        return schedule_and_run("sqlite", root, api_url, log, database, server, failed)


def schedule_and_run(
    backend: str,
    root: Path,
    api_url: str,
    log: ServerLog,
    jobline_database: str,
    phases: dict[str, float],
    failed: threading.Event,
) -> Outcome:
    """The README's deployment path on one server; waits for a scheduled run to complete."""
    root.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()

    def phase(name: str) -> None:
        nonlocal clock
        phases[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    env = operator_env(api_url, jobline_database, root)
    subprocess.run([JOBLINE, "db", "upgrade"], env=env, check=True, timeout=120)
    lost_job = job_of_a_lost_worker(jobline_database)
    phase("upgrade")
    with contextlib.ExitStack() as stack:
        prefect(env, "work-pool", "create", "jobline", "--type", "process", "--overwrite")
        # The worker starts while the deployments are made (it takes seconds to be ready).
        stack.enter_context(worker(env, root / "worker.log"))
        phase("pool")
        deploying = datetime.now(UTC)
        prefect(env, "deploy", "--all")
        phase("deploy")

        api = stack.enter_context(httpx.Client(base_url=api_url, timeout=30))
        maintenance = deployment(api, "maintenance/maintenance")["id"]
        first_scheduled = completed = None
        while completed is None:
            if failed.is_set():
                raise StoppedForTheOther(backend)
            log.assert_no_errors()
            elapsed = time.monotonic() - clock
            runs = scheduled_runs(api, maintenance, created_after=deploying)
            if runs and first_scheduled is None:
                first_scheduled = elapsed
            assert first_scheduled is not None or elapsed < SCHEDULED_WITHIN, (
                f"{backend}: no scheduled run of maintenance {SCHEDULED_WITHIN} s after deploying"
            )
            completed = next((r for r in runs if r["state_type"] == "COMPLETED"), None)
            assert completed is not None or elapsed < COMPLETED_WITHIN, (
                f"{backend}: no scheduled maintenance run completed within {COMPLETED_WITHIN} s: "
                f"{[(r['name'], r['state_type']) for r in runs[:5]]}; worker log: "
                f"{(root / 'worker.log').read_text()[-3000:]}"
            )
            time.sleep(1)
        phase("scheduled run")

        # The scheduler keeps at least 3 runs ahead of each active schedule (its min_runs).
        assert len(runs) >= 3, runs
        snow_cover = deployment(api, "run-pipeline/snow-cover")["id"]
        assert scheduled_runs(api, snow_cover, created_after=deploying)
    assert_rescued(jobline_database, lost_job)
    tolerated = log.assert_no_errors()
    return Outcome(backend, phases, round(first_scheduled or 0.0, 1), len(runs), tolerated)


def operator_env(api_url: str, database_url: str, root: Path) -> dict[str, str]:
    """An operator's shell at the repository root: the README's settings, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBLINE_", "PREFECT_"))}
    env.update(
        PREFECT_API_URL=api_url,
        # The clients' own profile and caches, apart from the other back end's.
        PREFECT_HOME=str(root / "client-home"),
        JOBLINE_DATABASE_URL=database_url,
        JOBLINE_DATA_DIR=str(root / "data"),
        JOBLINE_RUNNER="local",
        PWD=str(REPO),
    )
    return env


@contextlib.contextmanager
def worker(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``prefect worker start --pool jobline``, stopped afterwards.

    Two knobs differ from the defaults, for time only: the worker asks for runs every 2 s
    instead of 10 s, and takes runs due within the next 45 s instead of 10 s, so the flow run's
    process has started (5-10 s of imports here) and waits for its scheduled time instead of
    starting after it. Less than the 60 s interval: with two maintenance runs taken at once,
    the deployment's limit of one would cancel the earlier and run the later."""
    worker_env = {
        **env,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "45",
    }
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "jobline"]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=worker_env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            stop_process(process)


def job_of_a_lost_worker(database_url: str) -> int:
    """A queued job whose lease has already expired: the next maintenance pass rescues it."""
    store = JobStore.from_settings(Settings(database_url=database_url))
    try:
        [job_id] = store.insert_jobs([NewJob("tests:Lost", "lost-1")]).inserted_ids
        store.transition(job_id, "configured", expected_from="initialized")
        store.transition(job_id, "ready", expected_from="configured")
        [claimed] = store.claim("default", 1, "gone-worker", lease_seconds=0.001)
        assert claimed.id == job_id
        return job_id
    finally:
        store.engine.dispose()


def assert_rescued(database_url: str, job_id: int) -> None:
    store = JobStore.from_settings(Settings(database_url=database_url))
    try:
        history = store.history(job_id)
        assert any(c.error_class == "WorkerLost" for c in history), [
            (c.to_status, c.message) for c in history
        ]
    finally:
        store.engine.dispose()
