"""``discover-jobs``: the discovery half of the pipeline, for its own schedule."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from flows.common import PipelineSummary, discover_and_configure, report
from flows.pipeline import DEMO_JOB_TYPE


@flow(name="discover-jobs", log_prints=True)
def discover_jobs(
    job_type: str = DEMO_JOB_TYPE, since: datetime | None = None, until: datetime | None = None
) -> PipelineSummary:
    """Find new input products and insert and configure their jobs; process nothing."""
    summary = PipelineSummary(job_type=job_type)
    discover_and_configure(job_type, since, until, summary)
    return report(job_type, summary)
