"""``run-pipeline``: discover -> insert -> configure -> claim -> process -> summary."""

from __future__ import annotations

from prefect import flow

from flows.common import PipelineSummary, discover_and_configure, process_ready_jobs, report
from flows.parameters import Concurrency, JobTypeName, MaxJobs, Runner, WindowBound

DEMO_JOB_TYPE = "jobtypes.demo:SnowCover"


@flow(name="run-pipeline", log_prints=True)
def run_pipeline(
    job_type: JobTypeName = DEMO_JOB_TYPE,
    since: WindowBound = None,
    until: WindowBound = None,
    max_jobs: MaxJobs = 1000,
    concurrency: Concurrency = 4,
    runner: Runner = None,
) -> PipelineSummary:
    """Find the job type's new input products and take each through its lifecycle.

    Args:
        job_type: The job type to run, as its import path (module:Class).
        since: Search for products published from this time (UTC if no offset is given).
            Empty: from the job type's watermark minus one hour, or three days back the
            first time.
        until: Search for products published until this time (UTC if no offset). Empty: now.
        max_jobs: The most jobs this run processes (1 to 1,000,000); the rest wait for the
            next run.
        concurrency: How many jobs this run processes at once (1 to 64).
        runner: How job containers run: docker, local (a subprocess) or auto (docker when an
            engine answers). Empty: the job type's pin, else JOBLINE_RUNNER.
    """
    summary = PipelineSummary(job_type=job_type)
    discover_and_configure(job_type, since, until, summary)
    process_ready_jobs(job_type, max_jobs, concurrency, runner, summary, configured=True)
    return report(job_type, summary)
