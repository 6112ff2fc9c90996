"""The lifecycle under Prefect: flows on the session's Prefect server, jobs in PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from db.records import JobFilter
from db.statuses import HAPPY_PATH as STATUS_HAPPY_PATH
from db.store import JobStore
from jobline.settings import Settings
from tasks.results import METADATA_KEYS
from tests.support.jobtypes import write_partner_module, write_products

HAPPY_PATH = [status.value for status in STATUS_HAPPY_PATH]


@pytest.fixture
def lifecycle_settings(
    pg_settings: Settings,
    prefect_api_url: str,
    jobline_env: Callable[[Settings], Settings],
) -> Settings:
    return jobline_env(
        pg_settings.model_copy(update={"retry_base_seconds": 0.0, "runner": "local"})
    )


@pytest.fixture
def partner(tmp_path: Path) -> tuple[str, Path]:
    """A job type in a module outside the repository, and its input folder."""
    inputs = tmp_path / "partner-input"
    path = write_partner_module(tmp_path / "partner-src", inputs, tmp_path / "partner-output")
    return path, inputs


def statuses(store: JobStore, job_id: int) -> list[str]:
    return [change.to_status for change in store.history(job_id)]


def jobs_by_product(store: JobStore, job_type: str) -> dict[str, object]:
    page = store.list_jobs(JobFilter(job_type=job_type), limit=1000)
    return {job.product_id: job for job in page.jobs}


def test_exit_codes_decide_retry_cancel_or_error(
    lifecycle_settings: Settings, partner: tuple[str, Path]
) -> None:
    from flows.pipeline import run_pipeline

    job_type, inputs = partner
    write_products(inputs, ["ok-1", "ok-2", "flaky-1", "retry-1", "broken-1", "empty-1"])

    summary = run_pipeline(job_type=job_type, concurrency=3)

    store = JobStore.from_settings(lifecycle_settings)
    jobs = jobs_by_product(store, job_type)
    assert summary.discovered == 6
    assert {p: j.status for p, j in jobs.items()} == {
        "ok-1": "done",
        "ok-2": "done",
        "flaky-1": "done",
        "empty-1": "done",
        "retry-1": "cancelled",
        "broken-1": "internal_error",
    }
    flaky = jobs["flaky-1"]
    assert flaky.attempts == 2
    assert statuses(store, flaky.id)[:9] == [
        "initialized",
        "configured",
        "ready",
        "queued",
        "started",
        "pre_processing",
        "processing",
        "external_error",
        "error_checked",
    ]
    assert statuses(store, flaky.id)[9:] == HAPPY_PATH[2:]

    retry = jobs["retry-1"]
    assert retry.attempts == retry.max_attempts == 3
    assert statuses(store, retry.id).count("external_error") == 3
    assert statuses(store, retry.id)[-2:] == ["error_checked", "cancelled"]

    broken = store.history(jobs["broken-1"].id)[-1]
    assert broken.to_status == "internal_error"
    assert "exited with code 1" in (broken.message or "")
    assert "cannot read the input" in (broken.message or "")
    assert broken.error_subtype == "exit_code_1"

    empty = jobs["empty-1"]
    assert statuses(store, empty.id)[-2:] == ["processed", "done"]
    assert empty.output_files == []


def test_partner_job_type_runs_by_import_path_with_run_ids_in_history(
    lifecycle_settings: Settings, partner: tuple[str, Path]
) -> None:
    from flows.pipeline import run_pipeline

    job_type, inputs = partner
    write_products(inputs, ["ok-a", "ok-b"])
    run_pipeline(job_type=job_type)

    store = JobStore.from_settings(lifecycle_settings)
    for job in jobs_by_product(store, job_type).values():
        history = store.history(job.id)
        assert [c.to_status for c in history] == HAPPY_PATH
        assert all(c.flow_run_id for c in history), "every change names its flow run"
        assert len({c.flow_run_id for c in history}) == 1
        assert all(c.task_run_id for c in history), "every change names its task run"
        assert set(store.list_metadata(job.id)) == set(METADATA_KEYS)
        outputs = [Path(f["path"]).name for f in job.output_files]
        assert outputs == ["result.txt"]
        assert job.output_path and Path(job.output_path.removeprefix("file://"), "result.txt")


def test_process_job_flow_runs_one_job(
    lifecycle_settings: Settings, partner: tuple[str, Path]
) -> None:
    from flows.discover import discover_jobs
    from flows.process import process_job

    job_type, inputs = partner
    write_products(inputs, ["ok-single"])
    discover_jobs(job_type=job_type)
    store = JobStore.from_settings(lifecycle_settings)
    (job,) = jobs_by_product(store, job_type).values()
    assert job.status == "ready"

    outcome = process_job(job_id=job.id)

    assert outcome is not None and outcome.ok
    assert statuses(store, job.id) == HAPPY_PATH
    assert process_job(job_id=job.id) is None, "a done job is not processed again"
