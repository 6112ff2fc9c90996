"""Batching: a job type with ``batch_size = 10`` launches 100 ready jobs as 10 flow runs of
``process-batch``, and a failing job in a batch leaves the other nine done. The batch's flow is
run here in the test process (on the session's Prefect server), no worker needed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db.launcher import Limits, TypePolicy, admit_and_claim
from db.store import JobStore
from jobline.settings import Settings
from jobtypes.base import load_job_type
from tasks import steps
from tasks.launcher import PROCESS_BATCH, plan
from tests.acceptance.test_launcher import MODULE, write_job_types
from tests.acceptance.test_reliability import insert_ready, write_products

BATCHED = f"{MODULE}:Batched"


class Env:
    def __init__(self, inputs: Path) -> None:
        self.inputs = inputs


@pytest.fixture
def batch_settings(
    tmp_path: Path, pg_settings: Settings, jobline_env: Callable[[Settings], Settings]
) -> Settings:
    write_job_types(tmp_path / "src", tmp_path / "in", tmp_path / "out")
    return jobline_env(pg_settings.model_copy(update={"retry_base_seconds": 0.0}))


def test_a_hundred_jobs_of_batch_size_ten_launch_as_ten_flow_runs(
    tmp_path: Path, batch_settings: Settings
) -> None:
    store = JobStore.from_settings(batch_settings)
    ids = insert_ready(batch_settings, store, BATCHED, 100, Env(tmp_path / "in"))  # type: ignore[arg-type]
    claimed = admit_and_claim(
        store, {BATCHED: TypePolicy(BATCHED)}, Limits(1000, 1000), "test"
    ).claimed
    launches = plan(claimed, batch_settings)
    assert len(launches) == 10
    assert {launch.deployment for launch in launches} == {PROCESS_BATCH}
    assert sorted(i for launch in launches for i in launch.parameters["job_ids"]) == sorted(ids)
    assert all(len(launch.parameters["job_ids"]) == 10 for launch in launches)
    assert launches[0].name == f"jobs {claimed[0].job_id}..{claimed[9].job_id} launch_batched (10)"


def configured_jobs(settings: Settings, store: JobStore) -> list[int]:
    """Jobs for every product of the batched job type, ready, through the plain steps."""
    kind = load_job_type(BATCHED, settings)
    ctx = steps.StepContext(settings=settings, store=store)
    today = datetime.now(UTC)
    discovery = steps.discover_inputs(ctx, kind, today - timedelta(1), today + timedelta(1))
    inserted = steps.insert_jobs(ctx, kind, discovery).inserted
    return steps.configure_jobs(ctx, kind, inserted).ready


@pytest.mark.slow
def test_a_failing_job_in_a_batch_leaves_the_other_nine_done(
    tmp_path: Path, batch_settings: Settings, prefect_api_url: str
) -> None:
    from flows.process import process_batch

    inputs = tmp_path / "in"
    broken = inputs / "launch_batched" / "broken-0001"
    broken.mkdir(parents=True)
    (broken / "data.txt").write_text("unreadable\n")
    store = JobStore.from_settings(batch_settings)
    write_products(inputs / "launch_batched", 9)
    ids = configured_jobs(batch_settings, store)
    assert len(ids) == 10, "nine good products and the broken one"
    claimed = admit_and_claim(
        store, {BATCHED: TypePolicy(BATCHED)}, Limits(1000, 1000), "test"
    ).claimed
    (launch,) = plan(claimed, batch_settings)

    outcomes = process_batch(job_ids=launch.parameters["job_ids"], runner="local")

    assert len(outcomes) == 10
    jobs = {job.product_id: job for job in store.get_jobs(ids)}
    failed = jobs.pop("broken-0001")
    assert failed.status != "done" and "exited with code 1" in (failed.last_error or "")
    assert {job.status for job in jobs.values()} == {"done"}, "the other nine are done"
