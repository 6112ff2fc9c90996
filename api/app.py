"""The FastAPI application: routers, error handlers, the body size limit and the token check.

Serve it with ``jobline api``, or ``uvicorn --factory api.app:app_from_environment``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

import jobline
from api import console
from api.auth import AuthDep, LoopbackHostOnly, TokenOrSessionDep, check_serving
from api.deps import KnownQueryDep
from api.errors import BodySizeLimit, install_error_handlers
from api.live import LiveFeed
from api.routers import events, health, jobs, operations
from api.timing import ServerTiming
from db.notify import NoticeHub
from db.store import JobStore
from jobline.exceptions import ConfigurationError
from jobline.settings import Settings, get_settings
from jobtypes.registry import registry_for

DESCRIPTION = """\
Create and follow jobline jobs without touching the database.

Every endpoint but `/health` needs `Authorization: Bearer <JOBLINE_API_TOKEN>`. Errors answer
`{"detail": ..., "errors": [{"field": ..., "reason": ...}]}`. Job types are accepted only when
registered (the demo, `JOBLINE_JOB_TYPES`, the `jobline.job_types` entry point group): the
`job_type` of `POST /jobs` lists them. Moves into the statuses workers own (`queued` through
`published`) need the job's lease (`POST /jobs/{id}/claim`).
"""


def create_app(
    settings: Settings, *, require_auth: bool = True, poll_interval: float = 0.5
) -> FastAPI:
    """The API over the job store of ``settings``.

    ``require_auth=False`` serves without a token: the ``jobline api --no-auth`` command binds
    such a server to loopback only, and the app refuses requests whose Host is not a loopback
    name. ``poll_interval``: how often SQLite stores are re-read for live status (PostgreSQL
    notifies).
    """
    if require_auth and settings.api_token is None:
        raise ConfigurationError(
            "JOBLINE_API_TOKEN: the API requires a bearer token (an empty or blank one counts "
            "as none); set one, or serve without authentication on loopback with --no-auth"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = JobStore.from_settings(settings)
        hub = NoticeHub(store.engine, poll_interval=poll_interval)
        hub.start()
        live = LiveFeed(store, hub)
        await live.start()
        app.state.store = store
        app.state.hub = hub
        app.state.live = live
        try:
            yield
        finally:
            await live.stop()
            hub.stop()
            store.engine.dispose()

    app = FastAPI(
        title="jobline",
        version=jobline.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.console_key = secrets.token_bytes(32)  # signs sessions of a server without token
    app.state.require_auth = require_auth
    install_error_handlers(app)
    app.add_exception_handler(console.Refused, console.refused_handler)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(ServerTiming)
    if not require_auth:
        app.add_middleware(LoopbackHostOnly)  # outermost: before anything else is read
    guarded = ([AuthDep] if require_auth else []) + [KnownQueryDep]
    app.include_router(health.router)
    app.include_router(jobs.router, dependencies=guarded)
    # The console's live updates read /events with its session cookie.
    session = [TokenOrSessionDep] if require_auth else []
    app.include_router(events.router, dependencies=[*session, KnownQueryDep])
    app.include_router(operations.router, dependencies=guarded)
    app.include_router(console.router)
    app.mount("/ui/static", StaticFiles(directory=console.STATIC), name="console-static")
    _document_registered_job_types(app, settings)
    return app


def _document_registered_job_types(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document lists the job types this server accepts, as the enum of
    ``JobCreate.job_type`` (import paths and names of the registered job types)."""
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = plain_openapi()
        accepted = registry_for(settings).accepted_references()
        field = document["components"]["schemas"]["JobCreate"]["properties"]["job_type"]
        field["enum"] = accepted
        field.pop("pattern", None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_environment() -> FastAPI:
    """The app for ``uvicorn --factory``: settings from the environment, a token required, and
    (the address being unknown here) long enough for an address that is not loopback."""
    settings = get_settings()
    check_serving(settings, None, require_auth=True)
    return create_app(settings)
