"""Pieces shared by the flows: the discovery half, the processing half, and the report.

Processing runs ``concurrency`` jobs at once: each job's four steps run one after the other in
one thread of a pool of ``concurrency`` threads, each step a Prefect task run of its own (named
``<step> <job id> <tile> <product>``, tagged ``job_type:<name>`` and ``tile:<tile>``). Chaining
the steps as futures on a task runner instead made a step waiting for its upstream hold a pool
thread, so a pool of ``concurrency`` threads ran about one job at a time.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime

from prefect import tags
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from db.statuses import SUCCESSFUL, TERMINAL, Status
from tasks import lifecycle
from tasks.progress import RunProgress
from tasks.results import ClaimedJob, StepOutcome
from tasks.storage import Rejection

#: The longest a processing run waits for a job whose retry backoff has not yet passed.
RETRY_WAIT_LIMIT_SECONDS = 120.0
#: Rejected objects listed in a run's summary and artifact (all are counted).
REJECTIONS_SHOWN = 100
#: Statuses a job may wait in (for configuration or a claim) at the start of a processing run.
WAITING = (Status.INITIALIZED, Status.CONFIGURED, Status.READY)


class PipelineSummary(BaseModel):
    """What a flow run did, returned to callers and shown as the run's result."""

    job_type: str
    discovered: int = Field(0, description="Products found in the window searched.")
    rejected: int = Field(0, description="Listed objects that did not become products.")
    rejected_objects: list[Rejection] = Field(
        default_factory=list, description=f"The first {REJECTIONS_SHOWN} rejected objects."
    )
    inserted: int = Field(0, description="New jobs (those inserted as cancelled included).")
    skipped: int = Field(0, description="Products that had a job already.")
    jobs: int = Field(0, description="Distinct jobs this run processed.")
    attempts: int = Field(0, description="Attempts this run ran (a job retried in the run twice).")
    succeeded: int = Field(0, description="Jobs of this run that ended done.")
    failed: int = Field(0, description="Jobs of this run that ended failed or cancelled.")
    unfinished: int = Field(
        0, description="Jobs of this run not finished yet (a retry or a publication pending)."
    )
    run_jobs_by_status: dict[str, int] = Field(
        default_factory=dict, description="The jobs of this run by status, at its end."
    )
    jobs_by_status: dict[str, int] = Field(
        default_factory=dict, description="Every job of the job type by status, at the end."
    )
    job_ids: list[int] = Field(default_factory=list, description="The jobs this run processed.")


def discover_and_configure(
    job_type: str, since: datetime | None, until: datetime | None, summary: PipelineSummary
) -> None:
    """discover inputs -> insert jobs -> configure batch."""
    discovery = lifecycle.discover_inputs(job_type, since, until)
    inserted = lifecycle.insert_jobs(job_type, discovery)
    lifecycle.configure_batch(job_type, inserted.inserted)
    summary.discovered += len(discovery.products)
    summary.rejected += len(discovery.rejected)
    room = REJECTIONS_SHOWN - len(summary.rejected_objects)
    summary.rejected_objects.extend(discovery.rejected[: max(room, 0)])
    summary.inserted += len(inserted.inserted) + len(inserted.cancelled)
    summary.skipped += inserted.skipped
    if discovery.rejected:
        create_table_artifact(
            key="rejected-inputs",
            table=[r.model_dump() for r in discovery.rejected[:REJECTIONS_SHOWN]],
            description=f"{len(discovery.rejected)} listed objects of {job_type} were rejected",
        )


def process_ready_jobs(
    job_type: str,
    max_jobs: int,
    concurrency: int,
    runner: str | None,
    summary: PipelineSummary,
    *,
    configured: bool = False,
) -> None:
    """Claim ready jobs and take each through its steps, ``concurrency`` at a time, until none
    is left (jobs waiting for a dependency or a retry come back as they become ready) or
    ``max_jobs`` attempts were started. ``configured``: new jobs were configured just before.

    Up to ``2 x concurrency`` jobs (at least 16) are claimed ahead, and more are claimed
    whenever no more than ``concurrency`` are left, so no thread waits for a claim."""
    waiting = lifecycle.summarize(job_type)
    expected = min(max_jobs, sum(waiting.get(s.value, 0) for s in WAITING))
    progress = RunProgress(f"jobs of {job_type} processed in this run", expected)
    ahead = max(2 * concurrency, 16)
    started, finished = 0, 0
    seen: dict[int, None] = {}  # the jobs claimed, in order
    in_flight: set[Future[StepOutcome]] = set()
    may_claim = True
    with ThreadPoolExecutor(concurrency, thread_name_prefix="jobline-job") as pool:
        while True:
            if may_claim and len(in_flight) <= concurrency and started < max_jobs:
                if configured:
                    configured = False
                else:
                    lifecycle.configure_batch(job_type, [])
                limit = min(ahead - len(in_flight), max_jobs - started)
                claimed = lifecycle.claim_jobs(job_type, limit)
                in_flight.update(_submit(pool, job_type, job, runner) for job in claimed)
                seen.update(dict.fromkeys(job.job_id for job in claimed))
                started += len(claimed)
                # Fewer than asked: none is ready now; a finishing job may change that.
                may_claim = len(claimed) == limit
            if not in_flight:
                if started >= max_jobs:
                    break
                if not lifecycle.wait_for_retry(job_type, RETRY_WAIT_LIMIT_SECONDS):
                    break
                may_claim = True
                continue
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # a step never raises for a job; anything else is a bug
                finished += 1
            progress.update(finished, started)
            may_claim = True
    lifecycle.deliver_publications()
    summary.attempts += started
    summary.job_ids.extend(seen)
    progress.finish()


def _submit(
    pool: ThreadPoolExecutor, job_type: str, job: ClaimedJob, runner: str | None
) -> Future[StepOutcome]:
    # Each job gets its own copy of the flow run's context (a context is entered by one thread
    # at a time), so its task runs belong to this flow run.
    context = contextvars.copy_context()
    return pool.submit(context.run, run_job, job_type, job, runner)


def run_job(job_type: str, job: ClaimedJob, runner: str | None) -> StepOutcome:
    """pre-process -> run-container -> post-process -> publish, one task run each, tagged with
    the job type and the tile."""
    with tags(*lifecycle.job_tags(job_type, job.tile_id)):
        staged = lifecycle.pre_process(job_type, job)
        ran = lifecycle.run_container(job_type, staged, runner)
        posted = lifecycle.post_process(job_type, ran)
        return lifecycle.publish(job_type, posted)


def claim_and_run(job_ids: list[int], runner: str | None, concurrency: int) -> list[StepOutcome]:
    """Claim each given job and take it through its steps, ``concurrency`` jobs at a time, in
    the jobs' order: a job's claim runs in its thread, so the first jobs run while later ones
    wait for a thread, not for the claims of the whole batch. The outcomes of the jobs claimed.
    """
    with ThreadPoolExecutor(concurrency, thread_name_prefix="jobline-job") as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, _claim_and_run, job_id, runner)
            for job_id in job_ids
        ]
        outcomes = [future.result() for future in futures]
    return [outcome for outcome in outcomes if outcome is not None]


def _claim_and_run(job_id: int, runner: str | None) -> StepOutcome | None:
    claimed = lifecycle.claim_one(job_id)
    if claimed is None:
        return None
    job_type, job = claimed
    return run_job(job_type, job, runner)


def report(job_type: str, summary: PipelineSummary) -> PipelineSummary:
    """The run's jobs and the job type's jobs by status as table artifacts, and the summary."""
    summary.jobs = len(summary.job_ids)
    if summary.job_ids:
        summary.run_jobs_by_status = lifecycle.summarize_run(summary.job_ids)
    by_status = {Status(s): n for s, n in summary.run_jobs_by_status.items()}
    summary.succeeded = sum(n for s, n in by_status.items() if s in SUCCESSFUL)
    summary.failed = sum(n for s, n in by_status.items() if s in TERMINAL - SUCCESSFUL)
    summary.unfinished = sum(n for s, n in by_status.items() if s not in TERMINAL)
    summary.jobs_by_status = lifecycle.summarize(job_type)
    create_table_artifact(
        key="jobs-by-status",
        table=[{"status": s, "jobs": n} for s, n in summary.jobs_by_status.items()],
        description=(
            f"{job_type}: {summary.jobs} jobs processed in this run ({summary.attempts} "
            f"attempts): {summary.succeeded} done, {summary.failed} failed or cancelled, "
            f"{summary.unfinished} unfinished"
        ),
    )
    return summary
