"""The FastAPI application: routers, error handlers, the body size limit and the token check.

Serve it with ``jobline api``, or ``uvicorn --factory api.app:app_from_environment``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import jobline
from api.deps import AuthDep
from api.errors import BodySizeLimit, install_error_handlers
from api.routers import events, health, jobs
from db.notify import NoticeHub
from db.store import JobStore
from jobline.exceptions import ConfigurationError
from jobline.settings import Settings, get_settings

DESCRIPTION = """\
Create and follow jobline jobs without touching the database.

Every endpoint but `/health` needs `Authorization: Bearer <JOBLINE_API_TOKEN>`. Errors answer
`{"detail": ..., "errors": [{"field": ..., "reason": ...}]}`.
"""


def create_app(
    settings: Settings, *, require_auth: bool = True, poll_interval: float = 0.5
) -> FastAPI:
    """The API over the job store of ``settings``.

    ``require_auth=False`` serves without a token (the ``jobline api --no-auth`` command binds
    such a server to loopback only). ``poll_interval``: how often SQLite stores are re-read by
    waits and event streams (PostgreSQL notifies).
    """
    if require_auth and settings.api_token is None:
        raise ConfigurationError(
            "JOBLINE_API_TOKEN: the API requires a bearer token; set one, or serve without "
            "authentication on loopback with --no-auth"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = JobStore.from_settings(settings)
        hub = NoticeHub(store.engine, poll_interval=poll_interval)
        hub.start()
        app.state.store = store
        app.state.hub = hub
        try:
            yield
        finally:
            hub.stop()
            store.engine.dispose()

    app = FastAPI(
        title="jobline",
        version=jobline.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    guarded = [AuthDep] if require_auth else []
    app.include_router(health.router)
    app.include_router(jobs.router, dependencies=guarded)
    app.include_router(events.router, dependencies=guarded)
    return app


def app_from_environment() -> FastAPI:
    """The app for ``uvicorn --factory``: settings from the environment, token required."""
    return create_app(get_settings())
