"""``run-pipeline``: discover -> insert -> configure -> claim -> process -> summary."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from prefect import flow

from flows.common import PipelineSummary, discover_and_configure, process_ready_jobs, report

DEMO_JOB_TYPE = "jobtypes.demo:SnowCover"


@flow(name="run-pipeline", log_prints=True)
def run_pipeline(
    job_type: str = DEMO_JOB_TYPE,
    since: datetime | None = None,
    until: datetime | None = None,
    max_jobs: int = 1000,
    concurrency: int = 4,
    runner: Literal["auto", "local", "docker"] | None = None,
) -> PipelineSummary:
    """Find the job type's new input products and take each through its lifecycle."""
    summary = PipelineSummary(job_type=job_type)
    discover_and_configure(job_type, since, until, summary)
    process_ready_jobs(job_type, max_jobs, concurrency, runner, summary, configured=True)
    return report(job_type, summary)
