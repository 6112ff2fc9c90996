"""Await a job from Python: block until it reaches a terminal status.

    from db.waiting import wait_for_job
    job = wait_for_job(store, job_id, timeout=600)
    if job.status in {"done", "expired"}: ...

On PostgreSQL the wait LISTENs for the job's status notifications (see :mod:`db.notify`) and reads
the job only when one concerns it; on SQLite it reads the job every ``poll_interval`` seconds.
"""

from __future__ import annotations

import time

from db.models import Job
from db.notify import Listener
from db.statuses import TERMINAL, Status
from db.store import JobStore
from jobline.exceptions import JobWaitTimeout


def wait_for_job(
    store: JobStore, job_id: int, timeout: float, *, poll_interval: float = 0.5
) -> Job:
    """The job once it is terminal (``db.statuses.TERMINAL``).

    Raises :class:`JobNotFound` for an unknown job and :class:`JobWaitTimeout` (a
    ``TimeoutError``) naming the job and its status when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    # Listen before the first read: a change committed in between still wakes the loop.
    with Listener(store.engine, poll_interval=poll_interval) as listener:
        while True:
            job = store.get_job(job_id, touch=False)
            if Status(job.status) in TERMINAL:
                return job
            if not _wait_for_notice(listener, job_id, deadline):
                job = store.get_job(job_id, touch=False)
                if Status(job.status) in TERMINAL:
                    return job
                raise JobWaitTimeout(job_id, job.status, timeout)


def _wait_for_notice(listener: Listener, job_id: int, deadline: float) -> bool:
    """True when a notice concerning the job arrived before ``deadline``."""
    while (remaining := deadline - time.monotonic()) > 0:
        if any(notice.concerns(job_id) for notice in listener.wait(remaining)):
            return True
    return False
