"""One maintenance pass (plain function, no Prefect): nothing lost, nothing stuck, nothing kept
past its time.

In order: rescue the jobs of lost workers (expired leases); deliver pending publication messages;
configure jobs stuck in ``initialized`` and finish the publication of jobs stuck in ``processed``;
rescue the other stuck jobs (:func:`db.maintenance.rescue_stuck`); expire done jobs past their
job type's retention (deleting their outputs if configured); collect finished jobs' metadata;
remove orphaned job containers. Each part runs even if an earlier one failed; failures are
reported, not raised. Every part is safe to run concurrently with workers and with another
maintenance pass.

Run it from the ``maintenance`` flow (a deployment on an interval), or ``jobline maintenance``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache

from pydantic import BaseModel, Field

from db import maintenance
from db.models import Job
from db.records import RunIds
from db.statuses import Status
from db.store import JobStore
from jobline.exceptions import JoblineError
from jobline.settings import Settings
from jobtypes.base import load_job_type
from tasks import steps, storage
from tasks.results import StepOutcome
from tasks.retry import backoff_seconds

logger = logging.getLogger(__name__)
S = Status
#: Most pending publication messages one pass sends.
REDELIVERY_LIMIT = 1_000


class MaintenanceReport(BaseModel):
    """What one maintenance pass did."""

    at: datetime
    rescued: list[int] = Field(default_factory=list, description="jobs of lost workers")
    stuck: dict[str, list[int]] = Field(
        default_factory=dict, description="stuck jobs handled, by the status they were stuck in"
    )
    publications_sent: int = 0
    expired: list[int] = Field(default_factory=list)
    outputs_deleted: int = 0
    metadata_collected: int = 0
    containers_removed: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        stuck = sum(len(ids) for ids in self.stuck.values())
        return (
            f"rescued {len(self.rescued)} jobs of lost workers, handled {stuck} stuck jobs, "
            f"sent {self.publications_sent} pending messages, expired {len(self.expired)} jobs "
            f"({self.outputs_deleted} outputs deleted), collected {self.metadata_collected} "
            f"metadata documents, removed {len(self.containers_removed)} orphaned containers"
            + (f"; {len(self.errors)} errors" if self.errors else "")
        )


def run_maintenance(
    settings: Settings,
    store: JobStore,
    now: datetime | None = None,
    *,
    run: RunIds | None = None,
    log: Callable[[str], None] = logger.info,
) -> MaintenanceReport:
    """One maintenance pass at ``now`` (default: the store's clock); see the module doc."""
    now = now or store.clock()
    report = MaintenanceReport(at=now)
    ctx = steps.StepContext(settings=settings, store=store, run=run or RunIds(), log=log)
    parts: list[tuple[str, Callable[[], None]]] = [
        ("rescue lost workers' jobs", lambda: _rescue_lost(ctx, now, report)),
        ("deliver pending publications", lambda: _redeliver(ctx, report)),
        ("configure jobs stuck in initialized", lambda: _configure_stuck(ctx, now, report)),
        ("publish jobs stuck in processed", lambda: _publish_stuck(ctx, now, report)),
        ("rescue stuck jobs", lambda: _rescue_stuck(ctx, now, report)),
        ("expire done jobs", lambda: _expire(ctx, now, report)),
        ("collect metadata", lambda: _collect_metadata(ctx, now, report)),
        ("remove orphaned containers", lambda: _remove_orphans(ctx, report)),
    ]
    for name, part in parts:
        try:
            store.reconnecting(part)  # each part is safe to repeat after a lost connection
        except Exception as error:  # noqa: BLE001 - one failing part must not stop the others
            report.errors.append(f"{name}: {type(error).__name__}: {error}")
            log(f"maintenance: {name} failed: {error}")
    log(f"maintenance: {report.summary()}")
    return report


def _backoff(settings: Settings) -> maintenance.Backoff:
    return lambda attempts: backoff_seconds(attempts, settings)


def _limit(settings: Settings, status: Status) -> timedelta:
    return timedelta(seconds=settings.stuck_after(status.value))


def _rescue_lost(ctx: steps.StepContext, now: datetime, report: MaintenanceReport) -> None:
    report.rescued = maintenance.rescue_lost(
        ctx.store, now, backoff=_backoff(ctx.settings), run=ctx.run
    )
    if report.rescued:
        ctx.log(
            f"maintenance: worker lost for jobs {report.rescued}; sent back to the retry policy"
        )


def _redeliver(ctx: steps.StepContext, report: MaintenanceReport) -> None:
    """Messages a worker could not deliver (sink down) or left claimed when it died."""
    delivery = steps.deliver_publications(ctx, batch=REDELIVERY_LIMIT)
    report.publications_sent = delivery.sent
    if delivery.errors:
        report.errors.append(f"publication: {delivery.errors[0]}")


def _configure_stuck(ctx: steps.StepContext, now: datetime, report: MaintenanceReport) -> None:
    """Jobs inserted but never configured (the flow run died between the two tasks)."""
    jobs = maintenance.stuck_jobs(
        ctx.store, S.INITIALIZED, now - _limit(ctx.settings, S.INITIALIZED)
    )
    by_type: dict[str, list[int]] = {}
    for job in jobs:
        by_type.setdefault(job.job_type, []).append(job.id)
    for job_type, job_ids in sorted(by_type.items()):
        steps.configure_jobs(ctx, load_job_type(job_type, ctx.settings), job_ids)
    if jobs:
        report.stuck[S.INITIALIZED.value] = sorted(job.id for job in jobs)


def _publish_stuck(ctx: steps.StepContext, now: datetime, report: MaintenanceReport) -> None:
    """Jobs processed but never published (the worker died right after post-processing).
    Publishing is idempotent, so a slow worker publishing at the same time does no harm."""
    jobs = maintenance.stuck_jobs(ctx.store, S.PROCESSED, now - _limit(ctx.settings, S.PROCESSED))
    for job in jobs:
        outcome = StepOutcome(
            job_id=job.id,
            lease_token="",
            # post-process dates the output exactly when it generated a product
            product_generated=job.output_publication_date is not None,
        )
        steps.publish(ctx, load_job_type(job.job_type, ctx.settings), outcome)
    if jobs:
        report.stuck[S.PROCESSED.value] = [job.id for job in jobs]


def _rescue_stuck(ctx: steps.StepContext, now: datetime, report: MaintenanceReport) -> None:
    limits = {status: _limit(ctx.settings, status) for status in maintenance.STORE_STUCK_STATUSES}
    found = maintenance.rescue_stuck(
        ctx.store, now, limits, backoff=_backoff(ctx.settings), run=ctx.run
    )
    report.stuck.update({status: ids for status, ids in found.items() if ids})


def _expire(ctx: steps.StepContext, now: datetime, report: MaintenanceReport) -> None:
    expired = maintenance.expire_done(ctx.store, now, _retention(ctx), run=ctx.run)
    report.expired = [job.job_id for job in expired]
    if not ctx.settings.expire_deletes_outputs:
        return
    with_outputs = [job.job_id for job in expired if job.output_path]
    for job in ctx.store.get_jobs(with_outputs) if with_outputs else []:
        if _delete_outputs(ctx, job):
            report.outputs_deleted += 1


def _retention(ctx: steps.StepContext) -> maintenance.RetentionFor:
    @cache
    def retention_for(job_type: str) -> timedelta | None:
        try:
            return load_job_type(job_type, ctx.settings).retention
        except JoblineError as error:
            # Expiring what cannot be judged would be a guess: keep the jobs, say why.
            ctx.log(f"maintenance: {job_type}'s done jobs are kept: {error}")
            return None

    return retention_for


def _delete_outputs(ctx: steps.StepContext, job: Job) -> bool:
    """Delete an expired job's product folder (and nothing else: the checks are the storage
    module's); a job whose folder cannot be judged safe keeps its outputs, and the log says why."""
    try:
        job_type = load_job_type(job.job_type, ctx.settings)
        return storage.remove_product_folder(job_type, job, ctx.settings)
    except JoblineError as error:
        ctx.log(f"maintenance: job {job.id}'s outputs are kept: {error}")
        return False


def _collect_metadata(ctx: steps.StepContext, now: datetime, report: MaintenanceReport) -> None:
    policy = {
        key: None if seconds is None else timedelta(seconds=seconds)
        for key, seconds in ctx.settings.metadata_retention_seconds.items()
    }
    report.metadata_collected = maintenance.collect_metadata(ctx.store, now, policy)


def _remove_orphans(ctx: steps.StepContext, report: MaintenanceReport) -> None:
    """Containers of jobs no longer in progress: a lost worker's, left running."""
    if not ctx.settings.remove_orphan_containers:
        return
    from tasks.runners.docker import docker_available, remove_orphan_containers

    if not docker_available(timeout=2.0):
        return
    import docker

    client = docker.from_env()
    try:
        report.containers_removed = remove_orphan_containers(
            client,
            lambda listed: maintenance.leased_job_ids(ctx.store, listed),
            ctx.store.store_id(),
        )
    finally:
        client.close()
