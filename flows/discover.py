"""``discover-jobs``: the discovery half of the pipeline, for its own schedule."""

from __future__ import annotations

from prefect import flow

from flows.common import PipelineSummary, discover_and_configure, report
from flows.parameters import JobTypeName, WindowBound
from flows.pipeline import DEMO_JOB_TYPE


@flow(name="discover-jobs", log_prints=True)
def discover_jobs(
    job_type: JobTypeName = DEMO_JOB_TYPE, since: WindowBound = None, until: WindowBound = None
) -> PipelineSummary:
    """Find new input products and insert and configure their jobs; process nothing.

    Args:
        job_type: The job type whose inputs to discover, as its import path (module:Class).
        since: Search for products published from this time (UTC if no offset is given).
            Empty: from the job type's watermark minus one hour, or three days back the
            first time.
        until: Search for products published until this time (UTC if no offset). Empty: now.
    """
    summary = PipelineSummary(job_type=job_type)
    discover_and_configure(job_type, since, until, summary)
    return report(job_type, summary)
