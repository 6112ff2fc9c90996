"""``process-jobs`` (the processing half of the pipeline), ``process-job`` (one job) and
``process-batch`` (given jobs; the launcher's flow runs, see flows/launcher.py)."""

from __future__ import annotations

from prefect import flow

from flows.common import PipelineSummary, claim_and_run, process_ready_jobs, report, run_job
from flows.parameters import Concurrency, JobId, JobIds, JobTypeName, MaxJobs, Runner
from flows.pipeline import DEMO_JOB_TYPE
from tasks import lifecycle
from tasks.results import StepOutcome


@flow(name="process-jobs", log_prints=True)
def process_jobs(
    job_type: JobTypeName = DEMO_JOB_TYPE,
    max_jobs: MaxJobs = 1000,
    concurrency: Concurrency = 4,
    runner: Runner = None,
) -> PipelineSummary:
    """Claim the job type's ready jobs and process them.

    Args:
        job_type: The job type whose ready jobs to process, as its import path (module:Class).
        max_jobs: The most jobs this run processes (1 to 1,000,000); the rest wait for the
            next run.
        concurrency: How many jobs this run processes at once (1 to 64).
        runner: How job containers run: docker, local (a subprocess) or auto (docker when an
            engine answers). Empty: the job type's pin, else JOBLINE_RUNNER.
    """
    summary = PipelineSummary(job_type=job_type)
    process_ready_jobs(job_type, max_jobs, concurrency, runner, summary)
    return report(job_type, summary)


@flow(name="process-job", log_prints=True)
def process_job(job_id: JobId, runner: Runner = None) -> StepOutcome | None:
    """One job's lifecycle: configure it if new, claim it if ready, and run its steps.

    Returns None when the job is not ready (e.g. still waiting for a dependency).

    Args:
        job_id: The job's id (`jobline jobs list` shows it).
        runner: How the job's container runs: docker, local (a subprocess) or auto (docker
            when an engine answers). Empty: the job type's pin, else JOBLINE_RUNNER.
    """
    job_type = lifecycle.claim_one(job_id)
    if job_type is None:
        return None
    kind, claimed = job_type
    return run_job(kind, claimed, runner)


@flow(name="process-batch", log_prints=True)
def process_batch(
    job_ids: JobIds, runner: Runner = None, concurrency: Concurrency = 4
) -> list[StepOutcome]:
    """Several jobs' lifecycles in one flow run (the launcher batches short jobs so a worker
    starts one process for many): each job is claimed (taken from the launcher, configured if
    new) and processed in one thread of ``concurrency``. One job's failure leaves the others be.

    Args:
        job_ids: The jobs' ids (1 to 1000 of them).
        runner: How the jobs' containers run: docker, local (a subprocess) or auto (docker
            when an engine answers). Empty: the job type's pin, else JOBLINE_RUNNER.
        concurrency: How many of the jobs run at once (1 to 64).
    """
    return claim_and_run(job_ids, runner, concurrency)
