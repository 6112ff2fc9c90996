"""Production dispatch end to end: the launcher creates one flow run per job (or batch) on its
flavor's work pool, real process workers (one per pool, started as `prefect worker start`) run
them, and maintenance sends back jobs whose flow run never reported back.

The module deploys ``process-job`` and ``process-batch`` from prefect.yaml once to the session's
Prefect server and starts its workers once; each test inserts its own jobs. Every subprocess is
killed in teardown and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prefect import get_client
from typer.testing import CliRunner

from cli.main import app
from db import maintenance as store_maintenance
from db import outbox
from db.store import JobStore
from jobline.settings import FlavorPool, Settings
from tests.acceptance.test_reliability import (
    assert_legal_histories,
    insert_ready,
    job_containers,
    wait_for,
    worker_env,
)
from tests.conftest import missing_service
from tests.support.jobtypes import declare_job_types

REPO = Path(__file__).resolve().parents[2]
MODULE = "launcher_jobtypes"
SLEEPY_IMAGE = "jobline-test/launcher-sleepy:1"
#: Writes one output; `broken-*` products fail; the first attempt of a docker job sleeps.
SCRIPT = (
    'p=$(ls input); case "$p" in broken-*) echo broken; exit 1 ;; esac; '
    'if [ "${SLEEP_FIRST:-0}" != 0 ] && [ "$JOBLINE_ATTEMPT" = 1 ]; then sleep "$SLEEP_FIRST"; '
    "fi; cat input/*/data.txt > output/result.txt"
)
POOLS = ("jobline-small", "jobline-large")
DOCKER_POOL = "jobline-docker"
#: The cap on the running weight in the two-pool test (a large job weighs 2).
CAP = 24.0
DEADLINE = 120
PREFECT = (sys.executable, "-m", "prefect")


@dataclass
class Setup:
    """The module's server, job types, workers and their common settings."""

    api_url: str
    src: Path
    inputs: Path
    outputs: Path
    env: dict[str, str]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: Path = Path()


def write_job_types(directory: Path, inputs: Path, outputs: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    source = f"""
        from jobtypes.base import JobType

        class Small(JobType):
            name = "launch_small"
            queue = "launch_small"
            local_command = ["sh", "-c", {SCRIPT!r}]
            command = local_command
            runner = "local"
            worker_flavor = "small"
            batch_size = 8
            timeout = 60
            input_storage = "file://{inputs}/launch_small"
            output_storage = "file://{outputs}"

        class Large(Small):
            name = "launch_large"
            queue = "launch_large"
            worker_flavor = "large"
            launch_weight = 2
            batch_size = 5
            input_storage = "file://{inputs}/launch_large"

        class Single(Small):
            name = "launch_single"
            queue = "launch_single"
            batch_size = 1
            input_storage = "file://{inputs}/launch_single"

        class Batched(Small):
            name = "launch_batched"
            queue = "launch_batched"
            batch_size = 10
            input_storage = "file://{inputs}/launch_batched"

        class Sleepy(Single):
            name = "launch_sleepy"
            queue = "launch_sleepy"
            image = {SLEEPY_IMAGE!r}
            command = ["/bin/sh", "-c", {SCRIPT!r}]
            environment = {{"SLEEP_FIRST": "120"}}
            runner = "docker"
            worker_flavor = "extra_small"
            timeout = 300
            input_storage = "file://{inputs}/launch_sleepy"
        """
    (directory / f"{MODULE}.py").write_text(textwrap.dedent(source))
    names = {
        "small": "Small",
        "large": "Large",
        "single": "Single",
        "batched": "Batched",
        "sleepy": "Sleepy",
    }
    declare_job_types(
        directory,
        "launcher-jobtypes",
        {f"launch_{key}": f"{MODULE}:{cls}" for key, cls in names.items()},
    )
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules.pop(MODULE, None)


def prefect(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def create_pools(pools: tuple[str, ...]) -> None:
    """Process work pools with the process worker's default job template, as `prefect
    work-pool create --type process --overwrite` makes them, through the API in this process
    (a CLI process per pool costs seconds each)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client:
        for pool in pools:
            wanted = WorkPoolCreate(name=pool, type="process", base_job_template=template)
            client.create_work_pool(wanted, overwrite=True)


def start_worker(setup: Setup, pool: str, env: dict[str, str], limit: int = 4) -> None:
    """Start the pool's worker unless it runs (the module's teardown stops it)."""
    running = setup.workers.get(pool)
    if running is not None and running.poll() is None:
        return
    log = (setup.logs / f"{pool}.log").open("ab")
    # Its own session: killing the group kills the worker and its flow runs, like a lost host.
    setup.workers[pool] = subprocess.Popen(
        [*PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--limit", str(limit)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc): a process worker starts each flow run in a
    session of its own, so killing the worker's group does not reach them."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_worker(setup: Setup, pool: str) -> None:
    """SIGKILL to the worker and every process below it, as when its machine is lost."""
    worker = setup.workers.pop(pool, None)
    if worker is None:
        return
    if worker.poll() is None:
        for pid in [worker.pid, *descendants(worker.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    worker.wait(timeout=30)


@pytest.fixture(scope="module")
def setup(
    prefect_api_url: str, pg_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("launcher")
    src, inputs, outputs = root / "src", root / "in", root / "out"
    write_job_types(src, inputs, outputs)
    base = Settings(
        database_url=pg_database_url,
        data_dir=root / "data",
        lease_seconds=3.0,
        heartbeat_seconds=1.0,
        retry_base_seconds=0.0,
        publication_sink=f"file://{root / 'publications.jsonl'}",
    )
    holder = type("E", (), {"src": src})()
    env = worker_env(base, prefect_api_url, holder)  # type: ignore[arg-type]
    env.update(PWD=str(REPO), PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_LEVEL="WARNING")
    create_pools(("jobline", *POOLS, "jobline-idle", DOCKER_POOL))
    output = prefect(env, "deploy", "--name", "process-job", "--name", "process-batch")
    assert "process-job/process-job" in output and "process-batch/process-batch" in output, output
    found = Setup(prefect_api_url, src, inputs, outputs, env, logs=root)
    try:
        for pool in POOLS:
            start_worker(found, pool, env)
        # Up while the first tests run; the docker tests kill and restart it.
        start_worker(found, DOCKER_POOL, env, limit=1)
        yield found
    finally:
        for pool in list(found.workers):
            kill_worker(found, pool)


@pytest.fixture
def settings(
    setup: Setup, pg_settings: Settings, jobline_env: Callable[[Settings], Settings]
) -> Settings:
    """The test process's settings: the workers' store, the module's pools and a low cap."""
    return jobline_env(
        pg_settings.model_copy(
            update={
                "data_dir": Path(setup.env["JOBLINE_DATA_DIR"]),
                "lease_seconds": 3.0,
                "heartbeat_seconds": 1.0,
                "retry_base_seconds": 0.0,
                "publication_sink": setup.env["JOBLINE_PUBLICATION_SINK"],
                "flavor_pools": {
                    "small": FlavorPool(pool="jobline-small"),
                    "large": FlavorPool(pool="jobline-large"),
                    "extra_small": FlavorPool(pool=DOCKER_POOL),
                },
                "launcher_max_running_weight": CAP,
                "launcher_max_launches_per_pass": 30,
            }
        )
    )


@pytest.fixture
def api(setup: Setup) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=setup.api_url, timeout=30) as client:
        yield client


class Env:
    def __init__(self, setup: Setup) -> None:
        self.inputs = setup.inputs


def launch(settings: Settings, store: JobStore) -> dict[int, str]:
    from tasks.launcher import launch_pass

    with get_client(sync_client=True) as client:
        return launch_pass(settings, store, client).flow_run_ids


def check(settings: Settings, store: JobStore) -> list[int]:
    from tasks.launcher import check_launches

    with get_client(sync_client=True) as client:
        return check_launches(settings, store, client).returned


def statuses_of(store: JobStore, job_ids: list[int]) -> dict[int, str]:
    return {job.id: job.status for job in store.get_jobs(job_ids)}


def weight_sampler(
    store: JobStore, weights: dict[str, float], stop: threading.Event, seen: list[float]
) -> None:
    while not stop.is_set():
        counts = store.count_by_type_status()
        running = ("queued", "started", "pre_processing", "processing", "post_processing")
        seen.append(
            sum(n * weights.get(kind, 1.0) for (kind, s), n in counts.items() if s in running)
        )
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_thirty_jobs_of_two_flavors_run_on_their_pools_under_the_cap(
    setup: Setup, settings: Settings, api: httpx.Client
) -> None:
    store = JobStore.from_settings(settings)
    small = insert_ready(settings, store, f"{MODULE}:Small", 15, Env(setup))  # type: ignore[arg-type]
    large = insert_ready(settings, store, f"{MODULE}:Large", 15, Env(setup))  # type: ignore[arg-type]
    weights = {f"{MODULE}:Small": 1.0, f"{MODULE}:Large": 2.0}
    stop, seen = threading.Event(), []
    sampler = threading.Thread(target=weight_sampler, args=(store, weights, stop, seen))
    sampler.start()
    flow_runs: dict[int, str] = {}
    started = time.monotonic()
    try:
        deadline = time.monotonic() + DEADLINE
        while set(statuses_of(store, small + large).values()) != {"done"}:
            assert time.monotonic() < deadline, statuses_of(store, small + large)
            flow_runs.update(launch(settings, store))
            time.sleep(0.25)
    finally:
        stop.set()
        sampler.join(timeout=10)
    print(
        f"30 jobs done in {time.monotonic() - started:.1f} s, {len(set(flow_runs.values()))} "
        f"flow runs, running weight at most {max(seen):g} of {CAP:g}"
    )
    assert max(seen) <= CAP, "the running weight never passed the cap"
    assert max(seen) >= 4, "admission was exercised (the cap was reached)"
    assert sorted(flow_runs) == sorted(small + large), "each job launched once"
    for job_ids, pool in ((small, "jobline-small"), (large, "jobline-large")):
        for job in store.get_jobs(job_ids):
            assert job.flow_run_id == flow_runs[job.id]
            run = api.get(f"/flow_runs/{job.flow_run_id}").json()
            assert run["work_pool_name"] == pool, run
            assert run["state_type"] == "COMPLETED", run["state"]
            assert f"flavor:{'small' if pool.endswith('small') else 'large'}" in run["tags"]
            history = store.history(job.id)
            queued = next(c for c in history if c.to_status == "queued")
            assert queued.flow_run_id == job.flow_run_id
            assert {c.flow_run_id for c in history if c.to_status != "queued"} <= {
                job.flow_run_id,
                None,
            }
    batches = {flow_runs[job_id] for job_id in small}
    assert len(batches) < len(small), "the small jobs were batched"
    one = api.get(f"/flow_runs/{flow_runs[large[0]]}").json()
    assert one["name"].startswith("jobs ") and "launch_large" in one["name"]
    assert_legal_histories(store, small + large)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_job_whose_flow_run_is_deleted_or_cancelled_before_it_starts_runs_again(
    setup: Setup, settings: Settings, api: httpx.Client
) -> None:
    store = JobStore.from_settings(settings)
    deleted, cancelled = insert_ready(settings, store, f"{MODULE}:Single", 2, Env(setup))  # type: ignore[arg-type]
    # A pool no worker polls: the flow runs wait there.
    idle = settings.model_copy(update={"flavor_pools": {"small": FlavorPool(pool="jobline-idle")}})
    runs = launch(idle, store)
    assert sorted(runs) == [deleted, cancelled]
    run = api.get(f"/flow_runs/{runs[deleted]}").json()
    assert run["name"].startswith(f"job {deleted} ") and run["work_pool_name"] == "jobline-idle"
    assert {"job_type:launch_single", "flavor:small"} <= set(run["tags"])
    assert check(settings, store) == [], "waiting runs are left alone"
    api.delete(f"/flow_runs/{runs[deleted]}").raise_for_status()
    api.post(
        f"/flow_runs/{runs[cancelled]}/set_state",
        json={"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True},
    ).raise_for_status()

    # The operator's command does what the maintenance flow's check does.
    result = CliRunner().invoke(app, ["maintenance", "--launches", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["launches"]["returned"] == [deleted, cancelled]
    assert statuses_of(store, [deleted, cancelled]) == {deleted: "ready", cancelled: "ready"}
    messages = [c.message or "" for c in store.history(deleted)]
    assert any("was deleted in Prefect" in m for m in messages), messages
    messages = [c.message or "" for c in store.history(cancelled)]
    assert any("ended Cancelled without starting the job" in m for m in messages), messages

    deadline = time.monotonic() + DEADLINE
    again: dict[int, str] = {}
    while set(statuses_of(store, [deleted, cancelled]).values()) != {"done"}:
        assert time.monotonic() < deadline, statuses_of(store, [deleted, cancelled])
        again.update(launch(settings, store))
        time.sleep(0.25)
    assert again[deleted] != runs[deleted] and again[cancelled] != runs[cancelled]
    assert_legal_histories(store, [deleted, cancelled])


@pytest.fixture
def docker_client() -> Iterator[object]:
    from tasks.runners.docker import docker_available

    if not docker_available():
        missing_service("no Docker engine answers")
    import docker

    client = docker.from_env()
    yield client
    client.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_worker_killed_mid_container_is_rescued_and_its_job_published_once(
    setup: Setup, settings: Settings, docker_client: object
) -> None:
    from flows.maintenance import maintenance as maintenance_flow
    from tasks.runners.images import build_busybox_image

    build_busybox_image(docker_client, SLEEPY_IMAGE)  # type: ignore[arg-type]
    store = JobStore.from_settings(settings)
    (job_id,) = insert_ready(settings, store, f"{MODULE}:Sleepy", 1, Env(setup))  # type: ignore[arg-type]
    start_worker(setup, DOCKER_POOL, setup.env, limit=1)
    first = launch(settings, store)[job_id]
    wait_for(
        lambda: (
            store.get_job(job_id, touch=False).status == "processing"
            and any(c.status == "running" for c in job_containers(docker_client, store, job_id))
        ),
        "the job's container to run",
    )
    kill_worker(setup, DOCKER_POOL)  # SIGKILL to the worker and its flow run
    # The next worker boots while the lease expires (the module's teardown stops it).
    start_worker(setup, DOCKER_POOL, setup.env, limit=1)
    wait_for(
        lambda: job_id in store_maintenance.expired_leases(store, store.clock()),
        "the lease to expire",
    )
    report = maintenance_flow()
    assert report.rescued == [job_id]
    assert job_containers(docker_client, store, job_id) == [], "the orphan was removed"
    assert store.get_job(job_id).status == "ready"

    deadline = time.monotonic() + DEADLINE
    again: dict[int, str] = {}
    while store.get_job(job_id, touch=False).status != "done":
        assert time.monotonic() < deadline, store.get_job(job_id).status
        again.update(launch(settings, store))
        time.sleep(0.25)
    assert again[job_id] != first
    job = store.get_job(job_id)
    assert (job.attempts, job.flow_run_id) == (2, again[job_id])
    rows = outbox.publications_of(store, job_id)
    assert len(rows) == 1 and rows[0].status == "sent", "one publication per product"
    sink = Path(settings.publication_sink.removeprefix("file://"))
    lines = [line for line in sink.read_text().splitlines() if rows[0].message_id in line]
    assert len(lines) == 1, "the message was sent once"
    assert job_containers(docker_client, store, job_id) == []
    assert_legal_histories(store, [job_id])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cancelling_a_running_jobs_flow_run_in_prefect_cancels_the_job_and_its_container(
    setup: Setup, settings: Settings, docker_client: object, api: httpx.Client
) -> None:
    from flows.maintenance import maintenance as maintenance_flow
    from tasks.runners.images import build_busybox_image

    build_busybox_image(docker_client, SLEEPY_IMAGE)  # type: ignore[arg-type]
    store = JobStore.from_settings(settings)
    (job_id,) = insert_ready(settings, store, f"{MODULE}:Sleepy", 1, Env(setup))  # type: ignore[arg-type]
    start_worker(setup, DOCKER_POOL, setup.env, limit=1)
    try:
        flow_run_id = launch(settings, store)[job_id]
        wait_for(
            lambda: any(
                c.status == "running" for c in job_containers(docker_client, store, job_id)
            ),
            "the job's container to run",
        )
        # The UI's "Cancel": the worker sees Cancelling, kills the flow run, marks it Cancelled.
        api.post(
            f"/flow_runs/{flow_run_id}/set_state",
            json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
        ).raise_for_status()
        wait_for(
            lambda: api.get(f"/flow_runs/{flow_run_id}").json()["state_type"] == "CANCELLED",
            "the worker to cancel the flow run",
        )
        maintenance_flow()
    finally:
        kill_worker(setup, DOCKER_POOL)
    job = store.get_job(job_id)
    assert job.status == "cancelled"
    assert f"flow run {flow_run_id} Cancelled in Prefect" in (job.status_message or "")
    wait_for(lambda: job_containers(docker_client, store, job_id) == [], "no container left")
    assert_legal_histories(store, [job_id])
