"""The lifecycle steps as Prefect tasks: each a thin wrapper over one function of
:mod:`tasks.steps`, adding the Prefect run ids to the history and the run logger.

Tasks take the job type's import path and plain, serialisable values, so every task run shows
its inputs in the Prefect UI. Retries are jobline's own (the job's attempts and its history), so
the decorators set none; a step never raises for a job's failure.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from db.migrate import require_current_schema
from db.overview import overview_markdown, production_overview
from db.records import RunIds
from db.statuses import Status
from db.store import JobStore
from jobline.settings import Settings, get_settings
from jobtypes.base import JobType, load_job_type
from jobtypes.registry import timeliness_targets
from tasks import steps
from tasks.launcher import LaunchCheck, LaunchReport, check_launches, launch_pass
from tasks.maintenance import MaintenanceReport, run_maintenance
from tasks.results import ClaimedJob, ConfigureSummary, Discovery, InsertSummary, StepOutcome
from tasks.runners.select import runner_for


@lru_cache(maxsize=8)
def _store(database_url: str, schema: str) -> JobStore:
    """One store (and connection pool) per database per process, shared by the task threads.

    Opened only on a schema at this jobline's revision: a worker never migrates the database
    (see :mod:`db.migrate`), so on an empty or older one the flow's first task fails here, at
    once, saying to run ``jobline db upgrade``. Checked once per process and database."""
    settings = Settings(database_url=database_url, db_schema=schema)
    store = JobStore.from_settings(settings)
    try:
        require_current_schema(store.engine, settings)
    except BaseException:
        store.engine.dispose()
        raise
    return store


def store_for(settings: Settings) -> JobStore:
    """The process's store for the settings' database; a worker's store repeats transactions
    whose connection was lost (``db_reconnect_seconds``)."""
    store = _store(settings.resolved_database_url, settings.db_schema)
    store.reconnect_seconds = settings.db_reconnect_seconds
    return store


def step_context() -> steps.StepContext:
    """Settings, store, the current Prefect run ids and the run logger, for a step."""
    settings = get_settings()
    task_run = TaskRunContext.get()
    run = RunIds(
        flow_run_id=str(task_run.task_run.flow_run_id) if task_run else None,
        task_run_id=str(task_run.task_run.id) if task_run else None,
    )
    logger = get_run_logger()
    return steps.StepContext(settings=settings, store=store_for(settings), run=run, log=logger.info)


def job_type_for(reference: str) -> JobType:
    """The registered job type a flow parameter names (refused unless registered)."""
    return load_job_type(reference, get_settings())


@task(name="discover-inputs", cache_policy=NO_CACHE)
def discover_inputs(
    job_type: str, since: datetime | None = None, until: datetime | None = None
) -> Discovery:
    """Find the job type's input products published in the window."""
    return steps.discover_inputs(step_context(), job_type_for(job_type), since, until)


@task(name="insert-jobs", cache_policy=NO_CACHE)
def insert_jobs(job_type: str, discovery: Discovery) -> InsertSummary:
    """One job per new product; known products are skipped."""
    return steps.insert_jobs(step_context(), job_type_for(job_type), discovery)


@task(name="configure-batch", cache_policy=NO_CACHE)
def configure_batch(job_type: str, job_ids: list[int]) -> ConfigureSummary:
    """Configure new jobs and re-check waiting ones; the ready ones can be claimed."""
    return steps.configure_jobs(step_context(), job_type_for(job_type), job_ids)


@task(name="claim-jobs", cache_policy=NO_CACHE)
def claim_jobs(job_type: str, limit: int) -> list[ClaimedJob]:
    """Take ready jobs for this flow run."""
    return steps.claim_jobs(step_context(), job_type_for(job_type), limit)


@task(name="claim-job", task_run_name="claim job {job_id}", cache_policy=NO_CACHE)
def claim_one(job_id: int) -> tuple[str, ClaimedJob] | None:
    """Claim one given job (configuring it first if new): its job type and lease."""
    return steps.claim_one(step_context(), job_id)


@task(name="wait-for-retry", cache_policy=NO_CACHE)
def wait_for_retry(job_type: str, limit_seconds: float) -> bool:
    """Wait for the next retry of the job type when it is due within the limit."""
    return steps.wait_for_retry(step_context(), job_type_for(job_type), limit_seconds)


@task(name="pre-process", task_run_name="pre-process {claimed.label}", cache_policy=NO_CACHE)
def pre_process(job_type: str, claimed: ClaimedJob) -> StepOutcome:
    """Stage the job's inputs into its work dir."""
    return steps.pre_process(step_context(), job_type_for(job_type), claimed)


@task(name="run-container", task_run_name="run-container {outcome.label}", cache_policy=NO_CACHE)
def run_container(job_type: str, outcome: StepOutcome, runner: str | None = None) -> StepOutcome:
    """Run the scientific processing of the job."""
    ctx = step_context()
    kind = job_type_for(job_type)
    return steps.run_container(ctx, kind, outcome, runner_for(kind, ctx.settings, runner))


@task(name="post-process", task_run_name="post-process {outcome.label}", cache_policy=NO_CACHE)
def post_process(job_type: str, outcome: StepOutcome) -> StepOutcome:
    """Read the result, upload the outputs, record them."""
    return steps.post_process(step_context(), job_type_for(job_type), outcome)


@task(name="publish", task_run_name="publish {outcome.label}", cache_policy=NO_CACHE)
def publish(job_type: str, outcome: StepOutcome) -> StepOutcome:
    """Announce each output product, then finish the job."""
    return steps.publish(step_context(), job_type_for(job_type), outcome)


@task(name="deliver-publications", cache_policy=NO_CACHE)
def deliver_publications() -> int:
    """Deliver publications left pending earlier (e.g. while the broker was down); returns
    how many were sent."""
    return steps.deliver_publications(step_context()).sent


@task(name="summarize", cache_policy=NO_CACHE)
def summarize(job_type: str) -> dict[str, int]:
    """Jobs of the job type by status."""
    counts = store_for(get_settings()).count_by_type_status()
    stored_as = job_type_for(job_type).import_path()  # a name counts as its import path
    return {
        status.value: counts.get((stored_as, status.value), 0)
        for status in Status
        if counts.get((stored_as, status.value), 0)
    }


@task(name="summarize-run", cache_policy=NO_CACHE)
def summarize_run(job_ids: list[int]) -> dict[str, int]:
    """The given jobs (those a run processed) by status."""
    return store_for(get_settings()).count_statuses(job_ids)


def job_tags(job_type: str, tile_id: str | None) -> tuple[str, ...]:
    """Tags of a job's task runs, for filtering in the Prefect UI: ``job_type:<name>`` and
    ``tile:<tile>``."""
    name = job_type_for(job_type).name
    return (f"job_type:{name}",) + ((f"tile:{tile_id}",) if tile_id else ())


@task(name="maintenance", cache_policy=NO_CACHE)
def maintain() -> MaintenanceReport:
    """Rescue lost and stuck jobs, expire old ones, collect metadata, remove orphaned containers."""
    ctx = step_context()
    return run_maintenance(ctx.settings, ctx.store, run=ctx.run, log=ctx.log)


@task(name="production-status", cache_policy=NO_CACHE)
def production_status() -> str:
    """The production overview (``jobline status``) as a markdown report."""
    ctx = step_context()
    targets, queues = timeliness_targets(ctx.settings)
    return overview_markdown(production_overview(ctx.store, targets, queues))


@task(name="configure-waiting", cache_policy=NO_CACHE)
def configure_waiting() -> int:
    """Configure new jobs and re-check those waiting for a dependency, of every job type that
    has some (so the launcher finds them ready); returns how many became ready."""
    ctx = step_context()
    counts = ctx.store.count_by_type_status()
    waiting = {kind for kind, status in counts if status in (Status.INITIALIZED, Status.CONFIGURED)}
    ready = 0
    for import_path in sorted(waiting):
        ready += len(steps.configure_jobs(ctx, job_type_for(import_path), []).ready)
    return ready


@task(name="launch", cache_policy=NO_CACHE)
def launch() -> LaunchReport:
    """Admit ready jobs under the caps and create their flow runs on their flavors' pools."""
    ctx = step_context()
    with get_client(sync_client=True) as client:
        return launch_pass(ctx.settings, ctx.store, client, run=ctx.run, log=ctx.log)


@task(name="check-launches", cache_policy=NO_CACHE)
def check_launched() -> LaunchCheck:
    """Send back launched jobs whose flow run never reported back; cancel those whose flow run
    was cancelled in Prefect."""
    ctx = step_context()
    with get_client(sync_client=True) as client:
        return check_launches(ctx.settings, ctx.store, client, run=ctx.run, log=ctx.log)
