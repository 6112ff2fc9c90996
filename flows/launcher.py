"""``launch-jobs``: admit ready jobs and create a flow run per job (or batch) on its flavor's
work pool, without waiting for them. Deployed every 30 s, one pass at a time (prefect.yaml); the
workers of each pool run the flow runs (``process-job``, ``process-batch``)."""

from __future__ import annotations

from prefect import flow

from tasks import lifecycle
from tasks.launcher import LaunchReport


@flow(name="launch-jobs", log_prints=True)
def launch_jobs() -> LaunchReport:
    """configure waiting jobs -> admit and launch ready ones (see tasks/launcher.py)."""
    lifecycle.configure_waiting()
    return lifecycle.launch()
