"""The docker runner against a real Docker engine, with a busybox image built here (no registry).

Every test checks that no container of its job is left behind.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from jobline.exceptions import ConfigurationError, ProcessingError
from jobline.settings import Settings
from tasks.runners.base import RunRequest
from tasks.runners.docker import (
    JOB_ID_LABEL,
    STORE_LABEL,
    DockerRunner,
    container_name,
    docker_available,
    remove_orphan_containers,
)
from tasks.runners.flavors import DEFAULT_FLAVORS
from tasks.runners.images import build_busybox_image, context_digest, ensure_image
from tests.conftest import missing_service

pytestmark = pytest.mark.timeout(60)

PROBE_IMAGE = "jobline/test-probe:0.1"
PROBE_FILES = {"/opt/probe/hello.sh": b'#!/bin/sh\necho "hello $1"\n'}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the local engine; the test is skipped (failed in CI) when none answers."""
    if not docker_available(timeout=5):
        missing_service("no Docker engine answers (run scripts/ensure-docker.sh)")
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def probe_image(docker_client: docker.DockerClient) -> str:
    return build_busybox_image(
        docker_client, PROBE_IMAGE, PROBE_FILES, labels={"jobline.test": "1"}
    )


@pytest.fixture
def job_id(docker_client: docker.DockerClient) -> Iterator[int]:
    """An id no other test or run uses; asserts the job left no container behind."""
    job = 10**9 + uuid.uuid4().int % 10**9
    yield job
    assert _containers_of(docker_client, job) == [], f"a container of job {job} was left behind"


def _containers_of(client: docker.DockerClient, job: int) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{JOB_ID_LABEL}={job}"})


def _runner(client: docker.DockerClient, tmp_path: Path, **settings: Any) -> DockerRunner:
    return DockerRunner(Settings(data_dir=tmp_path / "data", **settings), client=client)


def _request(job: int, work_dir: Path, command: list[str], **fields: Any) -> RunRequest:
    (work_dir / "input").mkdir(parents=True, exist_ok=True)
    (work_dir / "output").mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"image": PROBE_IMAGE, "flavor": "extra_small", "timeout": 30.0}
    options.update(fields)
    return RunRequest(
        job_id=job, job_key=f"key-{job}", attempt=1, command=command, work_dir=work_dir, **options
    )


def _shell(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_docker_available_says_yes_when_the_engine_answers(docker_client: docker.DockerClient):
    assert docker_available(timeout=5) is True


def test_docker_available_says_no_when_no_engine_answers(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    assert docker_available(timeout=1) is False


def test_a_command_that_cannot_start_fails_clearly(docker_client, probe_image, job_id, tmp_path):
    runner = _runner(docker_client, tmp_path)
    with pytest.raises(ProcessingError, match="no-such-program") as raised:
        runner.run(_request(job_id, tmp_path / "work", ["no-such-program"]))

    assert f"job {job_id}" in str(raised.value)
    assert raised.value.transient is False


def test_container_has_only_loopback_and_runs_unprivileged(
    docker_client, probe_image, job_id, tmp_path
):
    runner = _runner(docker_client, tmp_path)
    script = "ls /sys/class/net; ip -o link | wc -l; id -u; /opt/probe/hello.sh world"
    result = runner.run(_request(job_id, tmp_path / "work", _shell(script)))

    assert result.succeeded, result.log_tail
    assert result.log_tail == ["lo", "1", runner.user.split(":")[0], "hello world"]
    assert runner.user.split(":")[0] != "0"
    assert result.limits["network"] == "none"
    assert result.image == PROBE_IMAGE
    assert result.image_id == probe_image
    assert result.runner == "docker"
    assert 0 < result.duration_seconds < 30


def test_input_is_read_only_and_output_writable(docker_client, probe_image, job_id, tmp_path):
    work = tmp_path / "work"
    (work / "input").mkdir(parents=True)
    (work / "input" / "a.txt").write_text("staged input\n")
    script = (
        "cat input/a.txt; "
        "if touch input/new 2>/dev/null; then echo input-writable; else echo input-read-only; fi; "
        "echo result > output/result.txt"
    )
    result = _runner(docker_client, tmp_path).run(_request(job_id, work, _shell(script)))

    assert result.succeeded, result.log_tail
    assert result.log_tail == ["staged input", "input-read-only"]
    assert not (work / "input" / "new").exists()
    assert (work / "output" / "result.txt").read_text() == "result\n"


def test_flavor_limits_are_applied_to_the_running_container(
    docker_client, probe_image, job_id, tmp_path
):
    inspected: dict[str, Any] = {}

    def inspect_while_running(line: str) -> None:
        if line == "running":
            container = docker_client.containers.get(container_name(job_id, 1))
            inspected.update(container.attrs["HostConfig"], labels=container.labels)

    cgroup_v1, cgroup_v2 = "memory/memory.limit_in_bytes", "memory.max"
    cgroup_limit = f"cat /sys/fs/cgroup/{cgroup_v1} 2>/dev/null || cat /sys/fs/cgroup/{cgroup_v2}"
    request = _request(
        job_id,
        tmp_path / "work",
        _shell(f"echo running; {cgroup_limit}"),
        on_line=inspect_while_running,
    )
    result = _runner(docker_client, tmp_path).run(request)

    flavor = DEFAULT_FLAVORS["extra_small"]
    assert result.succeeded, result.log_tail
    assert inspected["Memory"] == flavor.memory_bytes == 256 * MIB
    assert inspected["MemorySwap"] == flavor.memory_bytes
    assert inspected["NanoCpus"] == int(flavor.cpus * 1e9)
    assert inspected["NetworkMode"] == "none"
    assert inspected["Privileged"] is False
    assert inspected["CapDrop"] == ["ALL"]
    assert {mount.split(":")[1] for mount in inspected["Binds"] or []} <= {
        "/work/input",
        "/work/output",
    }
    assert (
        inspected["labels"].items()
        >= {
            JOB_ID_LABEL: str(job_id),
            "jobline.job_key": f"key-{job_id}",
            "jobline.attempt": "1",
        }.items()
    )
    assert int(result.log_tail[1]) == flavor.memory_bytes  # the cgroup inside agrees
    assert result.flavor == "extra_small"
    assert result.limits["memory_bytes"] == flavor.memory_bytes
    assert result.limits["cpus"] == flavor.cpus


def test_settings_override_a_flavor_and_oom_kill_is_reported(
    docker_client, probe_image, job_id, tmp_path
):
    runner = _runner(docker_client, tmp_path, worker_flavors={"extra_small": {"memory_mib": 16}})
    hog = "echo filling; awk 'BEGIN { s = \"0123456789abcdef\"; while (1) s = s s }'"
    result = runner.run(_request(job_id, tmp_path / "work", _shell(hog)))

    assert result.oom_killed is True
    assert not result.succeeded and not result.asks_retry
    assert result.limits["memory_mib"] == 16
    assert result.log_tail[0] == "filling"
    assert "out of memory" in result.log_tail[-1]


def test_a_container_past_its_timeout_is_killed(docker_client, probe_image, job_id, tmp_path):
    request = _request(job_id, tmp_path / "work", _shell("echo started; sleep 30"), timeout=1.0)
    result = _runner(docker_client, tmp_path).run(request)

    assert result.timed_out is True
    assert not result.succeeded and not result.asks_retry
    assert result.duration_seconds < 10
    assert result.log_tail[0] == "started"
    assert result.log_tail[-1].startswith("timed out after 1 s")


def test_exit_code_2_asks_for_a_retry(docker_client, probe_image, job_id, tmp_path):
    script = "echo 'storage unavailable, try again' >&2; exit 2"
    result = _runner(docker_client, tmp_path).run(
        _request(job_id, tmp_path / "work", _shell(script))
    )

    assert result.exit_code == 2
    assert result.asks_retry and not result.succeeded
    assert result.log_tail == ["storage unavailable, try again"]


def test_any_other_exit_code_is_reported_as_a_failure(docker_client, probe_image, job_id, tmp_path):
    result = _runner(docker_client, tmp_path).run(_request(job_id, tmp_path / "work", ["false"]))

    assert result.exit_code == 1
    assert not result.succeeded and not result.asks_retry


def test_a_missing_image_fails_clearly_when_pulling_is_not_allowed(docker_client, job_id, tmp_path):
    runner = _runner(docker_client, tmp_path, image_pull_policy="never")
    image = "jobline/no-such-image:0"
    with pytest.raises(ProcessingError, match="jobline/no-such-image:0") as raised:
        runner.run(_request(job_id, tmp_path / "work", ["true"], image=image))

    assert raised.value.transient is False
    assert "image_pull_policy is 'never'" in str(raised.value)


def test_a_missing_image_that_cannot_be_pulled_fails_clearly(docker_client, job_id, tmp_path):
    # A registry on a closed loopback port: the pull fails at once without leaving the machine.
    image = "127.0.0.1:9/jobline/no-such-image:0"
    runner = _runner(docker_client, tmp_path, image_pull_policy="if-not-present")
    with pytest.raises(ProcessingError, match="could not be pulled") as raised:
        runner.run(_request(job_id, tmp_path / "work", ["true"], image=image))

    assert image in str(raised.value)
    assert raised.value.transient is False


def test_the_container_is_removed_when_the_caller_is_interrupted(
    docker_client, probe_image, job_id, tmp_path
):
    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    request = _request(
        job_id, tmp_path / "work", _shell("echo started; sleep 30"), on_line=interrupt
    )
    with pytest.raises(KeyboardInterrupt):
        _runner(docker_client, tmp_path).run(request)
    # The job_id fixture asserts that no container remains.


def test_a_leftover_container_of_the_job_is_removed_before_the_new_attempt(
    docker_client, probe_image, job_id, tmp_path
):
    leftover = docker_client.containers.run(
        probe_image,
        ["sleep", "30"],
        name=container_name(job_id, 1),
        labels={JOB_ID_LABEL: str(job_id)},
        network_mode="none",
        detach=True,
    )
    result = _runner(docker_client, tmp_path).run(
        _request(job_id, tmp_path / "work", ["echo", "second attempt"])
    )

    assert result.log_tail == ["second attempt"]
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(leftover.id)


def test_lines_reach_on_line_in_order_and_the_tail_keeps_the_last_ones(
    docker_client, probe_image, job_id, tmp_path
):
    received: list[str] = []
    script = "for i in $(seq 1 300); do echo line-$i; done; printf 'no newline at the end'"
    request = _request(job_id, tmp_path / "work", _shell(script), on_line=received.append)
    result = _runner(docker_client, tmp_path).run(request)

    expected = [f"line-{i}" for i in range(1, 301)] + ["no newline at the end"]
    assert received == expected
    assert result.log_tail == expected[-50:]


def test_remove_orphan_containers_keeps_the_jobs_in_progress_and_other_stores(
    docker_client, probe_image, job_id, tmp_path
):
    orphan_job = job_id + 1
    ours, theirs = uuid.uuid4().hex, uuid.uuid4().hex

    def create(job: int, store: str) -> Any:
        return docker_client.containers.create(
            probe_image,
            ["true"],
            name=container_name(job, 1, store),
            labels={JOB_ID_LABEL: str(job), STORE_LABEL: store},
        )

    # The other store's container has the orphan's job id: only the store tells them apart.
    created = [create(job_id, ours), create(orphan_job, ours), create(orphan_job, theirs)]
    try:
        removed = remove_orphan_containers(docker_client, keep_job_ids=[job_id], store_id=ours)
        assert removed == [container_name(orphan_job, 1, ours)]
        assert [c.name for c in _containers_of(docker_client, orphan_job)] == [
            container_name(orphan_job, 1, theirs)
        ]
        assert len(_containers_of(docker_client, job_id)) == 1
        with pytest.raises(ValueError, match="store_id"):
            remove_orphan_containers(docker_client, keep_job_ids=[], store_id="")
    finally:
        for container in created:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def test_built_images_hold_the_given_files_and_are_rebuilt_only_when_they_change(
    docker_client, probe_image
):
    assert ensure_image(docker_client, PROBE_IMAGE, _must_not_build) == probe_image
    digest = context_digest(PROBE_FILES)
    assert ensure_image(docker_client, PROBE_IMAGE, _must_not_build, digest) == probe_image
    rebuilt = ensure_image(
        docker_client, PROBE_IMAGE, lambda client, tag: "rebuilt", expected_digest="stale"
    )
    assert rebuilt == "rebuilt"
    with pytest.raises(ConfigurationError, match="absolute container path"):
        build_busybox_image(docker_client, "jobline/test-bad:0", {"relative/x.sh": b""})


def _must_not_build(client: docker.DockerClient, tag: str) -> str:
    raise AssertionError(f"{tag} should not have been rebuilt")
