"""The launcher's store operations (no Prefect): which ready jobs to launch, in which order,
under which caps; claiming them ``ready -> queued``; recording their flow runs; and finding the
launched jobs whose flow run never reported back.

One pass reads as four steps (see :func:`admit_and_claim`): count the running weight per job
type, rank the ready jobs (priority escalated by their wait, back-processing last), pick those
the caps allow, claim them in one statement. The pass holds a transaction-level advisory lock on
PostgreSQL, so a second launcher running at the same moment launches nothing instead of reading
the same running weight and overshooting the caps; the claim's ``FOR UPDATE SKIP LOCKED`` keeps
it from taking a job that an in-process ``process-jobs`` run is claiming.

A launched job has no lease (``lease_expires_at`` NULL): no process holds it until its flow run
starts and adopts it (:func:`adopt`). The time is the store's clock, so tests control it.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    String,
    and_,
    any_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from db.maintenance import _move_to_error, _retry_policy
from db.models import Job, JobStatusChange
from db.pauses import not_paused
from db.records import RunIds
from db.statuses import RUNNING, Status
from db.store import JobStore

S = Status
#: The advisory lock one launcher pass holds (PostgreSQL): "jobline launcher" as a number.
LAUNCHER_LOCK = 0x6A6F626C696E65
#: ``error_class`` of a launched job whose flow run ended or vanished before starting it.
FLOW_RUN_LOST = "FlowRunLost"


@dataclass(frozen=True, slots=True)
class TypePolicy:
    """What the launcher knows of one job type (by its stored import path)."""

    job_type: str
    weight: float = 1.0
    #: Cap on the job type's running weight; None: only the overall cap.
    max_running_weight: float | None = None
    #: Products published before ``now - horizon`` are back-processing (launched last).
    backprocessing_horizon: timedelta | None = None
    #: Jobs the launcher puts in one flow run (``batch_size`` of the job type).
    batch_size: int = 1


@dataclass(frozen=True, slots=True)
class Limits:
    """The caps of one pass and the escalation of waiting jobs."""

    max_running_weight: float
    max_launches: int
    #: (seconds in ready, priority added), any order: the largest step reached applies.
    escalation: Sequence[tuple[float, float]] = ()
    #: Flow runs one pass may create (a batch of a job type is one); None: no cap.
    max_flow_runs: int | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A ready job the launcher may launch, with its rank."""

    job_id: int
    job_type: str
    priority: int
    effective_priority: float
    ready_since: datetime
    backprocessing: bool

    @property
    def rank(self) -> tuple[bool, float, datetime, int]:
        """Admission order: live before back-processing, higher effective priority, longer
        wait, older job."""
        return (self.backprocessing, -self.effective_priority, self.ready_since, self.job_id)


@dataclass(frozen=True, slots=True)
class LaunchedJob:
    """A job a pass moved to ``queued``; its flow run is created next."""

    job_id: int
    job_type: str
    product_id: str
    tile_id: str | None
    lease_token: str


@dataclass(slots=True)
class Admission:
    """What one pass decided: the running weight it saw, the jobs it claimed."""

    running_weight: dict[str, float] = field(default_factory=dict)
    claimed: list[LaunchedJob] = field(default_factory=list)
    #: False when another launcher held the pass lock: nothing was looked at.
    locked: bool = True

    @property
    def total_weight(self) -> float:
        return sum(self.running_weight.values())


# ------------------------------------------------------------------------------ one pass


def admit_and_claim(
    store: JobStore,
    policies: Mapping[str, TypePolicy],
    limits: Limits,
    launcher: str,
    *,
    run: RunIds | None = None,
) -> Admission:
    """One launcher pass over the store: the ready jobs the caps allow, claimed
    ``ready -> queued`` for ``launcher``, in admission order. Only job types in ``policies``
    are launched (the caller leaves out those it cannot load); every job type's running jobs
    count against the overall cap."""
    now = store.clock()
    with store._transaction() as connection:
        if (
            store.dialect == "postgresql"
            and not connection.execute(
                select(func.pg_try_advisory_xact_lock(LAUNCHER_LOCK))
            ).scalar()
        ):
            return Admission(locked=False)
        running = running_weight(connection, policies)
        ranked = rank_candidates(connection, policies, limits, running, now)
        chosen = choose(ranked, policies, limits, running)
        claimed = claim(connection, store, chosen, launcher, now, run)
    order = {candidate.job_id: index for index, candidate in enumerate(chosen)}
    claimed.sort(key=lambda job: order[job.job_id])
    return Admission(running_weight=running, claimed=claimed)


def policy_of(policies: Mapping[str, TypePolicy], job_type: str) -> TypePolicy:
    return policies.get(job_type) or TypePolicy(job_type=job_type)


def running_weight(connection: Connection, policies: Mapping[str, TypePolicy]) -> dict[str, float]:
    """The weight of the jobs ``queued`` through ``post_processing``, by job type."""
    table = Job.__table__.c
    rows = connection.execute(
        select(table.job_type, func.count())
        .where(table.status.in_([s.value for s in RUNNING]))
        .group_by(table.job_type)
    ).all()
    return {job_type: count * policy_of(policies, job_type).weight for job_type, count in rows}


def rank_candidates(
    connection: Connection,
    policies: Mapping[str, TypePolicy],
    limits: Limits,
    running: Mapping[str, float],
    now: datetime,
) -> list[Candidate]:
    """Per job type with room under its caps, its best ready jobs (as many as could fit), in
    admission order across job types."""
    table = Job.__table__.c
    room = limits.max_running_weight - sum(running.values())
    if room <= 0:
        return []
    ready_types = connection.execute(
        select(table.job_type).where(table.status == S.READY.value).distinct()
    ).scalars()
    candidates: list[Candidate] = []
    for job_type in ready_types:
        if job_type not in policies:
            continue
        policy = policies[job_type]
        type_room = room
        if policy.max_running_weight is not None:
            type_room = min(room, policy.max_running_weight - running.get(job_type, 0.0))
        fits = min(math.floor(type_room / policy.weight + 1e-9), limits.max_launches)
        if fits > 0:
            candidates.extend(_best_of_type(connection, policy, limits, now, fits))
    return sorted(candidates, key=lambda candidate: candidate.rank)


def escalation_sql(ready_since: Any, now: datetime, steps: Sequence[tuple[float, float]]) -> Any:
    """The priority a job gains by its wait, as SQL: the bonus of the largest step reached."""
    ordered = sorted(steps, reverse=True)
    if not ordered:
        return literal(0)
    return case(
        *((ready_since <= now - timedelta(seconds=waited), bonus) for waited, bonus in ordered),
        else_=0,
    )


def escalated(priority: int, waited: timedelta, steps: Sequence[tuple[float, float]]) -> float:
    """The same in Python: ``priority`` plus the bonus of the largest step ``waited`` reached."""
    reached = [bonus for seconds, bonus in steps if waited.total_seconds() >= seconds]
    return priority + (max(reached, key=abs) if reached else 0)


def _best_of_type(
    connection: Connection, policy: TypePolicy, limits: Limits, now: datetime, limit: int
) -> list[Candidate]:
    table = Job.__table__.c
    bonus = escalation_sql(table.status_changed_at, now, limits.escalation)
    effective = (table.priority + bonus).label("effective")
    if policy.backprocessing_horizon is None:
        backprocessing: Any = literal(0)
    else:
        cutoff = now - policy.backprocessing_horizon
        backprocessing = case((table.input_publication_date < cutoff, 1), else_=0)
    backprocessing = backprocessing.label("backprocessing")
    rows = connection.execute(
        select(table.id, table.priority, effective, table.status_changed_at, backprocessing)
        .where(
            table.status == S.READY.value,
            table.job_type == policy.job_type,
            or_(table.retry_at.is_(None), table.retry_at <= now),
            not_paused(table),  # a paused job type or queue is not launched
        )
        .order_by(backprocessing, effective.desc(), table.status_changed_at, table.id)
        .limit(limit)
    ).all()
    return [
        Candidate(
            job_id=row.id,
            job_type=policy.job_type,
            priority=row.priority,
            effective_priority=float(row.effective),
            ready_since=row.status_changed_at,
            backprocessing=bool(row.backprocessing),
        )
        for row in rows
    ]


def choose(
    ranked: Sequence[Candidate],
    policies: Mapping[str, TypePolicy],
    limits: Limits,
    running: Mapping[str, float],
) -> list[Candidate]:
    """The candidates, in order, that fit under the overall cap, their job type's cap, the
    launches per pass and the flow runs per pass. A candidate that does not fit is skipped
    and later, lighter ones may still fit (a heavy job type does not block a light one)."""
    total = sum(running.values())
    by_type = dict(running)
    chosen: list[Candidate] = []
    #: Jobs chosen per job type, and the flow runs they make (a batch is one).
    taken: dict[str, int] = {}
    flow_runs = 0
    for candidate in ranked:
        if len(chosen) >= limits.max_launches:
            break
        policy = policy_of(policies, candidate.job_type)
        weight = policy.weight
        after = by_type.get(candidate.job_type, 0.0) + weight
        if total + weight > limits.max_running_weight + 1e-9:
            continue
        if policy.max_running_weight is not None and after > policy.max_running_weight + 1e-9:
            continue
        # As tasks/launcher.py plans them: a job type's jobs in batches of its batch size.
        opens_a_flow_run = taken.get(candidate.job_type, 0) % max(1, policy.batch_size) == 0
        full = limits.max_flow_runs is not None and flow_runs >= limits.max_flow_runs
        if opens_a_flow_run and full:
            continue  # a job joining a batch opened already may still fit
        flow_runs += opens_a_flow_run
        chosen.append(candidate)
        taken[candidate.job_type] = taken.get(candidate.job_type, 0) + 1
        total += weight
        by_type[candidate.job_type] = after
    return chosen


def claim(
    connection: Connection,
    store: JobStore,
    chosen: Sequence[Candidate],
    launcher: str,
    now: datetime,
    run: RunIds | None,
) -> list[LaunchedJob]:
    """``ready -> queued`` for the chosen jobs still ready, in one statement (rows another
    claimer holds are skipped); each gets a lease token, no lease expiry, no flow run yet."""
    if not chosen:
        return []
    table = Job.__table__.c
    ids = [candidate.job_id for candidate in chosen]
    id_array = store.dialect == "postgresql"
    still_ready = (
        select(table.id)
        .where(
            table.id == any_(bindparam("b_ids", type_=ARRAY(BigInteger)))
            if id_array
            else table.id.in_(bindparam("b_ids", expanding=True)),
            table.status == S.READY.value,
        )
        .with_for_update(skip_locked=True)
        .cte("still_ready")
    )
    assignments = store._assignments(
        S.QUEUED, f"launched by {launcher}", None, None, run, False, None
    )
    token = uuid.uuid4().hex
    assignments.update(
        worker=launcher,
        lease_token=literal(f"{token}:") + table.id.cast(String),
        lease_expires_at=None,
        claimed_at=now,
        flow_run_id=None,
    )
    rows = connection.execute(
        update(Job.__table__)
        .where(table.id.in_(select(still_ready.c.id)), table.status == S.READY.value)
        .values(**assignments)
        .returning(table.id, table.job_type, table.product_id, table.tile_id, table.lease_token),
        {"b_ids": ids},
    ).all()
    return [
        LaunchedJob(
            job_id=row.id,
            job_type=row.job_type,
            product_id=row.product_id,
            tile_id=row.tile_id,
            lease_token=row.lease_token,
        )
        for row in rows
    ]


# ------------------------------------------------------------------------------ flow runs


def record_flow_runs(store: JobStore, flow_runs: Mapping[int, tuple[str, str]]) -> list[int]:
    """Store each launched job's flow run id (``{job_id: (lease_token, flow_run_id)}``) on the
    job and on the history row of its launch; jobs no longer queued under that token (already
    rescued) are left alone. Returns the jobs recorded."""
    if not flow_runs:
        return []
    by_run: dict[str, list[tuple[int, str]]] = {}
    for job_id, (token, flow_run_id) in flow_runs.items():
        by_run.setdefault(flow_run_id, []).append((job_id, token))
    recorded: set[int] = set()
    with store._transaction() as connection:
        # One pair of statements per flow run, not per job: every statement on jobs runs the
        # history's and the statistics' statement triggers, and a batch is one flow run.
        for flow_run_id, jobs in by_run.items():
            recorded.update(_record_flow_run(connection, flow_run_id, jobs))
    return [job_id for job_id in flow_runs if job_id in recorded]


def _record_flow_run(
    connection: Connection, flow_run_id: str, jobs: Sequence[tuple[int, str]]
) -> list[int]:
    table = Job.__table__.c
    history = JobStatusChange.__table__.c
    job_ids = [job_id for job_id, _token in jobs]
    recorded = list(
        connection.execute(
            update(Job.__table__)
            .where(
                tuple_(table.id, table.lease_token).in_(jobs),
                table.status == S.QUEUED.value,
            )
            .values(flow_run_id=flow_run_id)
            .returning(table.id)
        ).scalars()
    )
    launches = (
        select(func.max(history.id))
        .where(history.job_id.in_(job_ids), history.to_status == S.QUEUED.value)
        .group_by(history.job_id)
    )
    # Also when the flow run was faster and adopted the job already (it set the job's flow run
    # id itself); not when the job was sent back and launched anew since.
    of_this_run = select(table.id).where(table.id.in_(job_ids), table.flow_run_id == flow_run_id)
    connection.execute(
        update(JobStatusChange.__table__)
        .where(history.id.in_(launches), history.job_id.in_(of_this_run))
        .values(flow_run_id=flow_run_id)
    )
    return recorded


def adopt(
    store: JobStore, job_id: int, flow_run_id: str | None, worker: str, lease_seconds: float
) -> Job | None:
    """The flow run a launcher created for a ``queued`` job takes it: a fresh lease for
    ``worker``. None when the job is not a launched job waiting for this flow run (another
    run's, rescued meanwhile, or not queued)."""
    table = Job.__table__.c
    now = store.clock()
    mine = table.flow_run_id.is_(None)
    if flow_run_id is not None:
        # Not yet recorded (the worker was faster than the launcher's second statement) or ours.
        mine = or_(mine, table.flow_run_id == flow_run_id)
    with store._transaction() as connection:
        row = connection.execute(
            update(Job.__table__)
            .where(
                table.id == job_id,
                table.status == S.QUEUED.value,
                table.lease_expires_at.is_(None),
                mine,
            )
            .values(
                worker=worker,
                lease_token=uuid.uuid4().hex,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                flow_run_id=flow_run_id,
            )
            .returning(*table)
        ).one_or_none()
    if row is None:
        return None
    return Job(**row._mapping)


# ------------------------------------------------------------------------------ runs lost


@dataclass(frozen=True, slots=True)
class LaunchedWaiting:
    """A launched job not yet started: its flow run and since when it waits."""

    job_id: int
    flow_run_id: str | None
    queued_at: datetime


def launched_waiting(store: JobStore) -> list[LaunchedWaiting]:
    """Launched jobs still ``queued`` (no flow run has adopted them), oldest first."""
    table = Job.__table__.c
    with store.session() as session:
        rows = session.execute(
            select(table.id, table.flow_run_id, table.status_changed_at)
            .where(table.status == S.QUEUED.value, table.lease_expires_at.is_(None))
            .order_by(table.status_changed_at, table.id)
        ).all()
    return [LaunchedWaiting(row.id, row.flow_run_id, row.status_changed_at) for row in rows]


def running_flow_runs(store: JobStore) -> dict[int, str]:
    """Jobs in progress (``started`` .. ``post_processing``) and the flow run holding each."""
    table = Job.__table__.c
    with store.session() as session:
        rows = session.execute(
            select(table.id, table.flow_run_id).where(
                table.status.in_([s.value for s in RUNNING - {S.QUEUED}]),
                table.flow_run_id.is_not(None),
            )
        ).all()
    return {row.id: row.flow_run_id for row in rows}


def return_lost_launches(
    store: JobStore,
    lost: Mapping[int, tuple[str | None, str]],
    *,
    backoff: Any = None,
    run: RunIds | None = None,
) -> list[int]:
    """Launched jobs whose flow run ended, vanished or never started (``{job_id: (flow_run_id,
    why)}``): ``queued -> internal_error`` with ``why`` (the Prefect state) as the message, then
    the retry policy. A job adopted meanwhile (it has a lease now) or launched again (another
    flow run) is left alone. Returns the jobs sent back."""
    from db.maintenance import no_backoff

    table = Job.__table__.c
    returned: list[int] = []
    with store.session() as session:
        for job_id, (flow_run_id, why) in sorted(lost.items()):
            same_run = (
                table.flow_run_id.is_(None)
                if flow_run_id is None
                else table.flow_run_id == flow_run_id
            )
            returned += _move_to_error(
                session,
                store,
                (S.QUEUED,),
                S.INTERNAL_ERROR,
                [table.id == job_id, table.lease_expires_at.is_(None), and_(same_run)],
                message=why,
                error_class=FLOW_RUN_LOST,
                error_subtype="flow_run",
                run=run,
            )
        if returned:
            # The launch was an attempt, so a job whose flow runs keep failing to start it is
            # cancelled once its attempts are exhausted instead of launched forever.
            session.execute(
                update(Job.__table__)
                .where(table.id.in_(returned))
                .values(attempts=table.attempts + 1)
            )
        _retry_policy(session, store, returned, backoff or no_backoff, run)
    return returned


def cancel_by_flow_run(
    store: JobStore, cancelled: Mapping[int, tuple[str, str]], *, run: RunIds | None = None
) -> list[int]:
    """Jobs in progress whose flow run was cancelled in Prefect (``{job_id: (flow_run_id,
    why)}``): ``cancelled`` (an operator gave them up), their lease released, so the worker's
    heartbeat fails and stops the container. Returns the jobs cancelled."""
    table = Job.__table__.c
    in_progress = sorted(RUNNING - {S.QUEUED}, key=lambda status: status.id)
    store._check_edge(None, S.CANCELLED, in_progress)
    done: list[int] = []
    with store.session() as session:
        for job_id, (flow_run_id, why) in sorted(cancelled.items()):
            assignments = store._assignments(S.CANCELLED, why, None, None, run, False, None)
            moved = session.execute(
                update(Job.__table__)
                .where(
                    table.id == job_id,
                    table.flow_run_id == flow_run_id,
                    table.status.in_([s.value for s in in_progress]),
                )
                .values(**assignments)
                .returning(table.id)
            ).scalar()
            if moved is not None:
                done.append(moved)
    return done
