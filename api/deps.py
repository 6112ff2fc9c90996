"""Dependencies of the routes, as ``Annotated`` aliases: ``StoreDep``, ``SettingsDep``, ``HubDep``,
``LiveDep`` (and ``AuthDep``, from :mod:`api.auth`).

The application state (one store, one notice hub and one live feed per process) is made by the
app's lifespan in :mod:`api.app`; routes never build their own. The getters are ``async``: FastAPI
would run plain functions in its thread pool, a thread hop per dependency and request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from api.auth import AuthDep
from api.live import LiveFeed
from api.schemas import INT64_MAX, METADATA_KEY_PATTERN
from db.notify import NoticeHub
from db.store import JobStore
from jobline.settings import Settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_hub(request: Request) -> NoticeHub:
    return request.app.state.hub


async def get_live(request: Request) -> LiveFeed:
    return request.app.state.live


StoreDep = Annotated[JobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
HubDep = Annotated[NoticeHub, Depends(get_hub)]
LiveDep = Annotated[LiveFeed, Depends(get_live)]
JobIdPath = Annotated[int, Path(ge=1, le=INT64_MAX, description="The job's id.")]
KeyPath = Annotated[
    str,
    Path(
        pattern=METADATA_KEY_PATTERN,
        description="Metadata key: letters, digits, '_', '.', ':', '-', not starting with '.', "
        "':' or '-' (normally a task name).",
    ),
]

__all__ = [
    "AuthDep",
    "HubDep",
    "JobIdPath",
    "KeyPath",
    "KnownQueryDep",
    "LiveDep",
    "SettingsDep",
    "StoreDep",
]


async def reject_unknown_query_parameters(request: Request) -> None:
    """422 for a query parameter the route does not take, naming it: a misspelt filter
    (``?stauts=failed``) must not quietly answer, or act on, every job."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    known = query_names(dependant)
    if not known:  # a route without query parameters ignores them, as documented
        return
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        problems = [{"type": "extra_forbidden", "loc": ("query", name)} for name in unknown]
        raise RequestValidationError(problems)


KnownQueryDep = Depends(reject_unknown_query_parameters)


def query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included (a query model's fields
    by alias)."""
    names: set[str] = set()
    for param in dependant.query_params:
        annotation = param.field_info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(f.alias or n for n, f in annotation.model_fields.items())
        else:
            names.add(param.alias)
    for sub in dependant.dependencies:
        names |= query_names(sub)
    return names
