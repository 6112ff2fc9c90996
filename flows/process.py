"""``process-jobs`` (the processing half of the pipeline) and ``process-job`` (one job)."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.common import PipelineSummary, process_ready_jobs, report, run_job
from flows.pipeline import DEMO_JOB_TYPE
from tasks import lifecycle
from tasks.results import StepOutcome


@flow(name="process-jobs", log_prints=True)
def process_jobs(
    job_type: str = DEMO_JOB_TYPE,
    max_jobs: int = 1000,
    concurrency: int = 4,
    runner: Literal["auto", "local", "docker"] | None = None,
) -> PipelineSummary:
    """Claim the job type's ready jobs and process them."""
    summary = PipelineSummary(job_type=job_type)
    process_ready_jobs(job_type, max_jobs, concurrency, runner, summary)
    return report(job_type, summary)


@flow(name="process-job", log_prints=True)
def process_job(
    job_id: int, runner: Literal["auto", "local", "docker"] | None = None
) -> StepOutcome | None:
    """One job's lifecycle: configure it if new, claim it if ready, and run its steps.

    Returns None when the job is not ready (e.g. still waiting for a dependency)."""
    job_type = lifecycle.claim_one(job_id)
    if job_type is None:
        return None
    kind, claimed = job_type
    return run_job(kind, claimed, runner)
