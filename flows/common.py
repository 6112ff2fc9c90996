"""Pieces shared by the flows: the discovery half, the processing half, and the report."""

from __future__ import annotations

import time
from datetime import datetime

from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from tasks import lifecycle
from tasks.results import ClaimedJob, StepOutcome

#: The longest a processing run waits for a job whose retry backoff has not yet passed.
RETRY_WAIT_LIMIT_SECONDS = 120.0
#: How often a processing run updates its progress artifact, at most.
PROGRESS_EVERY_SECONDS = 1.0


class PipelineSummary(BaseModel):
    """What a flow run did, returned to callers and shown as the run's result."""

    job_type: str
    discovered: int = 0
    inserted: int = 0
    skipped: int = 0
    processed: int = 0
    succeeded: int = 0
    jobs_by_status: dict[str, int] = Field(default_factory=dict)


def discover_and_configure(
    job_type: str, since: datetime | None, until: datetime | None, summary: PipelineSummary
) -> None:
    """discover inputs -> insert jobs -> configure batch."""
    discovery = lifecycle.discover_inputs(job_type, since, until)
    inserted = lifecycle.insert_jobs(job_type, discovery)
    lifecycle.configure_batch(job_type, inserted.inserted)
    summary.discovered += len(discovery.products)
    summary.inserted += len(inserted.inserted) + len(inserted.cancelled)
    summary.skipped += inserted.skipped


def process_ready_jobs(
    job_type: str, max_jobs: int, concurrency: int, runner: str | None, summary: PipelineSummary
) -> None:
    """Claim ready jobs and take each through its steps, ``concurrency`` at a time, until none
    is left (jobs waiting for a dependency or a retry come back as they become ready)."""
    progress_id = create_progress_artifact(
        progress=0.0, description=f"jobs of {job_type} processed in this run"
    )
    with ThreadPoolTaskRunner(max_workers=concurrency) as task_runner:
        while summary.processed < max_jobs:
            limit = min(max(concurrency * 4, 16), max_jobs - summary.processed)
            claimed = lifecycle.claim_jobs(job_type, limit)
            if not claimed:
                if not lifecycle.wait_for_retry(job_type, RETRY_WAIT_LIMIT_SECONDS):
                    break
                continue
            outcomes = [_submit_job(task_runner, job_type, job, runner) for job in claimed]
            # The total is only known batch by batch: jobs finished of those claimed so far.
            planned = summary.processed + len(claimed)
            reported = 0.0
            for future in as_completed(outcomes):
                summary.processed += 1
                summary.succeeded += bool(future.result().ok)
                # At most once a second: each update is an API call the loop waits for (100 ms
                # under load), so one per job held up the next claim by seconds per batch.
                if time.monotonic() - reported >= PROGRESS_EVERY_SECONDS:
                    update_progress_artifact(
                        artifact_id=progress_id, progress=100.0 * summary.processed / planned
                    )
                    reported = time.monotonic()
            lifecycle.configure_batch(job_type, [])
    lifecycle.deliver_publications()
    update_progress_artifact(artifact_id=progress_id, progress=100.0)


def _submit_job(
    task_runner: ThreadPoolTaskRunner, job_type: str, job: ClaimedJob, runner: str | None
) -> PrefectFuture[StepOutcome]:
    """pre-process -> run-container -> post-process -> publish, chained through futures."""
    staged = task_runner.submit(lifecycle.pre_process, {"job_type": job_type, "claimed": job})
    ran = task_runner.submit(
        lifecycle.run_container, {"job_type": job_type, "outcome": staged, "runner": runner}
    )
    posted = task_runner.submit(lifecycle.post_process, {"job_type": job_type, "outcome": ran})
    return task_runner.submit(lifecycle.publish, {"job_type": job_type, "outcome": posted})


def report(job_type: str, summary: PipelineSummary) -> PipelineSummary:
    """Jobs by status as a table artifact, and the summary returned to the caller."""
    summary.jobs_by_status = lifecycle.summarize(job_type)
    create_table_artifact(
        key="jobs-by-status",
        table=[{"status": s, "jobs": n} for s, n in summary.jobs_by_status.items()],
        description=f"{job_type}: {summary.processed} jobs processed in this run",
    )
    return summary
