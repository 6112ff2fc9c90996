"""``/jobs``: create, list, read, patch, retry, cancel and await jobs, and their metadata."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from api.deps import JobIdPath, KeyPath, LiveDep, SettingsDep, StoreDep
from api.errors import ERROR_RESPONSES, OnlyAllowed
from api.schemas import (
    INT64_MAX,
    METADATA_KEY_PATTERN,
    ActionRequest,
    ApiMetadata,
    BulkOut,
    BulkRequest,
    ClaimOut,
    ClaimRequest,
    ErrorBody,
    HeartbeatRequest,
    HistoryEntry,
    JobCreate,
    JobOut,
    JobPage,
    JobPatch,
    LeaseOut,
    MetadataOut,
    MetadataPage,
    MetadataSummary,
    NoteCreate,
    OptionalText,
    Phase,
    UtcDatetime,
    WaitResult,
)
from db.models import Job
from db.records import JobFilter, MetadataLimits, NewJob, config_key, product_key
from db.statuses import TERMINAL, WORKER_OWNED, Status, statuses_in_phase
from db.store import JobStore, model_name, utcnow
from jobline.exceptions import JobNotFound, MetadataTooLarge
from jobline.settings import Settings
from jobtypes.base import JobType, load_job_type
from jobtypes.locations import lies_within
from jobtypes.registry import registry_for

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

NOT_FOUND = {404: {"model": ErrorBody, "description": "No such job (or metadata key)."}}
CONFLICT = {409: {"model": ErrorBody, "description": "The state machine refused the change."}}
API_METADATA_MODEL = model_name(ApiMetadata)


# ------------------------------------------------------------------------------ create


@router.post(
    "",
    status_code=201,
    responses={
        201: {"description": "Created."},
        200: {"model": JobOut, "description": "An identical job existed: it is returned."},
    },
)
def create_job(
    body: JobCreate, store: StoreDep, settings: SettingsDep, response: Response
) -> JobOut:
    """Create a job, or return the identical one that exists (200 instead of 201).

    An identical job is one with the same job type and product id (or, without a product id,
    the same config). Requesting an expired job again sends it back to ``initialized``.
    """
    kind = load_job_type(body.job_type, settings)  # registered job types only
    # Keys are made from the job type's name; a job type migration 0006 could not load gets
    # its stored keys rewritten before this one is looked up.
    store.finish_pending_rekey(kind.import_path(), kind.name)
    new = _new_job(body, kind)
    # insert_jobs also sends an expired job of the key back to initialized (and reports it).
    touched = new.key in store.insert_jobs([new]).inserted
    job = _existing(store, new.key)
    if touched and job.created_at == job.status_changed_at:  # new, not revived
        response.headers["Location"] = f"/jobs/{job.id}"
    else:
        response.status_code = 200
    return JobOut.from_job(job)


def _new_job(body: JobCreate, kind: JobType) -> NewJob:
    type_path = kind.import_path()  # a name is stored as its job type's import path
    if body.input_path is not None and not lies_within(body.input_path, kind.input_url):
        raise HTTPException(
            422,
            f"input_path: must lie under the job type's input storage {kind.input_url} "
            "(no '.' or '..' parts, no query)",
        )
    # Keys hash the job type's stable name, so a class may move modules (migration 0006).
    if body.product_id is not None:
        key = product_key(kind.name, body.product_id)
        product_id = body.product_id
    else:
        key = config_key(kind.name, body.config or {})
        product_id = f"config:{key.hex()}"
    return NewJob(
        job_type=type_path,
        product_id=product_id,
        queue=body.queue or kind.queue,
        priority=body.priority,
        tile_id=body.tile_id,
        input_path=body.input_path,
        input_publication_date=body.input_publication_date,
        input_files=body.input_files,
        config=body.config or {},
        max_attempts=body.max_attempts or kind.max_attempts,
        message="submitted through the API",
        job_key=key,
        due_at=kind.due_at(body.input_publication_date, utcnow()),
    )


def stored_job_type(reference: str | None, settings: Settings) -> str | None:
    """A job type filter as stored: a registered name becomes its import path; anything else
    is kept (and matches nothing that is not stored so)."""
    if reference is None:
        return None
    return registry_for(settings).canonical(reference) or reference


def _existing(store: JobStore, key: bytes) -> Job:
    job = store.get_job_by_key(key)
    if job is None:  # inserted or found, then deleted in between
        raise JobNotFound(f"with key {key.hex()}")
    return job


# -------------------------------------------------------------------------------- read


@router.get("")
def list_jobs(
    store: StoreDep,
    settings: SettingsDep,
    status: Annotated[
        list[Status] | None, Query(description="Only jobs in these statuses (repeatable).")
    ] = None,
    phase: Annotated[Phase | None, Query(description="Only jobs in this phase.")] = None,
    job_type: Annotated[
        OptionalText, Query(max_length=200, description="Import path or name of a job type.")
    ] = None,
    tile_id: Annotated[OptionalText, Query(max_length=64)] = None,
    created_after: Annotated[UtcDatetime | None, Query(description="Inclusive.")] = None,
    created_before: Annotated[UtcDatetime | None, Query(description="Exclusive.")] = None,
    late: Annotated[
        bool | None, Query(description="true: only late jobs (past their due time, not done).")
    ] = None,
    cursor: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="next_cursor of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobPage:
    """Jobs in id order, a page at a time (keyset pagination)."""
    statuses = _statuses(status, phase)
    if statuses is not None and not statuses:
        return JobPage(jobs=[], next_cursor=None)
    now = utcnow()
    filters = JobFilter(
        statuses=tuple(statuses or ()),
        job_type=stored_job_type(job_type, settings),
        tile_id=tile_id,
        created_after=created_after,
        created_before=created_before,
        late_at=now if late else None,
    )
    page = store.list_jobs(filters, after=cursor, limit=limit)
    return JobPage(
        jobs=[JobOut.from_job(job, now) for job in page.jobs], next_cursor=page.next_cursor
    )


# --------------------------------------------------------------------------- bulk actions


def bulk_filter(body: BulkRequest, settings: Settings) -> JobFilter | None:
    """The store's filter of a bulk request; None when its status and phase exclude all."""
    statuses = _statuses(body.status, body.phase)
    if statuses is not None and not statuses:
        return None
    return JobFilter(
        statuses=tuple(statuses or ()),
        job_type=stored_job_type(body.job_type, settings),
        tile_id=body.tile_id,
        created_after=body.created_after,
        created_before=body.created_before,
        late_at=utcnow() if body.late else None,
    )


NOT_POST = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"]


@router.api_route("/retry", methods=NOT_POST, include_in_schema=False)
@router.api_route("/cancel", methods=NOT_POST, include_in_schema=False)
def bulk_method_not_allowed(request: Request) -> None:
    """405 (``Allow: POST``) for the bulk actions' other methods, which ``/jobs/{job_id}`` would
    otherwise take for a job id."""
    raise OnlyAllowed(request.method, ["POST"])


@router.post("/retry")
def retry_jobs(body: BulkRequest, store: StoreDep, settings: SettingsDep) -> BulkOut:
    """Retry every failed job (``internal_error``, ``external_error``, ``error_checked``) of a
    filter; with ``dry_run`` only count them."""
    return _bulk_action(
        body, settings, store.count_retryable, store.retry_many, "retried by an operator (bulk)"
    )


@router.post("/cancel")
def cancel_jobs(body: BulkRequest, store: StoreDep, settings: SettingsDep) -> BulkOut:
    """Cancel every job of a filter whose status allows it; with ``dry_run`` only count them."""
    return _bulk_action(
        body,
        settings,
        store.count_cancellable,
        store.cancel_many,
        "cancelled by an operator (bulk)",
    )


def _bulk_action(
    body: BulkRequest,
    settings: Settings,
    count: Callable[[JobFilter], int],
    act: Callable[..., int],
    default_message: str,
) -> BulkOut:
    """One bulk action: ``count`` the jobs it would change (dry run) or ``act`` on them."""
    filters = bulk_filter(body, settings)
    if filters is None:
        return BulkOut(dry_run=body.dry_run, jobs=0)
    if body.dry_run:
        return BulkOut(dry_run=True, jobs=count(filters))
    return BulkOut(dry_run=False, jobs=act(filters, message=body.message or default_message))


def _statuses(status: list[Status] | None, phase: str | None) -> list[Status] | None:
    """The statuses both filters allow (None: no filter; empty: nothing can match)."""
    if phase is None:
        return status
    in_phase = statuses_in_phase(phase)
    return in_phase if status is None else [s for s in in_phase if s in status]


@router.get("/{job_id}", responses=NOT_FOUND)
def get_job(job_id: JobIdPath, store: StoreDep) -> JobOut:
    """One job (reading it counts as an access for the expiry policy)."""
    return JobOut.from_job(store.get_job(job_id))


@router.get("/{job_id}/history", responses=NOT_FOUND)
def get_history(
    job_id: JobIdPath,
    store: StoreDep,
    after: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="Only changes after this id.")
    ] = None,
) -> list[HistoryEntry]:
    """The job's status changes, oldest first."""
    return [HistoryEntry.from_change(change) for change in store.history(job_id, after=after)]


@router.get("/{job_id}/wait", responses=NOT_FOUND)
async def wait_for_job(
    job_id: JobIdPath,
    store: StoreDep,
    live: LiveDep,
    timeout: Annotated[
        float, Query(ge=0, le=3600, allow_inf_nan=False, description="Seconds to wait at most.")
    ] = 30.0,
) -> WaitResult:
    """Long-poll until the job is terminal or ``timeout`` passes.

    Always 200: ``terminal`` says whether the job finished, ``timed_out`` that the wait ended
    first (the job is then the current one; ask again to keep waiting). A wait holds no
    database connection: it reads the job when it starts, when the server's one live feed
    reports a change of the job into a terminal status, and when it times out.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # Subscribe before the first read: a change committed in between is delivered.
    with live.subscribe(job_id=job_id) as changes:
        job = await run_in_threadpool(store.get_job, job_id, touch=False)
        while Status(job.status) not in TERMINAL:
            remaining = deadline - loop.time()
            if remaining <= 0:
                job = await run_in_threadpool(store.get_job, job_id, touch=False)
                break
            events = await changes.next_events(remaining)
            if any(Status(event.to_status) in TERMINAL for event in events):
                job = await run_in_threadpool(store.get_job, job_id, touch=False)
    terminal = Status(job.status) in TERMINAL
    return WaitResult(job=JobOut.from_job(job), terminal=terminal, timed_out=not terminal)


# ------------------------------------------------------------------------------ change


@router.patch("/{job_id}", responses={**NOT_FOUND, **CONFLICT})
def patch_job(job_id: JobIdPath, patch: JobPatch, store: StoreDep, settings: SettingsDep) -> JobOut:
    """Change documented fields of a job; a new ``status`` goes through the state machine.

    Patchable: ``status`` (with an optional ``message``, ``error_class`` and ``lease_token``),
    ``priority``, ``max_attempts``, ``output_path``, ``output_publication_date``,
    ``output_files``. Who may make which move:

    * into a status workers own (``queued`` through ``published``): only the holder of the
      job's current lease (``lease_token`` from ``POST /jobs/{id}/claim``), else 409;
    * into any other status the state machine allows (``configured``, ``ready``,
      ``error_checked``, ``done``, the error statuses, ``cancelled``, ...): any token holder;
      a ``lease_token`` given with it must still own the job.

    ``output_path`` must lie under the job type's output storage (422 otherwise).
    """
    current = store.get_job(job_id, touch=False)
    values = patch.field_values()
    if values.get("output_path") is not None:
        _check_output_path(values["output_path"], current, settings)
    if patch.status is None or patch.status.value == current.status:
        job = store.update_job_fields(job_id, values) if values else current
        return JobOut.from_job(job)
    if patch.status in WORKER_OWNED and patch.lease_token is None:
        raise HTTPException(
            409,
            f"lease_token: {current.status} -> {patch.status.value} is a worker's move: it needs "
            "the job's current lease_token (an external processor claims the job with POST "
            f"/jobs/{job_id}/claim first)",
        )
    job = store.transition(
        job_id,
        patch.status,
        expected_from=current.status,
        message=patch.message,
        error_class=patch.error_class,
        lease_token=patch.lease_token,
        count_attempt=patch.status is Status.STARTED,  # an attempt starts, as a worker's does
        values=values,
    )
    return JobOut.from_job(job)


def _check_output_path(output_path: str, job: Job, settings: Settings) -> None:
    kind = load_job_type(job.job_type, settings)
    if not lies_within(output_path, kind.output_url):
        raise HTTPException(
            422,
            f"output_path: must lie under the job type's output storage {kind.output_url} "
            "(no '.' or '..' parts, no query)",
        )


# ----------------------------------------------------------- external processors' leases


@router.post(
    "/{job_id}/claim",
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "The job is not ready."}},
)
def claim_job(
    job_id: JobIdPath, body: ClaimRequest, store: StoreDep, settings: SettingsDep
) -> ClaimOut:
    """An external processor takes a ready job: ``ready -> queued`` with a lease.

    The lease token (shown only in this answer) goes with every PATCH into a worker-owned
    status (``started`` ... ``processed``); renew it with ``POST /jobs/{id}/heartbeat`` before
    it expires, or maintenance treats the processor as lost (``internal_error``, retry policy).
    """
    job = store.get_job(job_id, touch=False)
    seconds = body.lease_seconds or settings.lease_seconds
    claimed = store.claim(job.queue, 1, body.worker, lease_seconds=seconds, job_ids=[job_id])
    if not claimed:
        now = store.get_job(job_id, touch=False)
        reason = f"job {job_id} is {now.status}; only a ready job can be claimed"
        if now.status == Status.READY.value and now.retry_at is not None:
            reason = f"job {job_id} waits for its retry until {now.retry_at.isoformat()}"
        raise HTTPException(409, f"status: {reason}")
    taken = claimed[0]
    lease = LeaseOut(
        job_id=taken.id,
        lease_token=taken.lease_token or "",
        lease_expires_at=taken.lease_expires_at,  # type: ignore[arg-type]
    )
    return ClaimOut(job=JobOut.from_job(taken), lease=lease)


@router.post("/{job_id}/heartbeat", responses={**NOT_FOUND, **CONFLICT})
def heartbeat(
    job_id: JobIdPath, body: HeartbeatRequest, store: StoreDep, settings: SettingsDep
) -> LeaseOut:
    """Extend the lease of a job the caller holds (409 once the lease was lost)."""
    store.get_job(job_id, touch=False)  # 404 for an unknown job
    seconds = body.lease_seconds or settings.lease_seconds
    expires = store.heartbeat(job_id, body.lease_token, seconds)
    return LeaseOut(job_id=job_id, lease_token=body.lease_token, lease_expires_at=expires)


@router.post("/{job_id}/notes", status_code=201, responses=NOT_FOUND)
def add_note(job_id: JobIdPath, body: NoteCreate, store: StoreDep) -> HistoryEntry:
    """Add an operator's note to the job's history (its status does not change)."""
    return HistoryEntry.from_change(store.add_note(job_id, body.note, author=body.author))


@router.post("/{job_id}/retry", responses={**NOT_FOUND, **CONFLICT})
def retry_job(job_id: JobIdPath, store: StoreDep, body: ActionRequest | None = None) -> JobOut:
    """Send a failed job (internal_error, external_error, error_checked) back to ``ready``."""
    message = (body.message if body else None) or "retried through the API"
    return JobOut.from_job(store.retry(job_id, message=message))


@router.post("/{job_id}/cancel", responses={**NOT_FOUND, **CONFLICT})
def cancel_job(job_id: JobIdPath, store: StoreDep, body: ActionRequest | None = None) -> JobOut:
    """Cancel a job, if its status allows it (a cancelled job stays as it is)."""
    message = (body.message if body else None) or "cancelled through the API"
    return JobOut.from_job(store.cancel(job_id, message=message))


# ---------------------------------------------------------------------------- metadata


@router.get("/{job_id}/metadata", responses=NOT_FOUND)
def list_metadata(
    job_id: JobIdPath,
    store: StoreDep,
    after: Annotated[
        str | None,
        Query(pattern=METADATA_KEY_PATTERN, description="next_after of the previous page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MetadataPage:
    """The job's metadata keys in key order, each with its model, size and times; the
    documents themselves are read one at a time (``GET .../metadata/{key}``)."""
    rows = store.metadata_summaries(job_id, after=after, limit=limit + 1)
    items = [MetadataSummary.model_validate(row, from_attributes=True) for row in rows[:limit]]
    return MetadataPage(items=items, next_after=items[-1].key if len(rows) > limit else None)


@router.get("/{job_id}/metadata/{key}", responses=NOT_FOUND)
def get_metadata(job_id: JobIdPath, key: KeyPath, store: StoreDep) -> MetadataOut:
    """One metadata document, whatever model wrote it."""
    return MetadataOut.from_row(store.get_metadata_document(job_id, key))


@router.put(
    "/{job_id}/metadata/{key}",
    responses={
        **NOT_FOUND,
        409: {"model": ErrorBody, "description": "The key holds another model's document."},
    },
)
def put_metadata(
    job_id: JobIdPath,
    key: KeyPath,
    document: ApiMetadata,
    store: StoreDep,
    settings: SettingsDep,
) -> MetadataOut:
    """Store a JSON object under ``key`` (replacing one written through the API; a document a
    task wrote must be deleted first: 409).

    Limits (settings): a document's compact JSON at most ``JOBLINE_API_METADATA_MAX_DOCUMENT_
    BYTES`` (413), all of a job's documents together at most ``..._MAX_JOB_BYTES`` (413), at
    most ``..._MAX_KEYS`` keys per job (422).
    """
    value = document.model_dump(mode="json")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > settings.api_metadata_max_document_bytes:
        raise MetadataTooLarge(
            job_id, key, settings.api_metadata_max_document_bytes, f"the document ({size} bytes)"
        )
    limits = MetadataLimits(
        max_keys=settings.api_metadata_max_keys,
        max_job_bytes=settings.api_metadata_max_job_bytes,
    )
    row = store.set_metadata_document(job_id, key, value, API_METADATA_MODEL, limits=limits)
    return MetadataOut.from_row(row)


@router.delete("/{job_id}/metadata/{key}", status_code=204, responses=NOT_FOUND)
def delete_metadata(job_id: JobIdPath, key: KeyPath, store: StoreDep) -> Response:
    """Delete one metadata document."""
    store.get_metadata_document(job_id, key)  # 404 naming the job or the key
    store.delete_metadata(job_id, key)
    return Response(status_code=204)
