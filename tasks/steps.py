"""The lifecycle steps as plain functions: callable and testable without Prefect.

Each step takes a :class:`StepContext` (settings, store, the Prefect run ids for the history, a
log sink) and records its transitions through the store and its result as job metadata. A step
never raises for a failure of the job itself: it moves the job to ``internal_error`` or
``external_error`` (then retries or cancels it) and returns an outcome with ``ok=False``, so one
job's failure never stops the others. See :mod:`tasks.lifecycle` for the Prefect tasks.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from db import launcher, outbox
from db.models import Job
from db.records import JobFilter, NewJob, RunIds, product_key
from db.statuses import Status
from db.store import JobStore, connection_lost
from jobline.exceptions import LeaseLost, ProcessingError, TransitionError
from jobline.settings import Settings
from jobtypes.base import InputFile, JobType, OutputFile, Product, load_job_type
from jobtypes.locations import product_folder
from tasks import storage
from tasks.heartbeat import keeper_for
from tasks.publication import DeliveryReport, deliver_pending, sink_for
from tasks.results import (
    REJECTIONS_PER_JOB,
    ClaimedJob,
    ConfigureSummary,
    Discovery,
    DiscoveryResult,
    InsertSummary,
    PostProcessResult,
    PublicationResult,
    StagingResult,
    StepOutcome,
)
from tasks.retry import backoff_seconds
from tasks.runners.base import Runner, RunRequest, RunResult

logger = logging.getLogger(__name__)
S = Status


@dataclass
class StepContext:
    settings: Settings
    store: JobStore
    run: RunIds = field(default_factory=RunIds)
    log: Callable[[str], None] = logger.info

    def now(self) -> datetime:
        return self.store.clock()


def worker_name() -> str:
    """Who holds a lease: host and process, so an operator can find the worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- discover, insert


def discover_inputs(
    ctx: StepContext, job_type: JobType, since: datetime | None, until: datetime | None
) -> Discovery:
    """Products published in the window: explicit ``since``/``until``, else from the job
    type's watermark (minus an overlap) up to now, or a default look-back the first time.
    Objects that do not make a valid product are rejected, named in the log, and skipped."""
    start, end = storage.watermark_window(ctx.store, job_type.name, ctx.now(), since, until)
    products = job_type.discover(start, end)
    if products is None:
        listing = storage.scan_products(job_type, start, end)
    else:
        listing = _checked(products)
    _log_rejections(ctx, listing.rejected)
    ctx.log(
        f"discovered {len(listing.products)} {job_type.name} products in [{start}, {end})"
        + (f", rejected {len(listing.rejected)} objects" if listing.rejected else "")
    )
    return Discovery(
        job_type=job_type.import_path(),
        since=start,
        until=end,
        products=listing.products,
        rejected=listing.rejected,
    )


def _checked(products: list[Product]) -> storage.Listing:
    """The products a job type's own ``discover`` returned, the unsafe ones rejected."""
    listing = storage.Listing()
    for product in products:
        problem = storage.product_problem(product)
        if problem is None:
            listing.products.append(product)
            continue
        path = str(getattr(product, "path", repr(product)))
        rejection = storage.Rejection(path=path, kind="invalid_product", reason=problem)
        listing.rejected.append(rejection)
    return listing


def _log_rejections(ctx: StepContext, rejected: list[storage.Rejection]) -> None:
    for rejection in rejected[:LOGGED_REJECTIONS]:
        ctx.log(f"rejected {rejection.path}: {rejection.reason}")
    if len(rejected) > LOGGED_REJECTIONS:
        ctx.log(f"… and {len(rejected) - LOGGED_REJECTIONS} more rejected objects")


#: Rejected objects named one by one in a run's log (the rest are counted).
LOGGED_REJECTIONS = 50


def insert_jobs(ctx: StepContext, job_type: JobType, discovery: Discovery) -> InsertSummary:
    """One job per discovered product (``initialized``, or ``cancelled`` as ``pre_insert``
    decides); products that already have a job are skipped."""
    now = ctx.now()
    rekeyed = ctx.store.finish_pending_rekey(job_type.import_path(), job_type.name)
    if rekeyed is not None:
        ctx.log(f"job keys made from the job type's name: {rekeyed.describe()}")
    new_jobs: list[NewJob] = []
    dropped = 0
    for product in discovery.products:
        decision = job_type.pre_insert(product, now)
        if decision.action == "drop":
            dropped += 1
            continue
        cancelled = decision.action == "cancel"
        new_jobs.append(
            NewJob(
                job_type=discovery.job_type,
                product_id=product.product_id,
                queue=job_type.queue,
                tile_id=product.tile_id,
                input_path=product.path,
                input_publication_date=product.publication_date,
                input_files=[f.model_dump() for f in product.files],
                max_attempts=job_type.max_attempts,
                status=S.CANCELLED if cancelled else S.INITIALIZED,
                message=decision.reason or None,
                job_key=product_key(job_type.name, product.product_id),
                due_at=job_type.due_at(product.publication_date, now),
                sensing_time=product.sensing_time,
            )
        )
    result = ctx.store.insert_jobs(new_jobs, run=ctx.run)
    by_key = {job.key: job for job in new_jobs}
    products = {p.product_id: p for p in discovery.products}
    ctx.store.set_metadata_many(
        [
            (
                job_id,
                "discover-inputs",
                DiscoveryResult(
                    job_type=discovery.job_type,
                    since=discovery.since,
                    until=discovery.until,
                    products_found=len(discovery.products),
                    product=products[by_key[key].product_id],
                    rejected_count=len(discovery.rejected),
                    rejected_by_kind=discovery.rejected_by_kind(),
                    rejected=discovery.rejected[:REJECTIONS_PER_JOB],
                ),
            )
            for key, job_id in result.inserted.items()
        ]
    )
    dates = [p.publication_date for p in discovery.products if p.publication_date]
    if dates:
        storage.advance_watermark(ctx.store, job_type.name, max(dates))
    cancelled_ids = [i for k, i in result.inserted.items() if by_key[k].status is S.CANCELLED]
    ctx.log(
        f"inserted {len(result.inserted)} jobs ({len(cancelled_ids)} cancelled), "
        f"skipped {len(result.skipped)} known products, dropped {dropped}"
    )
    return InsertSummary(
        inserted=[i for i in result.inserted.values() if i not in set(cancelled_ids)],
        cancelled=cancelled_ids,
        skipped=len(result.skipped),
        dropped=dropped,
    )


# --------------------------------------------------------------------------- configure, claim


def configure_jobs(ctx: StepContext, job_type: JobType, job_ids: list[int]) -> ConfigureSummary:
    """Configure new jobs (``initialized -> configured``): those just inserted and any other of
    the type, e.g. created through the API. Then every job of the type waiting in
    ``configured`` is offered to the job type's hooks, which decide which become ``ready``."""
    store = ctx.store
    type_path = job_type.import_path()
    others = store.list_jobs(
        JobFilter(job_type=type_path, statuses=(S.INITIALIZED,)), limit=10_000
    ).jobs
    new_ids = list(dict.fromkeys([*job_ids, *(job.id for job in others)]))
    store.transition_many(
        new_ids, S.CONFIGURED, expected_from=S.INITIALIZED, run=ctx.run, message="configured"
    )
    waiting = store.list_jobs(
        JobFilter(job_type=type_path, statuses=(S.CONFIGURED,)), limit=10_000
    ).jobs
    decisions = job_type.configure_batch(waiting, store)
    store.set_metadata_many([(job_id, "configure", d) for job_id, d in decisions.items()])
    ready = [job_id for job_id, decision in decisions.items() if decision.ready]
    moved = store.transition_many(
        ready, S.READY, expected_from=S.CONFIGURED, run=ctx.run, message="ready"
    ).changed
    for job_id in moved:
        decision = decisions[job_id]
        if decision.config or decision.priority is not None:
            # The batch transition set the status; the chosen configuration goes on the job too.
            _apply_configuration(store, job_id, decision.config, decision.priority)
    still_waiting = [job_id for job_id in decisions if job_id not in set(moved)]
    return ConfigureSummary(ready=moved, waiting=still_waiting)


def _apply_configuration(
    store: JobStore, job_id: int, config: dict[str, object], priority: int | None
) -> None:
    fields: dict[str, object] = {"config": config}
    if priority is not None:
        fields["priority"] = priority
    store.update_job_fields(job_id, fields)


def claim_jobs(ctx: StepContext, job_type: JobType, limit: int) -> list[ClaimedJob]:
    """Take up to ``limit`` ready jobs of the job type for this worker (``ready -> queued``)."""
    jobs = ctx.store.claim(
        job_type.queue,
        limit,
        worker_name(),
        lease_seconds=ctx.settings.lease_seconds,
        job_type=job_type.import_path(),
        run=ctx.run,
    )
    claimed = [_claimed(job) for job in jobs]
    _hold_queued(ctx, claimed)
    return claimed


def _claimed(job: Job) -> ClaimedJob:
    return ClaimedJob(
        job_id=job.id,
        lease_token=job.lease_token or "",
        product_id=job.product_id,
        tile_id=job.tile_id,
    )


def _hold_queued(ctx: StepContext, claimed: list[ClaimedJob]) -> None:
    """Heartbeat the claimed jobs' leases until they start, for at most the queued limit (a
    flow run that never starts them must not keep them forever)."""
    keeper = keeper_for(ctx.store, ctx.settings)
    limit = ctx.settings.stuck_after(S.QUEUED.value)
    for job in claimed:
        keeper.hold(job.job_id, job.lease_token, for_seconds=limit)


def claim_one(ctx: StepContext, job_id: int) -> tuple[str, ClaimedJob] | None:
    """Claim one given job for an ad hoc run, configuring it first if it is new; None when it
    is not ready afterwards (waiting for a dependency, or in another status)."""
    job = ctx.store.get_job(job_id)
    job_type = load_job_type(job.job_type, ctx.settings)
    if job.status == S.QUEUED:
        return _adopt(ctx, job)
    if job.status in (S.INITIALIZED, S.CONFIGURED):
        configure_jobs(ctx, job_type, [job.id] if job.status == S.INITIALIZED else [])
    jobs = ctx.store.claim(
        job.queue,
        1,
        worker_name(),
        lease_seconds=ctx.settings.lease_seconds,
        job_ids=[job.id],
        run=ctx.run,
    )
    if not jobs:
        current = ctx.store.get_job(job_id, touch=False)
        ctx.log(f"job {job_id} is {current.status}, not ready: nothing to process")
        return None
    claimed = _claimed(jobs[0])
    _hold_queued(ctx, [claimed])
    return job.job_type, claimed


def _adopt(ctx: StepContext, job: Job) -> tuple[str, ClaimedJob] | None:
    """A job the launcher queued for this flow run: take it with a lease of our own."""
    adopted = launcher.adopt(
        ctx.store, job.id, ctx.run.flow_run_id, worker_name(), ctx.settings.lease_seconds
    )
    if adopted is None:
        ctx.log(f"job {job.id} is queued for another flow run ({job.flow_run_id}): not taken")
        return None
    claimed = _claimed(adopted)
    _hold_queued(ctx, [claimed])
    return job.job_type, claimed


def wait_for_retry(ctx: StepContext, job_type: JobType, limit_seconds: float) -> bool:
    """Sleep until the job type's next retry is due, if that is within ``limit_seconds``;
    False (at once) when no retry is waiting that soon."""
    due = ctx.store.earliest_retry(job_type.queue, job_type.import_path())
    if due is None:
        return False
    delay = (due - ctx.now()).total_seconds()
    if delay > limit_seconds:
        return False
    time.sleep(max(delay, 0.0) + 0.05)
    return True


# --------------------------------------------------------------------------- one job's steps


def work_dir_for(settings: Settings, job: Job) -> Path:
    return settings.resolved_work_dir / f"job-{job.id}-attempt-{job.attempts}"


def pre_process(ctx: StepContext, job_type: JobType, claimed: ClaimedJob) -> StepOutcome:
    """``queued -> started -> pre_processing``; stage the inputs into a fresh work dir."""
    store, token = ctx.store, claimed.lease_token
    job = store.transition(
        claimed.job_id,
        S.STARTED,
        expected_from=S.QUEUED,
        lease_token=token,
        count_attempt=True,
        run=ctx.run,
        message=f"attempt started by {worker_name()}",
    )
    outcome = StepOutcome(
        job_id=job.id, lease_token=token, product_id=job.product_id, tile_id=job.tile_id
    )
    keeper_for(store, ctx.settings).hold(job.id, token)  # until processed or failed
    try:
        store.transition(
            job.id, S.PRE_PROCESSING, expected_from=S.STARTED, lease_token=token, run=ctx.run
        )
        work_dir = work_dir_for(ctx.settings, job)
        if work_dir.exists():
            shutil.rmtree(work_dir)
        (work_dir / "output").mkdir(parents=True)
        product_dir = work_dir / "input" / Path((job.input_path or "input").rstrip("/")).name
        product_dir.mkdir(parents=True)
        files = [InputFile.model_validate(f) for f in job.input_files]
        staged = storage.stage_inputs(job.input_path or "", files, product_dir, ctx.settings)
        result = StagingResult(
            work_dir=str(work_dir),
            files=staged,
            total_bytes=sum(s.size for s in staged),
        )
        store.set_metadata(job.id, "pre-process", result, lease_token=token)
        ctx.log(f"job {job.id}: staged {len(staged)} files ({result.total_bytes} bytes)")
        return outcome.model_copy(update={"work_dir": str(work_dir)})
    except Exception as error:  # noqa: BLE001 - every failure is recorded on the job
        return fail(ctx, outcome, S.PRE_PROCESSING, error)


def run_container(
    ctx: StepContext, job_type: JobType, outcome: StepOutcome, runner: Runner
) -> StepOutcome:
    """``pre_processing -> processing``; run the processing and judge its exit code."""
    if not outcome.ok:
        return outcome
    store, token = ctx.store, outcome.lease_token
    try:
        job = store.transition(
            outcome.job_id,
            S.PROCESSING,
            expected_from=S.PRE_PROCESSING,
            lease_token=token,
            run=ctx.run,
            message=f"processing with the {runner.name} runner",
        )
        command = job_type.command if runner.name == "docker" else job_type.host_command
        lease = keeper_for(store, ctx.settings).hold(job.id, token or "")
        result = runner.run(
            RunRequest(
                job_id=job.id,
                job_key=job.job_key.hex(),
                attempt=job.attempts,
                image=job_type.image_for(job),
                command=list(command),
                work_dir=Path(outcome.work_dir or ""),
                environment=job_type.environment_for(job),
                timeout=job_type.timeout,
                flavor=job_type.worker_flavor,
                network=job_type.network,
                on_line=lambda line: ctx.log(f"job {job.id} | {line}"),
                cancel=lease.lost,
                store_id=store.store_id(),
            )
        )
        if lease.lost.is_set():
            raise LeaseLost(job.id, token or "")
        store.set_metadata(job.id, "run-container", result, lease_token=token)
    except Exception as error:  # noqa: BLE001
        return fail(ctx, outcome, S.PROCESSING, error)
    outcome = outcome.model_copy(update={"exit_code": result.exit_code})
    if result.succeeded:
        return outcome
    return fail(ctx, outcome, S.PROCESSING, _container_error(result, job_type.timeout))


def _container_error(result: RunResult, timeout: float) -> ProcessingError:
    tail = " | ".join(result.log_tail[-5:])
    if result.timed_out:
        return ProcessingError(
            f"container timed out after {timeout:g} s and was killed; log tail: {tail}",
            subtype="timeout",
        )
    if result.oom_killed:
        return ProcessingError(
            f"container was killed by its memory limit (OOM, {result.limits}); log tail: {tail}",
            subtype="oom",
        )
    if result.asks_retry:
        return ProcessingError(
            f"container exited with code {result.exit_code} (asks for a retry); log tail: {tail}",
            transient=True,
            subtype="exit_code_2",
        )
    return ProcessingError(
        f"container exited with code {result.exit_code}; log tail: {tail}",
        subtype=f"exit_code_{result.exit_code}",
    )


def post_process(ctx: StepContext, job_type: JobType, outcome: StepOutcome) -> StepOutcome:
    """``processing -> post_processing -> processed``: upload the outputs, record them."""
    if not outcome.ok:
        return outcome
    store, token = ctx.store, outcome.lease_token
    try:
        job = store.transition(
            outcome.job_id,
            S.POST_PROCESSING,
            expected_from=S.PROCESSING,
            lease_token=token,
            run=ctx.run,
        )
        output_dir = Path(outcome.work_dir or "") / "output"
        has_files = any(p.is_file() for p in output_dir.rglob("*"))
        exit_code = outcome.exit_code or 0
        outputs: list[OutputFile] = []
        output_path = None
        if has_files:
            output_path = _output_url(job_type, job)
            manifest = storage.upload_outputs(output_dir, output_path, ctx.settings)
            outputs = list(manifest.files)
        generated = job_type.generated_product(exit_code, outputs)
        now = ctx.now()
        store.set_metadata(
            job.id,
            "post-process",
            PostProcessResult(
                return_code=exit_code,
                product_generated=generated,
                output_path=output_path,
                outputs=outputs,
            ),
            lease_token=token,
        )
        store.transition(
            job.id,
            S.PROCESSED,
            expected_from=S.POST_PROCESSING,
            lease_token=token,
            run=ctx.run,
            message=f"{len(outputs)} output files" if generated else "no product generated",
            values={
                "output_path": output_path,
                "output_files": [o.model_dump() for o in outputs],
                "output_publication_date": now if generated else None,
            },
        )
    except Exception as error:  # noqa: BLE001
        return fail(ctx, outcome, S.POST_PROCESSING, error)
    keeper_for(store, ctx.settings).release(outcome.job_id, token)
    storage.remove_work_dir(Path(outcome.work_dir or ""), keep=False)
    return outcome.model_copy(update={"product_generated": generated})


def _output_url(job_type: JobType, job: Job) -> str:
    return product_folder(job_type, job)  # refuses a tile or product id that is not a segment


def publish(ctx: StepContext, job_type: JobType, outcome: StepOutcome) -> StepOutcome:
    """``processed -> start_publication`` with one outbox row per output product, deliver them,
    then ``published -> done``; a job with no product goes ``processed -> done``."""
    if not outcome.ok:
        return outcome
    store = ctx.store
    try:
        job = store.get_job(outcome.job_id, touch=False)
        if not outcome.product_generated:
            store.set_metadata(job.id, "publish", PublicationResult())
            store.transition(
                job.id,
                S.DONE,
                expected_from=S.PROCESSED,
                run=ctx.run,
                message="done: no product to publish",
            )
            return outcome
        outputs = [OutputFile.model_validate(o) for o in job.output_files]
        messages = job_type.publication_messages(job, outputs, job.output_path or "")
        # Each outbox call is safe to repeat, so a lost connection repeats it (reconnecting).
        ids = store.reconnecting(
            lambda: outbox.start_publication(
                store, job.id, [(m.product_id, m.body) for m in messages], run=ctx.run
            )
        )
        report = store.reconnecting(_delivery(ctx, job.id))
        delivered = store.reconnecting(lambda: outbox.finish_published(store, job.id, run=ctx.run))
        store.set_metadata(
            job.id,
            "publish",
            PublicationResult(
                message_ids=ids, delivered=delivered, publication_date=job.output_publication_date
            ),
        )
        if not delivered:
            ctx.log(f"job {job.id}: publication pending: {'; '.join(report.errors[:1])}")
        return outcome.model_copy(update={"ok": delivered})
    except Exception as error:  # noqa: BLE001
        return fail(ctx, outcome, None, error)


def _delivery(ctx: StepContext, job_id: int) -> Callable[[], DeliveryReport]:
    """Send the job's pending messages; a repeat after a lost connection first gives back the
    rows the interrupted try had claimed (else they would wait out the outbox lease)."""
    tries = 0

    def deliver() -> DeliveryReport:
        nonlocal tries
        tries += 1
        if tries > 1:
            outbox.release(ctx.store, [row.id for row in outbox.publications_of(ctx.store, job_id)])
        with sink_for(ctx.settings.resolved_publication_sink, ctx.settings) as sink:
            return deliver_pending(ctx.store, sink, job_id=job_id, run=ctx.run)

    return deliver


def deliver_publications(ctx: StepContext, batch: int = 500) -> DeliveryReport:
    """Deliver every pending publication, of any job (e.g. left pending while the broker was
    down or by a worker that died); jobs whose messages are all confirmed finish."""
    total = DeliveryReport()
    with sink_for(ctx.settings.resolved_publication_sink, ctx.settings) as sink:
        while True:
            try:
                report = ctx.store.reconnecting(
                    lambda: deliver_pending(ctx.store, sink, limit=batch, run=ctx.run)
                )
            except DBAPIError as error:
                # A sweep is best effort: rows it had claimed come back when their lease ends.
                ctx.log(f"publication sweep interrupted, maintenance will go on: {error.orig}")
                total.errors.append(str(error.orig))
                break
            total.sent += report.sent
            total.failed += report.failed
            total.finished_jobs.extend(report.finished_jobs)
            total.errors.extend(report.errors)
            if report.failed or report.sent < batch:
                break
    if total.finished_jobs:
        ctx.log(f"delivered pending publications: {len(total.finished_jobs)} jobs finished")
    return total


# --------------------------------------------------------------------------- failures, retries


def fail(
    ctx: StepContext, outcome: StepOutcome, expected: Status | None, error: BaseException
) -> StepOutcome:
    """Record a failure on the job: ``external_error`` for transient ones (then the retry
    policy), ``internal_error`` otherwise. Returns the outcome with ``ok=False``."""
    failed = outcome.model_copy(update={"ok": False})
    keeper_for(ctx.store, ctx.settings).release(outcome.job_id, outcome.lease_token)
    if isinstance(error, TransitionError):
        # The job is no longer ours (lease lost, or moved by someone else): write nothing.
        ctx.log(f"job {outcome.job_id}: {error}")
        return failed
    if connection_lost(error):
        # Not the job's failure, and nothing can be written: once the lease expires,
        # maintenance rescues the job (or finishes its publication).
        ctx.log(f"job {outcome.job_id}: the job store is unreachable, left to maintenance: {error}")
        return failed
    transient = isinstance(error, ProcessingError) and error.transient
    subtype = error.subtype if isinstance(error, ProcessingError) else type(error).__name__
    target = S.EXTERNAL_ERROR if transient else S.INTERNAL_ERROR
    job = ctx.store.get_job(outcome.job_id, touch=False)
    origin = expected or Status(job.status)
    message = str(error) or type(error).__name__
    ctx.log(f"job {job.id}: {target.value}: {message}")
    try:
        ctx.store.transition(
            job.id,
            target,
            expected_from=origin,
            lease_token=outcome.lease_token if origin in _LEASED_ORIGINS else None,
            message=message[:4000],
            error_class=type(error).__name__,
            error_subtype=subtype,
            run=ctx.run,
        )
    except TransitionError as lost:
        ctx.log(f"job {job.id}: could not record the failure: {lost}")
        return failed
    if transient:
        retry_or_cancel(ctx, job.id)
    if outcome.work_dir:
        storage.remove_work_dir(Path(outcome.work_dir), keep=ctx.settings.keep_failed_workdirs)
    return failed


_LEASED_ORIGINS = frozenset({S.STARTED, S.PRE_PROCESSING, S.PROCESSING, S.POST_PROCESSING})


def retry_or_cancel(ctx: StepContext, job_id: int) -> Status:
    """``external_error -> error_checked``, then ``ready`` (after a backoff) while attempts
    remain, else ``cancelled``."""
    store = ctx.store
    job = store.transition(
        job_id,
        S.ERROR_CHECKED,
        expected_from=(S.EXTERNAL_ERROR, S.INTERNAL_ERROR),
        run=ctx.run,
        message="error checked by the retry policy",
    )
    if job.attempts >= job.max_attempts:
        store.transition(
            job_id,
            S.CANCELLED,
            expected_from=S.ERROR_CHECKED,
            run=ctx.run,
            message=f"attempts exhausted ({job.attempts} of {job.max_attempts})",
        )
        return S.CANCELLED
    delay = backoff_seconds(job.attempts, ctx.settings)
    store.transition(
        job_id,
        S.READY,
        expected_from=S.ERROR_CHECKED,
        run=ctx.run,
        message=f"retry {job.attempts + 1} of {job.max_attempts} after {delay:.1f} s",
        values={"retry_at": ctx.now() + timedelta(seconds=delay)},
    )
    return S.READY
