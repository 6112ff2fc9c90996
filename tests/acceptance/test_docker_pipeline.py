"""The pipeline with real containers: the demo, retries, timeouts and a missing image."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from db.store import JobStore
from jobline.settings import Settings
from jobtypes.demo import SnowCover, write_sample_products
from tasks.results import METADATA_KEYS
from tasks.runners.base import RunResult
from tests.acceptance.test_lifecycle import HAPPY_PATH, jobs_by_product, statuses
from tests.conftest import missing_service
from tests.support.jobtypes import (
    ECHO_IMAGE,
    SCRIPT,
    SCRIPT_IN_IMAGE,
    write_partner_module,
    write_products,
)


@pytest.fixture(scope="module")
def docker_client() -> Iterator[object]:
    import docker

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except docker.errors.DockerException as error:
        missing_service(f"no Docker engine answers: {error}")
    yield client
    client.close()


@pytest.fixture
def docker_settings(
    pg_settings: Settings,
    prefect_api_url: str,
    jobline_env: Callable[[Settings], Settings],
    docker_client: object,
) -> Settings:
    # "never": an image that is not built here must not be looked for in a registry.
    return jobline_env(
        pg_settings.model_copy(
            update={"retry_base_seconds": 0.0, "runner": "docker", "image_pull_policy": "never"}
        )
    )


def leftover_containers(client: object, store: JobStore) -> list[object]:
    """Containers of this test's job store (other stores may share the engine)."""
    from tasks.runners.docker import store_filter

    return client.containers.list(all=True, filters=store_filter(store.store_id()))  # type: ignore[attr-defined]


@pytest.mark.slow
def test_demo_jobs_run_in_containers(docker_settings: Settings, docker_client: object) -> None:
    from flows.pipeline import run_pipeline
    from tasks.runners.images import ensure_demo_image

    image_id = ensure_demo_image(docker_client)  # type: ignore[arg-type]
    write_sample_products(Path(SnowCover(docker_settings).input_url[7:]), count=4)

    summary = run_pipeline(job_type=SnowCover.import_path(), runner="docker")

    assert summary.jobs == summary.succeeded == 4
    store = JobStore.from_settings(docker_settings)
    for job in store.list_jobs().jobs:
        assert statuses(store, job.id) == HAPPY_PATH
        run = store.get_metadata(job.id, "run-container", RunResult)
        assert run.runner == "docker" and run.exit_code == 0
        assert run.image_id == image_id
        assert run.flavor == "extra_small"
        assert run.limits["memory_mib"] == 256 and run.limits["network"] == "none"
        assert any("wrote FSC_" in line for line in run.log_tail)
        assert set(store.list_metadata(job.id)) == set(METADATA_KEYS)
    assert leftover_containers(docker_client, store) == []


@pytest.mark.slow
def test_retry_timeout_and_missing_image_in_containers(
    docker_settings: Settings, docker_client: object, tmp_path: Path
) -> None:
    from flows.pipeline import run_pipeline
    from tasks.runners.images import build_busybox_image

    build_busybox_image(docker_client, ECHO_IMAGE, {SCRIPT_IN_IMAGE: SCRIPT.encode()})  # type: ignore[arg-type]
    inputs = tmp_path / "input"
    path = write_partner_module(tmp_path / "src", inputs, tmp_path / "output")
    job_type = path.replace(":Echo", ":DockerEcho")
    write_products(inputs, ["ok-1", "flaky-1", "sleepy-1", "noimage-1"])

    run_pipeline(job_type=job_type, concurrency=2)

    store = JobStore.from_settings(docker_settings)
    jobs = jobs_by_product(store, job_type)
    assert {p: j.status for p, j in jobs.items()} == {
        "ok-1": "done",
        "flaky-1": "done",
        "sleepy-1": "internal_error",
        "noimage-1": "internal_error",
    }
    assert jobs["flaky-1"].attempts == 2
    assert "external_error" in statuses(store, jobs["flaky-1"].id)
    assert "timed out after 3 s" in (jobs["sleepy-1"].last_error or "")
    assert "jobline-test/absent:404" in (jobs["noimage-1"].last_error or "")
    assert leftover_containers(docker_client, store) == []


@pytest.mark.slow
def test_concurrency_4_runs_four_containers_at_the_same_time(
    docker_settings: Settings,
    docker_client: object,
    tmp_path: Path,
    jobline_env: Callable[[Settings], Settings],
) -> None:
    """4 jobs whose container sleeps 10 s, at concurrency 4: the engine started all four before
    any of them ended (~15 s)."""
    from flows.pipeline import run_pipeline
    from tasks.runners.docker import STORE_LABEL
    from tasks.runners.images import build_busybox_image

    build_busybox_image(docker_client, ECHO_IMAGE, {SCRIPT_IN_IMAGE: SCRIPT.encode()})  # type: ignore[arg-type]
    inputs = tmp_path / "input"
    source = tmp_path / "src"
    write_partner_module(source, inputs, tmp_path / "output")
    (source / "sleepers.py").write_text(
        "from partner_jobtypes import DockerEcho\n\n"
        "class Sleeper(DockerEcho):\n"
        "    name = 'sleeper'\n"
        "    queue = 'sleeper'\n"
        "    timeout = 120\n"
        "    command = ['/bin/sh', '-c', 'sleep 10 && echo slept > output/slept.txt']\n"
    )
    write_products(inputs, [f"ok-{n}" for n in range(4)])
    jobline_env(docker_settings.model_copy(update={"job_types": ["sleepers:Sleeper"]}))
    store = JobStore.from_settings(docker_settings)
    since = time.time()

    summary = run_pipeline(job_type="sleepers:Sleeper", concurrency=4, runner="docker")

    until = time.time() + 1
    assert (summary.jobs, summary.succeeded) == (4, 4)
    events = docker_client.events(  # type: ignore[attr-defined]
        since=int(since),
        until=int(until) + 1,
        decode=True,
        filters={"type": "container", "label": f"{STORE_LABEL}={store.store_id()}"},
    )
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    for event in events:
        name = event["Actor"]["Attributes"]["name"]
        if event["Action"] == "start":
            started[name] = event["timeNano"] / 1e9
        elif event["Action"] == "die":
            ended[name] = event["timeNano"] / 1e9
    assert len(started) == len(ended) == 4, (started, ended)
    assert max(started.values()) < min(ended.values()), "all four ran at the same time"
    for name in started:
        assert ended[name] - started[name] >= 9.5
    assert leftover_containers(docker_client, store) == []
