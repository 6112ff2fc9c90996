"""``launch-jobs``: admit ready jobs and create a flow run per job (or batch) on its flavor's
work pool, without waiting for them. Deployed every 30 s, one run at a time (prefect.yaml); the
workers of each pool run the flow runs (``process-job``, ``process-batch``)."""

from __future__ import annotations

import time

from prefect import flow

from jobline.settings import get_settings
from tasks import lifecycle
from tasks.launcher import LaunchReport


@flow(name="launch-jobs", log_prints=True)
def launch_jobs() -> list[LaunchReport]:
    """configure waiting jobs -> launcher passes (see tasks/launcher.py), back to back while
    they launch jobs, for up to ``launcher_window_seconds``: a pass creates a bounded number of
    flow runs, so a backlog is launched by many short passes, not by one long one."""
    lifecycle.configure_waiting()
    window_ends = time.monotonic() + get_settings().launcher_window_seconds
    reports = [lifecycle.launch()]
    while reports[-1].launched and not reports[-1].skipped and time.monotonic() < window_ends:
        reports.append(lifecycle.launch())
    return reports
