"""The Prefect deployments of prefect.yaml, deployed and run by a real worker on the pool.

The module deploys once (``prefect deploy --all`` from the repository root, as the README says)
to the session's Prefect server; every test here uses those deployments.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, inspect

from db.engine import make_engine
from db.migrate import current_revision, head_revision, known_revisions, upgrade
from db.store import JobStore
from jobline.settings import Settings
from jobtypes.demo import SnowCover
from tests.acceptance.test_lifecycle import HAPPY_PATH
from tests.support.prefect_api import (
    all_deployments,
    create_flow_run,
    deployment,
    flow_run,
    flow_run_logs,
    flow_runs,
    task_runs,
)

REPO = Path(__file__).resolve().parents[2]
JOBLINE = str(Path(sys.executable).with_name("jobline"))
#: The deployments of prefect.yaml, by full name (``prefect deployment run <name>``).
DEPLOYMENTS = (
    "run-pipeline/snow-cover",
    "discover-jobs/discover",
    "process-jobs/process",
    "process-job/process-job",
    "process-batch/process-batch",
    "launch-jobs/launcher",
    "maintenance/maintenance",
)
#: The most a run on a store without the current schema may take, start to end (seconds): it
#: fails in its first task, which makes one query.
FAILS_WITHIN = 30


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


@pytest.fixture(scope="module")
def deployed(prefect_api_url: str) -> dict[str, str]:
    """prefect.yaml deployed to the session's server; returns the deploying shell's environment
    (the repository root, the server, no JOBLINE_* settings)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JOBLINE_")},
        "PREFECT_API_URL": prefect_api_url,
        "PWD": str(REPO),
    }
    prefect(env, "work-pool", "create", "jobline", "--type", "process", "--overwrite")
    output = prefect(env, "deploy", "--all")
    for name in DEPLOYMENTS:
        assert name in output, output
    # The launcher's schedule (every 30 s) would launch the ready jobs these tests process in
    # one flow run; tests/acceptance/test_launcher.py drives the launcher itself.
    with httpx.Client(base_url=prefect_api_url, timeout=30) as api:
        launcher = deployment(api, "launch-jobs/launcher")
        api.patch(f"/deployments/{launcher['id']}", json={"paused": True}).raise_for_status()
    return env


@pytest.fixture
def api(prefect_api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=prefect_api_url, timeout=30) as client:
        yield client


@pytest.mark.slow
def test_deploy_all_and_worker_runs_the_pipeline(
    tmp_path: Path, pg_settings: Settings, deployed: dict[str, str]
) -> None:
    data_dir = tmp_path / "worker-data"
    settings = pg_settings.model_copy(update={"data_dir": data_dir, "runner": "local"})
    env = {
        **deployed,
        "JOBLINE_DATABASE_URL": settings.resolved_database_url,
        "JOBLINE_DATA_DIR": str(data_dir),
        "JOBLINE_RUNNER": "local",
    }
    # The README's way to give the snow-cover deployment something to do.
    written = subprocess.run(
        [JOBLINE, "demo", "--inputs-only", "--products", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    inputs = Path(SnowCover(settings).input_url.removeprefix("file://"))
    assert len(list(inputs.glob("*.SAFE"))) == 2, written.stdout
    # On one line, unbroken (soft wrap), however long the path: it can be copied.
    assert f"JOBLINE_DATA_DIR is {data_dir} finds them" in written.stdout
    assert "`prefect deployment run run-pipeline/snow-cover`" in written.stdout
    store = JobStore.from_settings(settings)
    assert store.list_jobs().jobs == [], "nothing was processed"

    started = prefect(env, "deployment", "run", "run-pipeline/snow-cover")
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started)
    assert flow_run_id, started
    prefect(env, "worker", "start", "--pool", "jobline", "--run-once", timeout=600)

    state = prefect(env, "flow-run", "inspect", flow_run_id.group(1))
    assert "COMPLETED" in state.upper(), state[-2000:]
    jobs = store.list_jobs().jobs
    assert len(jobs) == 2
    for job in jobs:
        history = store.history(job.id)
        assert [c.to_status for c in history] == HAPPY_PATH
        assert {c.flow_run_id for c in history} == {flow_run_id.group(1)}


@pytest.mark.slow
def test_a_worker_on_an_empty_or_older_store_fails_at_once_saying_to_upgrade(
    tmp_path: Path, empty_pg_url: str, deployed: dict[str, str], api: httpx.Client
) -> None:
    """Runs of a worker whose store has no schema (PostgreSQL) or an older one (SQLite) fail in
    their first task with the message; a bad parameter that passes the server's schema (a time
    that is no time) fails in Prefect's own validation, before any task."""
    older = known_revisions()[1]
    old_store = Settings(data_dir=tmp_path / "old")
    upgrade(old_store, older)
    queue = f"schema-check-{uuid.uuid4().hex[:8]}"
    api.post("/work_pools/jobline/queues", json={"name": queue}).raise_for_status()

    def run(name: str, parameters: dict[str, Any], **env: str) -> str:
        created = create_flow_run(api, name, parameters, work_queue=queue, env=env)
        assert created.status_code == 201, created.text
        return created.json()["id"]

    empty = run("maintenance/maintenance", {}, JOBLINE_DATABASE_URL=empty_pg_url)
    old = run("process-jobs/process", {}, JOBLINE_DATA_DIR=str(old_store.data_dir))
    unused = str(tmp_path / "unused")
    no_time = run("discover-jobs/discover", {"since": "yesterday"}, JOBLINE_DATA_DIR=unused)
    prefect(deployed, "worker", "start", "--pool", "jobline", "--work-queue", queue, "--run-once")

    for run_id, problem in (
        (empty, "has no jobline schema"),
        (old, f"is at revision {older}, older than this jobline's {head_revision()}"),
    ):
        finished = flow_run(api, run_id)
        assert finished["state_type"] == "FAILED", finished["state"]
        seconds = run_seconds(finished)
        print(f"{problem}: failed {seconds:.1f} s after it started")
        assert seconds < FAILS_WITHIN
        assert problem in finished["state"]["message"]
        assert "run `jobline db upgrade`" in finished["state"]["message"]
        logs = flow_run_logs(api, run_id)
        assert any(problem in line and "jobline db upgrade" in line for line in logs), logs
        assert len(task_runs(api, run_id)) == 1, "the first task failed, no other ran"
    assert "jobline_empty" in flow_run(api, empty)["state"]["message"], "it names the database"
    engine = create_engine(Settings(database_url=empty_pg_url).resolved_database_url)
    try:
        assert inspect(engine).get_schema_names().count("jobline") == 0, "nothing was created"
    finally:
        engine.dispose()
    old_engine = make_engine(old_store)
    try:
        assert current_revision(old_engine, old_store) == older, "nothing was migrated"
    finally:
        old_engine.dispose()

    # Prefect's validation of the flow's signature: the run fails before any task.
    refused = flow_run(api, no_time)
    assert refused["state_type"] == "FAILED", refused["state"]
    assert "Validation of flow parameters failed" in refused["state"]["message"]
    assert "since: Input should be a valid datetime" in refused["state"]["message"]
    assert task_runs(api, no_time) == [], "no jobline code ran"


def run_seconds(run: dict[str, Any]) -> float:
    start, end = (datetime.fromisoformat(run[k]) for k in ("start_time", "end_time"))
    return (end - start).total_seconds()


@pytest.mark.slow
def test_every_deployment_parameter_has_a_description_and_bounds(
    deployed: dict[str, str], api: httpx.Client
) -> None:
    deployments = all_deployments(api)
    assert set(DEPLOYMENTS) <= set(deployments)
    for name, found in deployments.items():
        schema = found["parameter_openapi_schema"]
        for parameter, spec in schema["properties"].items():
            assert spec.get("description", "").strip(), f"{name}: {parameter} has no description"
        bounds = {p: bounds_of(spec) for p, spec in schema["properties"].items()}
        if "max_jobs" in bounds:
            assert bounds["max_jobs"] == (1, 1_000_000), name
        if "concurrency" in bounds:
            assert bounds["concurrency"] == (1, 64), name
        if "job_id" in bounds:
            assert bounds["job_id"][0] == 1, name
            assert "job_id" in schema["required"], name
        if "job_type" in schema["properties"]:
            assert schema["properties"]["job_type"]["pattern"], name
        if "runner" in schema["properties"]:
            choices = schema["properties"]["runner"]["anyOf"][0]["enum"]
            assert choices == ["auto", "local", "docker"], name
    parameters = {
        name: set(d["parameter_openapi_schema"]["properties"]) for name, d in deployments.items()
    }
    assert parameters["run-pipeline/snow-cover"] >= {"max_jobs", "concurrency", "since", "until"}
    assert parameters["process-jobs/process"] >= {"max_jobs", "concurrency", "runner"}
    assert parameters["process-job/process-job"] == {"job_id", "runner"}


def bounds_of(spec: dict[str, Any]) -> tuple[Any, Any]:
    return spec.get("minimum"), spec.get("maximum")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "parameters", "field"),
    [
        ("run-pipeline/snow-cover", {"max_jobs": 0}, "max_jobs"),
        ("run-pipeline/snow-cover", {"concurrency": 1000}, "concurrency"),
        ("run-pipeline/snow-cover", {"runner": "podman"}, "runner"),
        ("process-jobs/process", {"concurrency": 0}, "concurrency"),
        ("process-jobs/process", {"max_jobs": "all"}, "max_jobs"),
        ("process-job/process-job", {}, "job_id"),
        ("process-job/process-job", {"job_id": -1}, "job_id"),
        ("discover-jobs/discover", {"job_type": "os:system('rm -rf ~')"}, "job_type"),
        ("discover-jobs/discover", {"job_type": "../../etc/passwd"}, "job_type"),
    ],
)
def test_the_server_refuses_a_run_with_bad_parameters(
    deployed: dict[str, str], api: httpx.Client, name: str, parameters: dict[str, Any], field: str
) -> None:
    before = runs_asked_for(api, name)
    refused = create_flow_run(api, name, parameters)
    assert refused.status_code == 409, refused.text
    assert field in refused.json()["detail"]
    assert runs_asked_for(api, name) == before, "no run was created"


def runs_asked_for(api: httpx.Client, name: str) -> int:
    """The deployment's flow runs that someone asked for (not the scheduler's)."""
    return sum(not run["auto_scheduled"] for run in flow_runs(api, deployment(api, name)["id"]))
