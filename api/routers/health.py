"""``/health``: is the database reachable, and at which schema revision (no token needed).

Public, so it says no more than that: ``ok`` with the revision, or ``unavailable`` with the
database ``unreachable``. Why the database is unreachable (host, port, the driver's message)
goes to the server's log only.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from sqlalchemy.exc import SQLAlchemyError

from api.deps import SettingsDep, StoreDep
from api.schemas import HealthOut
from db.migrate import current_revision

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/health", responses={503: {"model": HealthOut, "description": "Database down."}})
def health(store: StoreDep, settings: SettingsDep, response: Response) -> HealthOut:
    """200 when the database answers (with its schema revision), 503 otherwise."""
    try:
        revision = current_revision(store.engine, settings)
    except SQLAlchemyError as error:
        log.warning("health: the database is unreachable: %s", error)
        response.status_code = 503
        return HealthOut(status="unavailable", database="unreachable", revision=None)
    return HealthOut(status="ok", database="reachable", revision=revision)
