"""What a run shows in Prefect and keeps of its discovery: task runs named and tagged per job, a
progress artifact ending at 100, and listed objects the parser cannot read skipped and named."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pytest

from db.store import JobStore
from jobline.settings import Settings
from tasks.results import DiscoveryResult
from tests.acceptance.test_lifecycle import jobs_by_product
from tests.support.jobtypes import write_partner_module, write_products

#: Products of the tiled job type: <kind>_<tile>_<n>; "garbage" makes its parser raise (as the
#: README's example once did) and "notes" makes it return None.
VALID = ["ok_T32TLR_1", "ok_T31TCH_2", "ok_T32TLR_3"]
UNREADABLE = ["garbage", "notes"]


@pytest.fixture
def tiled(
    tmp_path: Path,
    pg_settings: Settings,
    prefect_api_url: str,
    jobline_env: Callable[[Settings], Settings],
) -> tuple[str, Path, Settings]:
    """A partner job type whose parser reads the tile from the name, its input folder."""
    registered = {"runner": "local", "job_types": ["partner_jobtypes:Tiled"]}
    settings = jobline_env(pg_settings.model_copy(update=registered))
    inputs = tmp_path / "input"
    source = tmp_path / "src"
    path = write_partner_module(source, inputs, tmp_path / "output")
    module = source / "partner_jobtypes.py"
    module.write_text(
        module.read_text()
        + textwrap.dedent(
            """
            from jobtypes.base import Product

            class Tiled(Echo):
                name = "tiled"
                queue = "tiled"

                def parse_product(self, path, publication_date=None):
                    product_id = path.rstrip("/").rsplit("/", 1)[-1]
                    if product_id == "notes":
                        return None
                    return Product(product_id=product_id, path=path,
                                   tile_id=product_id.split("_")[1],  # IndexError on garbage
                                   publication_date=publication_date)
            """
        )
    )
    write_products(inputs, VALID + UNREADABLE)
    return path.replace(":Echo", ":Tiled"), inputs, settings


def flow_run_of(state: object) -> UUID:
    return state.state_details.flow_run_id  # type: ignore[attr-defined]


def test_unreadable_objects_are_skipped_and_named_and_the_rest_become_jobs(
    tiled: tuple[str, Path, Settings],
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    from flows.pipeline import run_pipeline

    job_type, _inputs, settings = tiled
    state = run_pipeline(job_type=job_type, concurrency=2, return_state=True)
    summary = state.result()

    store = JobStore.from_settings(settings)
    assert {p: j.status for p, j in jobs_by_product(store, job_type).items()} == dict.fromkeys(
        VALID, "done"
    )
    assert (summary.discovered, summary.rejected, summary.jobs) == (3, 2, 3)
    rejected = {Path(r.path).name: r for r in summary.rejected_objects}
    assert rejected["garbage"].kind == "parser_error"
    assert "IndexError" in rejected["garbage"].reason
    assert rejected["notes"].kind == "ignored"
    job = jobs_by_product(store, job_type)["ok_T32TLR_1"]
    found = store.get_metadata(job.id, "discover-inputs", DiscoveryResult)
    assert found.rejected_count == 2
    assert found.rejected_by_kind == {"parser_error": 1, "ignored": 1}
    assert {Path(r.path).name for r in found.rejected} == {"garbage", "notes"}

    flow_run_id = flow_run_of(state)
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["rejected-inputs"])),
        )
    messages = [log.message for log in logs]
    assert any("rejected" in m and "garbage" in m and "IndexError" in m for m in messages)
    assert any("rejected" in m and "notes" in m for m in messages)
    assert len(artifacts) == 1 and "garbage" in str(artifacts[0].data)


def test_task_runs_are_named_and_tagged_per_job_and_progress_ends_at_100(
    tiled: tuple[str, Path, Settings],
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    from flows.pipeline import run_pipeline

    job_type, _inputs, settings = tiled
    state = run_pipeline(job_type=job_type, concurrency=3, return_state=True)
    flow_run_id = flow_run_of(state)

    store = JobStore.from_settings(settings)
    jobs = jobs_by_product(store, job_type)
    expected = {
        f"{step} {job.id} {job.tile_id} {product}"
        for product, job in jobs.items()
        for step in ("pre-process", "run-container", "post-process", "publish")
    }
    runs_of_the_flow = FlowRunFilter(id={"any_": [flow_run_id]})
    with get_client(sync_client=True) as client:
        # A task run is created under a default name and renamed as it runs; the server
        # records the new name from the run's events, a moment later.
        deadline = time.monotonic() + 30
        while True:
            task_runs = client.read_task_runs(flow_run_filter=runs_of_the_flow, limit=200)
            by_name = {run.name: run for run in task_runs}
            if expected <= set(by_name) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(flow_run_filter=runs_of_the_flow)
    for name in sorted(expected):
        assert name in by_name, f"no task run {name!r} in {sorted(by_name)}"
        tile = name.split(" ")[2]
        assert set(by_name[name].tags) >= {"job_type:tiled", f"tile:{tile}"}
    # One task run per step and job, and the steps of a job linked in the UI's graph.
    steps = [run for run in task_runs if run.name.split(" ")[0] == "run-container"]
    assert len(steps) == len(jobs) == 3
    pre = {run.name.split(" ", 1)[1]: run.id for run in task_runs if run.name.startswith("pre-")}
    for run in steps:
        upstream = {i.id for inputs in run.task_inputs.values() for i in inputs}
        assert pre[run.name.split(" ", 1)[1]] in upstream
    progress = [artifact for artifact in artifacts if artifact.type == "progress"]
    assert len(progress) == 1 and progress[0].data == 100.0
