"""``/stats`` and ``/pauses``: the production overview, and pausing job types and queues."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import AfterValidator
from starlette.exceptions import HTTPException

from api.deps import SettingsDep, StoreDep
from api.errors import ERROR_RESPONSES
from api.routers.jobs import stored_job_type
from api.schemas import NAME_PATTERN, ErrorBody, PauseCreate, _name
from db.overview import Overview, PauseOut, production_overview
from db.pauses import PauseKind
from jobline.settings import Settings
from jobtypes.registry import timeliness_targets

router = APIRouter(tags=["operations"], responses=ERROR_RESPONSES)

#: Days of the daily series in ``GET /stats`` (the console's chart).
STATS_DAYS = 7


@router.get("/stats")
def get_stats(store: StoreDep, settings: SettingsDep) -> Overview:
    """Per job type: jobs by phase and status, late and stuck jobs, throughput in the last hour
    and day, timeliness (p50, p95, max latency over 24 h) against the target, and the last 7
    days (the console's overview)."""
    targets, queues = timeliness_targets(settings)
    return production_overview(store, targets, queues, days=STATS_DAYS)


@router.get("/pauses")
def list_pauses(store: StoreDep) -> list[PauseOut]:
    """Every paused job type and queue."""
    return [
        PauseOut(kind=p.kind, name=p.name, reason=p.reason, paused_at=p.paused_at)
        for p in store.pauses()
    ]


PauseName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        pattern=NAME_PATTERN,
        description="A job type (import path or name) or a queue.",
    ),
    AfterValidator(_name),
]


@router.put("/pauses/{kind}/{name}")
def pause(
    kind: PauseKind,
    name: PauseName,
    store: StoreDep,
    settings: SettingsDep,
    body: PauseCreate | None = None,
) -> PauseOut:
    """Pause a job type (import path or name) or a queue: its ready jobs are no longer claimed
    or launched; what runs goes on."""
    stored = _stored_name(kind, name, settings)
    p = store.pause(kind, stored, reason=body.reason if body else None)
    return PauseOut(kind=p.kind, name=p.name, reason=p.reason, paused_at=p.paused_at)


@router.delete(
    "/pauses/{kind}/{name}",
    status_code=204,
    responses={404: {"model": ErrorBody, "description": "It was not paused."}},
)
def resume(kind: PauseKind, name: PauseName, store: StoreDep, settings: SettingsDep) -> None:
    """Resume a paused job type or queue (404 when it was not paused)."""
    if not store.resume(kind, _stored_name(kind, name, settings)):
        raise HTTPException(404, f"name: {kind} {name} is not paused")


def _stored_name(kind: str, name: str, settings: Settings) -> str:
    """A job type's pause is stored under its import path; a queue's under its name."""
    if kind == "job_type":
        return stored_job_type(name, settings) or name
    return name
