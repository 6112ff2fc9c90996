"""Reliability end to end, against the real PostgreSQL, Docker and RabbitMQ: a killed worker, a
restarted database, terminated connections, several workers, a slow but live worker.

Every test stops by itself: subprocesses and waits have deadlines, servers are stopped in
``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench.prefect_server import free_port
from db import maintenance, outbox
from db.migrate import upgrade
from db.records import JobFilter
from db.statuses import is_legal
from db.store import JobStore
from jobline.settings import Settings
from tasks.maintenance import run_maintenance
from tests.conftest import missing_service
from tests.integration.test_amqp import BROKER_URL, Broker, broker  # noqa: F401 - fixture
from tests.support.jobtypes import declare_job_types

REPO = Path(__file__).resolve().parents[2]
MODULE = "reliability_jobtypes"
SLEEPY_IMAGE = "jobline-test/sleepy:1"
#: The first attempt sleeps long enough to be killed; the next one succeeds at once.
SLEEPY_SCRIPT = (
    'if [ "$JOBLINE_ATTEMPT" = 1 ]; then echo sleeping; sleep 120; fi; echo ok > output/x'
)
#: Records each run (job id, attempt) in a file every worker shares, then writes one output.
QUICK_SCRIPT = (
    'echo "$JOBLINE_JOB_ID $JOBLINE_ATTEMPT" >> "$RUNS_FILE"; sleep "$PAUSE"; '
    "cat input/*/data.txt > output/result.txt"
)
#: Longest any single wait of these tests may take (seconds).
DEADLINE = 120


# --------------------------------------------------------------------------------- helpers


def write_job_types(directory: Path, inputs: Path, outputs: Path, runs: Path) -> None:
    """The job types of these tests, in a module outside the repository, registered by an
    entry point as an installed package's would be."""
    directory.mkdir(parents=True, exist_ok=True)
    source = f"""
        from jobtypes.base import JobType

        class Sleepy(JobType):
            name = "sleepy"
            queue = "sleepy"
            image = {SLEEPY_IMAGE!r}
            command = ["/bin/sh", "-c", {SLEEPY_SCRIPT!r}]
            runner = "docker"
            worker_flavor = "extra_small"
            timeout = 300
            input_storage = "file://{inputs}/sleepy"
            output_storage = "file://{outputs}"

        class Quick(JobType):
            name = "quick"
            queue = "quick"
            local_command = ["sh", "-c", {QUICK_SCRIPT!r}]
            environment = {{"RUNS_FILE": {str(runs)!r}, "PAUSE": "0"}}
            runner = "local"
            timeout = 60
            input_storage = "file://{inputs}/quick"
            output_storage = "file://{outputs}"

        class Paced(Quick):
            name = "paced"
            queue = "paced"
            environment = {{"RUNS_FILE": {str(runs)!r}, "PAUSE": "0.3"}}
            input_storage = "file://{inputs}/paced"
        """
    (directory / f"{MODULE}.py").write_text(textwrap.dedent(source))
    declare_job_types(
        directory,
        "reliability-jobtypes",
        {name: f"{MODULE}:{name.title()}" for name in ("sleepy", "quick", "paced")},
    )
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules.pop(MODULE, None)


def write_products(folder: Path, count: int) -> None:
    for n in range(count):
        product = folder / f"P{n:04d}"
        product.mkdir(parents=True, exist_ok=True)
        (product / "data.txt").write_text(f"data of product {n}\n")


class Env:
    """Where a test's job types, inputs and outputs live."""

    def __init__(self, root: Path) -> None:
        self.src, self.inputs, self.outputs = root / "src", root / "in", root / "out"
        self.runs = root / "runs.txt"
        write_job_types(self.src, self.inputs, self.outputs, self.runs)

    def runs_per_job(self) -> Counter[int]:
        lines = self.runs.read_text().split("\n") if self.runs.exists() else []
        return Counter(int(line.split()[0]) for line in lines if line)


def insert_ready(
    settings: Settings, store: JobStore, job_type: str, count: int, env: Env
) -> list[int]:
    """``count`` products and their jobs, configured and ready, through the plain steps."""
    from jobtypes.base import load_job_type
    from tasks import steps

    kind = load_job_type(job_type, settings)
    write_products(env.inputs / kind.name, count)
    ctx = steps.StepContext(settings=settings, store=store)
    today = datetime.now(UTC)
    discovery = steps.discover_inputs(ctx, kind, today - timedelta(1), today + timedelta(1))
    inserted = steps.insert_jobs(ctx, kind, discovery).inserted
    ready = steps.configure_jobs(ctx, kind, inserted).ready
    assert len(ready) == count
    return ready


def worker_env(settings: Settings, prefect_api_url: str, env: Env) -> dict[str, str]:
    """The environment of a worker subprocess: jobline's settings and the Prefect server."""
    variables = {k: v for k, v in os.environ.items() if not k.startswith("JOBLINE_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        if name == "api_token":
            continue
        variables[f"JOBLINE_{name.upper()}"] = (
            json.dumps(value) if isinstance(value, dict | list) else str(value)
        )
    variables.update(
        PREFECT_API_URL=prefect_api_url,
        PREFECT_LOGGING_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(env.src), str(REPO)]),
    )
    return variables


def start_worker(code: str, environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=environment, stdout=output, stderr=output
        )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def statuses(store: JobStore, job_id: int) -> list[str]:
    return [change.to_status for change in store.history(job_id)]


def assert_legal_histories(store: JobStore, job_ids: list[int]) -> None:
    for job_id in job_ids:
        previous: str | None = None
        for status in statuses(store, job_id):
            assert is_legal(previous, status), f"job {job_id}: {previous} -> {status}"
            previous = status


def detours(store: JobStore, job_ids: list[int]) -> Counter[str]:
    """How often the jobs left the happy path, by status (printed: shown when a test fails)."""
    counts: Counter[str] = Counter()
    for job_id in job_ids:
        counts.update(s for s in statuses(store, job_id) if s.endswith("error") or s == "cancelled")
    print(f"detours of {len(job_ids)} jobs: {dict(counts) or 'none'}")
    return counts


def jobs_of(store: JobStore, job_type: str) -> dict[int, str]:
    page = store.list_jobs(JobFilter(job_type=job_type), limit=10_000)
    return {job.id: job.status for job in page.jobs}


def drive_until_done(
    settings: Settings, store: JobStore, job_type: str, expected: int, timeout: float = DEADLINE
) -> None:
    """What the scheduled deployments do: maintenance passes and processing runs, until every
    job of the type is done (jobs a failure left to maintenance are rescued and run again)."""
    from flows.process import process_jobs

    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_of(store, job_type)
        if len(jobs) == expected and set(jobs.values()) == {"done"}:
            return
        assert time.monotonic() < deadline, f"not all done: {Counter(jobs.values())}"
        run_maintenance(settings, store)
        if "ready" in jobs.values():
            process_jobs(job_type=job_type, concurrency=4)
        else:
            time.sleep(0.5)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def docker_client() -> Iterator[object]:
    from tasks.runners.docker import docker_available

    if not docker_available():
        missing_service("no Docker engine answers")
    import docker

    client = docker.from_env()
    yield client
    client.close()


def job_containers(client: object, store: JobStore, job_id: int) -> list[object]:
    """The job's containers (job ids are per store, and other stores may share the engine)."""
    from tasks.runners.docker import store_filter

    return client.containers.list(  # type: ignore[attr-defined]
        all=True, filters=store_filter(store.store_id(), job_id)
    )


# ---------------------------------------------------------------------- a killed worker


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_worker_killed_mid_container_is_rescued_and_its_job_published_once(
    pg_settings: Settings,
    prefect_api_url: str,
    jobline_env: Callable[[Settings], Settings],
    docker_client: object,
    broker: Broker,  # noqa: F811
    env: Env,
    tmp_path: Path,
) -> None:
    from tasks.runners.images import build_busybox_image

    build_busybox_image(docker_client, SLEEPY_IMAGE)  # type: ignore[arg-type]
    settings = jobline_env(
        pg_settings.model_copy(
            update={
                "lease_seconds": 3.0,
                "heartbeat_seconds": 1.0,
                "retry_base_seconds": 0.0,
                "publication_sink": BROKER_URL,
                "amqp_exchange": broker.exchange,
                "amqp_routing_key": broker.routing_key,
            }
        )
    )
    store = JobStore.from_settings(settings)
    (job_id,) = insert_ready(settings, store, f"{MODULE}:Sleepy", 1, env)

    code = f"from flows.process import process_job; process_job(job_id={job_id})"
    worker = start_worker(code, worker_env(settings, prefect_api_url, env), tmp_path / "w.log")
    try:
        wait_for(
            lambda: (
                store.get_job(job_id, touch=False).status == "processing"
                and any(c.status == "running" for c in job_containers(docker_client, store, job_id))
            ),
            "the worker's container to run",
        )
        time.sleep(2 * settings.heartbeat_seconds)  # the lease is being renewed meanwhile
        assert maintenance.rescue_lost(store, store.clock()) == [], "a live worker keeps its job"
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    (orphan,) = job_containers(docker_client, store, job_id)
    assert orphan.status == "running", "the container outlives its killed worker"

    wait_for(lambda: job_id in maintenance.expired_leases(store, store.clock()), "lease expiry")
    from flows.maintenance import maintenance as maintenance_flow

    report = maintenance_flow()  # as the deployment runs it

    assert report.rescued == [job_id]
    assert report.containers_removed == [orphan.name]
    assert job_containers(docker_client, store, job_id) == []
    assert store.get_job(job_id).status == "ready"

    from flows.process import process_job

    outcome = process_job(job_id=job_id)

    assert outcome is not None and outcome.ok
    job = store.get_job(job_id)
    assert (job.status, job.attempts) == ("done", 2)
    history = store.history(job_id)
    lost = next(change for change in history if change.to_status == "internal_error")
    assert lost.error_class == maintenance.WORKER_LOST
    assert (lost.message or "").startswith("worker lost: ")
    assert [c.to_status for c in history].count("processing") == 2
    assert_legal_histories(store, [job_id])
    received = broker.drain()
    rows = outbox.publications_of(store, job_id)
    assert len(rows) == 1 and rows[0].status == "sent"
    assert [props.message_id for props, _body in received] == [rows[0].message_id], (
        "exactly one message per product"
    )
    assert job_containers(docker_client, store, job_id) == []


# ------------------------------------------------------------------- a slow, live worker


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_slow_live_worker_is_not_rescued_and_a_stalled_one_cannot_write(
    pg_settings: Settings, env: Env
) -> None:
    """Real time: 1 s leases renewed every 0.25 s by the lease keeper, maintenance every 0.2 s."""
    from jobtypes.base import load_job_type
    from tasks import steps
    from tasks.runners.local import LocalRunner

    settings = pg_settings.model_copy(
        update={"lease_seconds": 1.0, "heartbeat_seconds": 0.25, "retry_base_seconds": 0.0}
    )
    store = JobStore.from_settings(settings)
    live, stalled = insert_ready(settings, store, f"{MODULE}:Paced", 2, env)
    kind = load_job_type(f"{MODULE}:Paced", settings)
    slow = kind.local_command
    ctx = steps.StepContext(settings=settings, store=store)
    stop = threading.Event()
    rescued: list[int] = []

    def maintain() -> None:
        while not stop.wait(0.2):
            rescued.extend(maintenance.rescue_lost(store, store.clock()))

    sweeper = threading.Thread(target=maintain)
    sweeper.start()
    try:
        kind.local_command = ["sh", "-c", "sleep 3; echo ok > output/x"]  # 3 leases long
        claimed = {job.job_id: job for job in steps.claim_jobs(ctx, kind, 2)}
        outcome = steps.pre_process(ctx, kind, claimed[live])
        outcome = steps.run_container(ctx, kind, outcome, LocalRunner())
        outcome = steps.publish(ctx, kind, steps.post_process(ctx, kind, outcome))
        assert outcome.ok
        assert store.get_job(live).status == "done"

        # The other worker stalls past its lease while its container runs (as if paused):
        # maintenance takes the job; when the worker's keeper beats again, it learns so.
        kind.local_command = ["sh", "-c", "sleep 30"]
        stalled_outcome = steps.pre_process(ctx, kind, claimed[stalled])
        began = time.monotonic()
        running: list[steps.StepOutcome] = []
        runner = threading.Thread(
            target=lambda: running.append(
                steps.run_container(ctx, kind, stalled_outcome, LocalRunner())
            )
        )
        runner.start()
        wait_for(lambda: store.get_job(stalled, touch=False).status == "processing", "processing")
        late = store.clock() + timedelta(seconds=60)  # its lease, seen a minute later
        assert maintenance.rescue_lost(store, late) == [stalled]
        runner.join(20)
    finally:
        stop.set()
        sweeper.join(10)
        kind.local_command = slow
    (after,) = running
    assert rescued == [], "maintenance never took a job whose worker renewed its lease"
    assert "internal_error" not in statuses(store, live)
    assert not after.ok
    assert time.monotonic() - began < 15, "the lost lease stopped the 30 s processing"
    job = store.get_job(stalled)
    assert job.status in ("ready", "queued"), "the stalled worker wrote nothing after the rescue"
    assert statuses(store, stalled)[-3:] == ["internal_error", "error_checked", "ready"]
    assert "run-container" not in store.list_metadata(stalled)
    assert_legal_histories(store, [live, stalled])


# --------------------------------------------------------------- the database goes away


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary directory, a free port):
    restarting it disturbs neither the session's Prefect server nor anything else on the
    machine's main server."""

    def __init__(self, bindir: Path, root: Path, user: str | None) -> None:
        self.bindir, self.data, self.user = bindir, root / "data", user
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/jobline"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            timeout=90,
            user=self.user,
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.start()
        admin = create_engine(
            self.url.replace("/jobline", "/postgres"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE jobline"))
        admin.dispose()

    def start(self) -> None:
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.data} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off"
        )
        log = str(self.data / "server.log")
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")


def _postgres_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    try:
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(bindir) if (Path(bindir) / "pg_ctl").exists() else None


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _postgres_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        missing_service("the PostgreSQL server programs (initdb, pg_ctl) are not installed")
    user = None
    root = Path(tempfile.mkdtemp(prefix="jobline-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            missing_service("running as root, and there is no postgres user to run a server")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        user = "postgres"
    server = PrivatePostgres(bindir, root, user)
    try:
        server.init()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):  # it was not running
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def when_jobs_done(
    store: JobStore, job_type: str, count: int, action: Callable[[], None]
) -> threading.Thread:
    """Run ``action`` in a thread once ``count`` jobs of the type are done."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            done = sum(status == "done" for status in jobs_of(store, job_type).values())
            if done >= count:
                action()
                return
            time.sleep(0.1)

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_job_ends_done_when_postgresql_restarts_mid_run(
    private_postgres: PrivatePostgres,
    prefect_api_url: str,
    jobline_env: Callable[[Settings], Settings],
    env: Env,
    tmp_path: Path,
) -> None:
    from flows.pipeline import run_pipeline

    job_type, count = f"{MODULE}:Paced", 50
    settings = jobline_env(
        Settings(
            database_url=private_postgres.url,
            data_dir=tmp_path / "data",
            retry_base_seconds=0.0,
            lease_seconds=10.0,
            heartbeat_seconds=2.0,
        )
    )
    upgrade(settings)
    write_products(env.inputs / "paced", count)
    observer = JobStore.from_settings(settings, reconnect_seconds=60)
    done_at_restart: list[int] = []

    def restart() -> None:
        done_at_restart.append(sum(s == "done" for s in jobs_of(observer, job_type).values()))
        private_postgres.stop("fast")  # every connection is closed
        time.sleep(2)
        private_postgres.start()

    restarter = when_jobs_done(observer, job_type, 10, restart)
    try:
        run_pipeline(job_type=job_type, concurrency=4)
    finally:
        restarter.join(DEADLINE)
    drive_until_done(settings, observer, job_type, count)

    assert done_at_restart and 10 <= done_at_restart[0] < count, "restarted mid-run"
    assert_legal_histories(observer, list(jobs_of(observer, job_type)))
    detours(observer, list(jobs_of(observer, job_type)))
    observer.engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_job_ends_done_when_its_connections_are_terminated_repeatedly(
    pg_settings: Settings,
    prefect_api_url: str,
    jobline_env: Callable[[Settings], Settings],
    env: Env,
) -> None:
    from flows.pipeline import run_pipeline

    job_type, count = f"{MODULE}:Paced", 50
    settings = jobline_env(
        pg_settings.model_copy(
            update={"retry_base_seconds": 0.0, "lease_seconds": 10.0, "heartbeat_seconds": 2.0}
        )
    )
    write_products(env.inputs / "paced", count)
    observer = JobStore.from_settings(settings, reconnect_seconds=60)
    admin = create_engine(pg_settings.resolved_database_url, isolation_level="AUTOCOMMIT")
    stop, terminated = threading.Event(), []

    def terminate_repeatedly() -> None:
        with admin.connect() as connection:
            while not stop.wait(0.3):
                killed = connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'jobline' AND datname = current_database() "
                        "AND pid <> pg_backend_pid()"
                    )
                ).scalar()
                terminated.append(killed or 0)

    killer = when_jobs_done(observer, job_type, 1, terminate_repeatedly)
    try:
        run_pipeline(job_type=job_type, concurrency=4)
    finally:
        stop.set()
        killer.join(DEADLINE)
        admin.dispose()
    drive_until_done(settings, observer, job_type, count)

    assert sum(1 for killed in terminated if killed) >= 5, f"terminations: {terminated}"
    assert_legal_histories(observer, list(jobs_of(observer, job_type)))
    detours(observer, list(jobs_of(observer, job_type)))
    observer.engine.dispose()


# ----------------------------------------------------------------------- several workers


def process_with_steps(job_type: str, concurrency: int = 4) -> None:
    """A worker process without the flow engine: what ``process-jobs`` does (claim a batch,
    take each job through its steps, ``concurrency`` at a time, until none is ready), calling
    the steps directly. Run by the several-workers test in subprocesses."""
    from concurrent.futures import ThreadPoolExecutor

    from jobline.settings import get_settings
    from jobtypes.base import load_job_type
    from tasks import steps
    from tasks.runners.local import LocalRunner

    settings = get_settings()
    store = JobStore.from_settings(settings, reconnect_seconds=settings.db_reconnect_seconds)
    ctx = steps.StepContext(settings=settings, store=store)
    kind = load_job_type(job_type, settings)

    def one_job(claimed: object) -> bool:
        outcome = steps.pre_process(ctx, kind, claimed)  # type: ignore[arg-type]
        outcome = steps.run_container(ctx, kind, outcome, LocalRunner())
        return steps.publish(ctx, kind, steps.post_process(ctx, kind, outcome)).ok

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        while claimed := steps.claim_jobs(ctx, kind, concurrency * 4):
            assert all(pool.map(one_job, claimed))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_worker_processes_share_300_jobs_and_run_each_once(
    pg_settings: Settings, env: Env, tmp_path: Path
) -> None:
    job_type, count = f"{MODULE}:Quick", 300
    settings = pg_settings.model_copy(update={"retry_base_seconds": 0.0})
    store = JobStore.from_settings(settings)
    job_ids = insert_ready(settings, store, job_type, count, env)
    code = f"from {__name__} import process_with_steps; process_with_steps({job_type!r})"
    environment = worker_env(settings, "", env)
    workers = [start_worker(code, environment, tmp_path / f"worker-{n}.log") for n in range(3)]
    try:
        for worker in workers:
            worker.wait(timeout=240)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    logs = [(tmp_path / f"worker-{n}.log").read_text()[-2000:] for n in range(3)]
    assert [worker.returncode for worker in workers] == [0, 0, 0], logs

    jobs = store.get_jobs(job_ids)
    assert {job.status for job in jobs} == {"done"}
    assert {job.attempts for job in jobs} == {1}
    runs = env.runs_per_job()
    assert set(runs) == set(job_ids) and set(runs.values()) == {1}, "each job ran exactly once"
    started_by: Counter[str] = Counter()
    for job_id in job_ids:
        history = store.history(job_id)
        assert [c.to_status for c in history].count("processing") == 1
        started_by.update(c.worker or "" for c in history if c.to_status == "started")
    assert len(started_by) == 3, f"every worker took a share: {started_by}"
    assert_legal_histories(store, job_ids)
