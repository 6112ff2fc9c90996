"""``/jobs``: create, list, read, patch, retry, cancel and await jobs, and their metadata."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from api.deps import HubDep, JobIdPath, KeyPath, SettingsDep, StoreDep
from api.errors import ERROR_RESPONSES
from api.live import Wakeup
from api.schemas import (
    INT64_MAX,
    ActionRequest,
    ApiMetadata,
    ErrorBody,
    HistoryEntry,
    JobCreate,
    JobOut,
    JobPage,
    JobPatch,
    MetadataOut,
    OptionalText,
    Phase,
    UtcDatetime,
    WaitResult,
)
from db.models import Job
from db.records import JobFilter, NewJob, config_key, product_key
from db.statuses import TERMINAL, Status, statuses_in_phase
from db.store import JobStore, model_name
from jobline.exceptions import JobNotFound
from jobtypes.base import JobType, load_job_type

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
    kind = load_job_type(body.job_type, settings)
    # Keys are made from the job type's name; a job type migration 0006 could not load gets
    # its stored keys rewritten before this one is looked up.
    store.finish_pending_rekey(body.job_type, kind.name)
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
    if body.product_id is not None:
        key = product_key(kind.name, body.product_id)
        product_id = body.product_id
    else:
        key = config_key(kind.name, body.config or {})
        product_id = f"config:{key.hex()}"
    return NewJob(
        job_type=body.job_type,
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
    )


def _existing(store: JobStore, key: bytes) -> Job:
    job = store.get_job_by_key(key)
    if job is None:  # inserted or found, then deleted in between
        raise JobNotFound(f"with key {key.hex()}")
    return job


# -------------------------------------------------------------------------------- read


@router.get("")
def list_jobs(
    store: StoreDep,
    status: Annotated[
        list[Status] | None, Query(description="Only jobs in these statuses (repeatable).")
    ] = None,
    phase: Annotated[Phase | None, Query(description="Only jobs in this phase.")] = None,
    job_type: Annotated[OptionalText, Query(max_length=200)] = None,
    tile_id: Annotated[OptionalText, Query(max_length=64)] = None,
    created_after: Annotated[UtcDatetime | None, Query(description="Inclusive.")] = None,
    created_before: Annotated[UtcDatetime | None, Query(description="Exclusive.")] = None,
    cursor: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="next_cursor of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobPage:
    """Jobs in id order, a page at a time (keyset pagination)."""
    statuses = _statuses(status, phase)
    if statuses is not None and not statuses:
        return JobPage(jobs=[], next_cursor=None)
    filters = JobFilter(
        statuses=tuple(statuses or ()),
        job_type=job_type,
        tile_id=tile_id,
        created_after=created_after,
        created_before=created_before,
    )
    page = store.list_jobs(filters, after=cursor, limit=limit)
    return JobPage(jobs=[JobOut.from_job(job) for job in page.jobs], next_cursor=page.next_cursor)


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
    hub: HubDep,
    timeout: Annotated[
        float, Query(ge=0, le=3600, allow_inf_nan=False, description="Seconds to wait at most.")
    ] = 30.0,
) -> WaitResult:
    """Long-poll until the job is terminal or ``timeout`` passes.

    Always 200: ``terminal`` says whether the job finished, ``timed_out`` that the wait ended
    first (the job is then the current one; ask again to keep waiting).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with Wakeup(hub, lambda notice: notice.concerns(job_id)) as wakeup:
        while True:
            job = await run_in_threadpool(store.get_job, job_id, touch=False)
            terminal = Status(job.status) in TERMINAL
            remaining = deadline - loop.time()
            if terminal or remaining <= 0:
                return WaitResult(
                    job=JobOut.from_job(job), terminal=terminal, timed_out=not terminal
                )
            await wakeup.wait(remaining)


# ------------------------------------------------------------------------------ change


@router.patch("/{job_id}", responses={**NOT_FOUND, **CONFLICT})
def patch_job(job_id: JobIdPath, patch: JobPatch, store: StoreDep) -> JobOut:
    """Change documented fields of a job; a new ``status`` goes through the state machine.

    Patchable: ``status`` (with an optional ``message`` and ``error_class``), ``priority``,
    ``max_attempts``, ``output_path``, ``output_publication_date``, ``output_files``.
    """
    current = store.get_job(job_id, touch=False)
    values = patch.field_values()
    if patch.status is not None and patch.status.value != current.status:
        job = store.transition(
            job_id,
            patch.status,
            expected_from=current.status,
            message=patch.message,
            error_class=patch.error_class,
            values=values,
        )
        return JobOut.from_job(job)
    for name in ("message", "error_class"):
        if getattr(patch, name) is not None:
            raise HTTPException(422, f"{name}: only accompanies a change of status")
    job = store.update_job_fields(job_id, values) if values else current
    return JobOut.from_job(job)


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
def list_metadata(job_id: JobIdPath, store: StoreDep) -> list[MetadataOut]:
    """Every metadata document of the job."""
    return [MetadataOut.from_row(row) for row in store.metadata_documents(job_id)]


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
    job_id: JobIdPath, key: KeyPath, document: ApiMetadata, store: StoreDep
) -> MetadataOut:
    """Store a JSON object under ``key`` (replacing one written through the API; a document a
    task wrote must be deleted first: 409)."""
    row = store.set_metadata_document(
        job_id, key, document.model_dump(mode="json"), API_METADATA_MODEL
    )
    return MetadataOut.from_row(row)


@router.delete("/{job_id}/metadata/{key}", status_code=204, responses=NOT_FOUND)
def delete_metadata(job_id: JobIdPath, key: KeyPath, store: StoreDep) -> Response:
    """Delete one metadata document."""
    store.get_metadata_document(job_id, key)  # 404 naming the job or the key
    store.delete_metadata(job_id, key)
    return Response(status_code=204)
