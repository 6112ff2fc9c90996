"""The launcher's Prefect side: one flow run per launched job (or batch of jobs) on its flavor's
work pool, and the check of launched jobs against their flow runs' Prefect states.

The plain functions take a Prefect client (``get_client(sync_client=True)``) so they run in a
flow, a test or a benchmark alike; the store side (which jobs, which caps, the claim) is
:mod:`db.launcher`. A deployment belongs to one work pool, so for a pool other than the one
``process-job`` / ``process-batch`` were deployed on the launcher keeps a copy of the deployment
on that pool, named ``<deployment>@<pool>``, made the first time it is needed (same entrypoint,
pull steps and parameters).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled
from pydantic import BaseModel, Field

from db import launcher as admission
from db.records import RunIds
from db.statuses import RUNNING
from db.store import JobStore
from jobline.settings import FlavorPool, Settings
from jobtypes.base import JobType, load_job_type
from tasks.retry import backoff_seconds
from tasks.steps import worker_name

logger = logging.getLogger(__name__)
#: The deployments the launcher creates flow runs of (``flow/deployment``).
PROCESS_JOB = "process-job/process-job"
PROCESS_BATCH = "process-batch/process-batch"
#: Flow runs created at once (HTTP requests in flight).
CREATE_CONCURRENCY = 8
#: Prefect states in which a flow run will never start its job.
ENDED = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
#: Prefect states of a flow run not started yet.
NOT_STARTED = {StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED}
#: Prefect states of a flow run being or having been cancelled.
CANCELLED = {StateType.CANCELLED, StateType.CANCELLING}


class LaunchReport(BaseModel):
    """What one launcher pass did."""

    running_weight: float = Field(0.0, description="Weight running when the pass began.")
    launched: int = Field(0, description="Jobs moved ready -> queued by this pass.")
    flow_runs: int = Field(0, description="Flow runs created (a batch is one).")
    failed_to_create: int = Field(0, description="Jobs whose flow run could not be created.")
    skipped: bool = Field(False, description="Another launcher pass held the lock.")
    flow_run_ids: dict[int, str] = Field(default_factory=dict, description="Job -> flow run.")
    seconds: dict[str, float] = Field(
        default_factory=dict, description="Time of each part: admission, flow runs, record."
    )


class LaunchCheck(BaseModel):
    """What one check of launched jobs against Prefect found."""

    returned: list[int] = Field(default_factory=list, description="Sent back (retry policy).")
    cancelled: list[int] = Field(default_factory=list, description="Cancelled in Prefect.")


@dataclass(frozen=True, slots=True)
class Launch:
    """One flow run to create: its deployment, pool, jobs, name and tags."""

    deployment: str
    pool: FlavorPool
    jobs: list[admission.LaunchedJob]
    name: str
    tags: list[str]

    @property
    def parameters(self) -> dict[str, Any]:
        if self.deployment == PROCESS_BATCH:
            return {"job_ids": [job.job_id for job in self.jobs]}
        return {"job_id": self.jobs[0].job_id}


@dataclass
class Deployments:
    """The deployment to use per (deployment, pool), made on first use (see the module doc)."""

    client: SyncPrefectClient
    ids: dict[tuple[str, str], UUID] = field(default_factory=dict)

    def on_pool(self, name: str, pool: str) -> UUID:
        if (name, pool) not in self.ids:
            self.ids[(name, pool)] = self._find_or_copy(name, pool)
        return self.ids[(name, pool)]

    def _find_or_copy(self, name: str, pool: str) -> UUID:
        base = self.client.read_deployment_by_name(name)
        if base.work_pool_name == pool:
            return base.id
        flow_name, deployment_name = name.split("/", 1)
        copy_name = f"{deployment_name}@{pool}"
        try:
            return self.client.read_deployment_by_name(f"{flow_name}/{copy_name}").id
        except ObjectNotFound:
            pass
        return self.client.create_deployment(
            flow_id=base.flow_id,
            name=copy_name,
            description=f"{base.description or name} On the work pool {pool} (made by the "
            "launcher from the deployment of prefect.yaml).",
            work_pool_name=pool,
            work_queue_name="default",
            path=base.path,
            entrypoint=base.entrypoint,
            pull_steps=base.pull_steps,
            parameter_openapi_schema=base.parameter_openapi_schema,
            enforce_parameter_schema=base.enforce_parameter_schema,
            job_variables=base.job_variables,
            tags=base.tags,
        )


# ------------------------------------------------------------------------------ launching


def policies_for(store: JobStore, settings: Settings) -> dict[str, admission.TypePolicy]:
    """The launch policy of every job type with ready or running jobs, from its declaration
    and the settings' overrides; a job type that cannot be loaded gets the default policy."""
    wanted = {"ready", *(status.value for status in RUNNING)}
    present = {job_type for job_type, status in store.count_by_type_status() if status in wanted}
    policies = {}
    for import_path in sorted(present):
        kind = _job_type_or_none(import_path, settings)
        if kind is None:
            continue
        policies[import_path] = admission.TypePolicy(
            job_type=import_path,
            weight=settings.launch_weights.get(kind.name, kind.launch_weight),
            max_running_weight=settings.launcher_max_running_weight_by_type.get(kind.name),
            backprocessing_horizon=kind.backprocessing_horizon,
            batch_size=kind.batch_size,
        )
    return policies


def limits_for(settings: Settings) -> admission.Limits:
    return admission.Limits(
        max_running_weight=settings.launcher_max_running_weight,
        max_launches=settings.launcher_max_launches_per_pass,
        escalation=settings.escalation_steps(),
        max_flow_runs=settings.launcher_max_flow_runs_per_pass,
    )


def launch_pass(
    settings: Settings,
    store: JobStore,
    client: SyncPrefectClient,
    *,
    run: RunIds | None = None,
    log: Callable[[str], None] = logger.info,
) -> LaunchReport:
    """One pass: admit and claim ready jobs (:func:`db.launcher.admit_and_claim`), create their
    flow runs on their flavors' pools without waiting for them, record the flow run ids."""
    started = time.perf_counter()
    decided = admission.admit_and_claim(
        store,
        policies_for(store, settings),
        limits_for(settings),
        f"launcher {worker_name()}",
        run=run,
    )
    report = LaunchReport(running_weight=decided.total_weight, skipped=not decided.locked)
    if not decided.locked:
        log("another launcher pass holds the lock: nothing launched")
        return report
    admitted = time.perf_counter()
    launches = plan(decided.claimed, settings)
    deployments = Deployments(client)
    for deployment, pool in {(one.deployment, one.pool.pool) for one in launches}:
        deployments.on_pool(deployment, pool)
    with ThreadPoolExecutor(CREATE_CONCURRENCY, thread_name_prefix="jobline-launch") as pool:
        created = list(pool.map(lambda one: _create(client, deployments, one, log), launches))
    creating = time.perf_counter()
    flow_runs: dict[int, tuple[str, str]] = {}
    for launch, flow_run_id in zip(launches, created, strict=True):
        if flow_run_id is None:
            report.failed_to_create += len(launch.jobs)
            continue
        report.flow_runs += 1
        for job in launch.jobs:
            flow_runs[job.job_id] = (job.lease_token, flow_run_id)
    admission.record_flow_runs(store, flow_runs)
    report.launched = len(decided.claimed)
    report.flow_run_ids = {job_id: flow_run for job_id, (_, flow_run) in flow_runs.items()}
    report.seconds = {
        "admission": admitted - started,
        "flow_runs": creating - admitted,
        "record": time.perf_counter() - creating,
    }
    log(
        f"launched {report.launched} jobs in {report.flow_runs} flow runs (running weight was "
        f"{report.running_weight:g} of {settings.launcher_max_running_weight:g}); seconds: "
        + ", ".join(f"{step} {seconds:.3f}" for step, seconds in report.seconds.items())
    )
    return report


def plan(jobs: Iterable[admission.LaunchedJob], settings: Settings) -> list[Launch]:
    """The flow runs for the claimed jobs: one per job, or per ``batch_size`` jobs of a job
    type that batches, each on its flavor's pool."""
    by_type: dict[str, list[admission.LaunchedJob]] = {}
    for job in jobs:
        by_type.setdefault(job.job_type, []).append(job)
    launches: list[Launch] = []
    for import_path, claimed in by_type.items():
        kind = load_job_type(import_path, settings)
        pool = settings.pool_for(kind.worker_flavor)
        tags = [f"job_type:{kind.name}", f"flavor:{kind.worker_flavor}"]
        if kind.batch_size <= 1:
            launches.extend(
                Launch(
                    PROCESS_JOB,
                    pool,
                    [job],
                    f"job {job.job_id} {job.product_id}",
                    tags + ([f"tile:{job.tile_id}"] if job.tile_id else []),
                )
                for job in claimed
            )
            continue
        for start in range(0, len(claimed), kind.batch_size):
            batch = claimed[start : start + kind.batch_size]
            tiles = sorted({job.tile_id for job in batch if job.tile_id})
            launches.append(
                Launch(
                    PROCESS_BATCH,
                    pool,
                    batch,
                    f"jobs {batch[0].job_id}..{batch[-1].job_id} {kind.name} ({len(batch)})",
                    tags + [f"tile:{tile}" for tile in tiles],
                )
            )
    return launches


def _create(
    client: SyncPrefectClient, deployments: Deployments, launch: Launch, log: Callable[[str], None]
) -> str | None:
    """Create the launch's flow run; None (logged) when Prefect refuses: its jobs stay queued
    without a flow run, and maintenance sends them back after the start limit."""
    try:
        deployment_id = deployments.on_pool(launch.deployment, launch.pool.pool)
        flow_run = client.create_flow_run_from_deployment(
            deployment_id,
            parameters=launch.parameters,
            name=launch.name,
            tags=launch.tags,
            # The same launch asked twice (a launcher retrying) is one flow run.
            idempotency_key=f"jobline-launch:{launch.jobs[0].lease_token}",
            work_queue_name=launch.pool.queue,
            job_variables=launch.pool.job_variables or None,
        )
    except Exception as error:  # noqa: BLE001 - one refused launch must not stop the others
        log(f"could not create the flow run of {launch.name}: {error}")
        return None
    return str(flow_run.id)


# ------------------------------------------------------------------------------ checking


def check_launches(
    settings: Settings,
    store: JobStore,
    client: SyncPrefectClient,
    *,
    now: datetime | None = None,
    run: RunIds | None = None,
    log: Callable[[str], None] = logger.info,
) -> LaunchCheck:
    """Compare launched jobs with their flow runs. A job still ``queued`` whose flow run ended
    (completed, failed, crashed, cancelled), was deleted, or has not started within
    ``launcher_start_limit_seconds`` (that run is cancelled) goes back through the retry policy,
    the Prefect state in its history message. A job in progress whose flow run was cancelled in
    Prefect becomes ``cancelled``."""
    now = now or store.clock()
    limit = timedelta(seconds=settings.launcher_start_limit_seconds)
    waiting = admission.launched_waiting(store)
    in_progress = admission.running_flow_runs(store)
    states = _flow_run_states(client, [w.flow_run_id for w in waiting if w.flow_run_id])
    states.update(_flow_run_states(client, list(set(in_progress.values()))))
    lost: dict[int, tuple[str | None, str]] = {}
    for job in waiting:
        why = _why_lost(job, states, now, limit)
        if why is None:
            continue
        lost[job.job_id] = (job.flow_run_id, why)
        if job.flow_run_id and states.get(job.flow_run_id, (None,))[0] in NOT_STARTED:
            _cancel_quietly(client, job.flow_run_id)
    report = LaunchCheck()
    report.returned = admission.return_lost_launches(
        store, lost, backoff=lambda attempts: backoff_seconds(attempts, settings), run=run
    )
    cancelled = {
        job_id: (flow_run_id, f"flow run {flow_run_id} {states[flow_run_id][1]} in Prefect")
        for job_id, flow_run_id in in_progress.items()
        if flow_run_id in states and states[flow_run_id][0] in CANCELLED
    }
    report.cancelled = admission.cancel_by_flow_run(store, cancelled, run=run)
    if report.returned or report.cancelled:
        log(
            f"launched jobs sent back: {report.returned}; cancelled with their flow run: "
            f"{report.cancelled}"
        )
    return report


def _why_lost(
    job: admission.LaunchedWaiting,
    states: dict[str, tuple[StateType, str]],
    now: datetime,
    limit: timedelta,
) -> str | None:
    waited = now - job.queued_at
    if job.flow_run_id is None:
        if waited <= limit:
            return None
        return f"no flow run was created for it within {limit}"
    if job.flow_run_id not in states:
        return f"flow run {job.flow_run_id} was deleted in Prefect before it started the job"
    state_type, state_name = states[job.flow_run_id]
    if state_type in ENDED:
        return f"flow run {job.flow_run_id} ended {state_name} without starting the job"
    if state_type in NOT_STARTED and waited > limit:
        return f"flow run {job.flow_run_id} still {state_name} after {limit}: cancelled"
    return None


def _flow_run_states(
    client: SyncPrefectClient, flow_run_ids: list[str]
) -> dict[str, tuple[StateType, str]]:
    """The state (type, name) of each existing flow run; deleted ones are missing."""
    found: dict[str, tuple[StateType, str]] = {}
    chunk = 200
    for start in range(0, len(flow_run_ids), chunk):
        ids = [UUID(one) for one in flow_run_ids[start : start + chunk]]
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
        )
        for flow_run in runs:
            if flow_run.state is not None:
                found[str(flow_run.id)] = (flow_run.state.type, flow_run.state.name)
    return found


def _cancel_quietly(client: SyncPrefectClient, flow_run_id: str) -> None:
    """Cancel a flow run that has not started, so it never starts a job sent back."""
    try:
        client.set_flow_run_state(UUID(flow_run_id), Cancelled(message="job sent back"), force=True)
    except Exception as error:  # noqa: BLE001 - the job is sent back either way
        logger.warning("could not cancel flow run %s: %s", flow_run_id, error)


def _job_type_or_none(import_path: str, settings: Settings) -> JobType | None:
    try:
        return load_job_type(import_path, settings)
    except Exception as error:  # noqa: BLE001 - an unknown job type is not launched
        logger.warning("job type %s cannot be loaded, not launched: %s", import_path, error)
        return None
