"""Dependencies of the routes, as ``Annotated`` aliases: ``StoreDep``, ``SettingsDep``, ``HubDep``.

The application state (one store, one notice hub per process) is made by the app's lifespan in
:mod:`api.app`; routes never build their own.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from api.schemas import INT64_MAX, METADATA_KEY_PATTERN
from db.notify import NoticeHub
from db.store import JobStore
from jobline.settings import Settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_hub(request: Request) -> NoticeHub:
    return request.app.state.hub


StoreDep = Annotated[JobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
HubDep = Annotated[NoticeHub, Depends(get_hub)]
JobIdPath = Annotated[int, Path(ge=1, le=INT64_MAX, description="The job's id.")]
KeyPath = Annotated[
    str,
    Path(
        pattern=METADATA_KEY_PATTERN,
        description="Metadata key: letters, digits, '_', '.', ':', '-' (normally a task name).",
    ),
]

_bearer = HTTPBearer(
    auto_error=False, description="The server's JOBLINE_API_TOKEN, as `Bearer <token>`."
)


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries the configured bearer token (compared in constant time)."""
    expected = settings.api_token
    given = credentials.credentials if credentials is not None else ""
    if expected is None or not hmac.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        raise HTTPException(
            401,
            "authorization: a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


AuthDep = Depends(require_token)
