"""``/events``: a Server-Sent Events stream of status changes.

Each event is ``event: status``, ``id: <history id>`` and ``data: <StatusEventOut JSON>``, in
history id order. Where the stream starts:

* ``Last-Event-ID`` header (what browsers send when they reconnect): right after that id;
* else the ``after`` query parameter: right after that id;
* else with ``job_id``: from the job's first change (its whole history, then live);
* else: from now (changes committed after the connection).

A client that reconnects with the last id it received misses nothing and gets nothing twice
(see :class:`db.notify.StatusFeed`). Streams hold no database connection of their own: they
take their changes from the server's one live feed (:mod:`api.live`), driven by PostgreSQL
notifications (polling on SQLite), and send a keep-alive comment after 15 s of silence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from api.deps import LiveDep, SettingsDep, StoreDep
from api.errors import json_error_responses
from api.live import LiveFeed
from api.routers.jobs import stored_job_type
from api.schemas import INT64_MAX, OptionalText, StatusEventOut
from db.notify import StatusEvent
from db.store import JobStore

router = APIRouter(tags=["events"])

#: Milliseconds a browser waits before reconnecting.
RECONNECT_MS = 1000
#: Seconds of silence after which a stream sends a keep-alive comment.
KEEPALIVE_SECONDS = 15.0
KEEPALIVE = b": keep-alive\n\n"


class FeedStart:
    """Where a stream starts and what it shows (parsed from the request)."""

    def __init__(self, after: int, job_id: int | None, job_type: str | None) -> None:
        self.after = after
        self.job_id = job_id
        self.job_type = job_type


async def open_feed(
    store: StoreDep,
    settings: SettingsDep,
    live: LiveDep,
    job_id: Annotated[
        int | None, Query(ge=1, le=INT64_MAX, description="Only this job's changes.")
    ] = None,
    job_type: Annotated[
        OptionalText,
        Query(max_length=200, description="Only changes of jobs of this type (path or name)."),
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="Start after this history id.")
    ] = None,
    last_event_id: Annotated[
        str | None, Header(max_length=20, description="Resume after this history id.")
    ] = None,
) -> FeedStart:
    """Where the stream starts, positioned as the request asks (404 for an unknown job)."""
    resume = _parse_last_event_id(last_event_id)
    start = resume if resume is not None else after
    # The feed's position before the database's newest id: together they tell whether the
    # history went backwards unnoticed (then the feed starts again before this stream subscribes).
    seen = live.position
    cursor, newest = await run_in_threadpool(_starting_cursor, store, job_id, start)
    live.restart_if_history_went_back(seen, newest)
    return FeedStart(cursor, job_id, stored_job_type(job_type, settings))


def _parse_last_event_id(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    if not value.strip().isdigit() or int(value) > INT64_MAX:
        raise HTTPException(422, "last-event-id: must be a history id (a non-negative integer)")
    return int(value)


def _starting_cursor(store: JobStore, job_id: int | None, start: int | None) -> tuple[int, int]:
    """Where the stream starts, and the history's newest id."""
    history = store.history(job_id) if job_id is not None else []  # JobNotFound: 404
    newest = store.last_change_id()
    if start is not None:
        return start, newest
    return (history[0].id - 1 if history else newest), newest


FeedDep = Annotated[FeedStart, Depends(open_feed)]


@router.get(
    "/events",
    response_class=Response,  # not EventSourceResponse: that makes FastAPI encode each event
    responses={
        200: {
            "description": "A stream of `event: status` messages; `data` is a StatusEventOut.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **json_error_responses({404: "No such job."}),
    },
)
async def stream_events(start: FeedDep, live: LiveDep) -> EventSourceResponse:
    """Status changes as Server-Sent Events (filters: ``job_id``, ``job_type``)."""
    return EventSourceResponse(_frames(start, live), headers={"Cache-Control": "no-cache"})


async def _frames(start: FeedStart, live: LiveFeed) -> AsyncIterator[bytes]:
    # The stream writes its frames itself: each change is encoded once for every stream that
    # shows it (see sse_frame), and a batch of changes goes out in one write.
    yield f": jobline status events\nretry: {RECONNECT_MS}\n\n".encode()
    with live.subscribe(start.after, job_id=start.job_id, job_type=start.job_type) as changes:
        while True:
            events = await changes.next_events(KEEPALIVE_SECONDS)
            yield b"".join(map(sse_frame, events)) if events else KEEPALIVE


@lru_cache(maxsize=4096)
def sse_frame(event: StatusEvent) -> bytes:
    """One change as an SSE message: ``id``, ``event: status``, ``data`` (StatusEventOut)."""
    data = StatusEventOut.from_event(event).model_dump_json()
    return f"id: {event.id}\nevent: status\ndata: {data}\n\n".encode()
