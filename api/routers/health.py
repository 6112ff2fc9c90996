"""``/health``: is the database reachable, and at which schema revision (no token needed)."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter, Response
from sqlalchemy.exc import SQLAlchemyError

from api.deps import SettingsDep, StoreDep
from api.schemas import HealthOut
from db.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@cache
def _head() -> str:
    return head_revision()


@router.get("/health", responses={503: {"model": HealthOut, "description": "Database down."}})
def health(store: StoreDep, settings: SettingsDep, response: Response) -> HealthOut:
    """200 when the database answers (with its schema revision), 503 otherwise."""
    head = _head()
    try:
        revision = current_revision(store.engine, settings)
    except SQLAlchemyError as error:
        response.status_code = 503
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        return HealthOut(
            status="unavailable",
            database="unreachable",
            revision=None,
            head=head,
            up_to_date=False,
            detail=reason,
        )
    return HealthOut(
        status="ok",
        database="reachable",
        revision=revision,
        head=head,
        up_to_date=revision == head,
    )
