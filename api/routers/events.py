"""``/events``: a Server-Sent Events stream of status changes.

Each event is ``event: status``, ``id: <history id>`` and ``data: <StatusEventOut JSON>``, in
history id order. Where the stream starts:

* ``Last-Event-ID`` header (what browsers send when they reconnect): right after that id;
* else the ``after`` query parameter: right after that id;
* else with ``job_id``: from the job's first change (its whole history, then live);
* else: from now (changes committed after the connection).

A client that reconnects with the last id it received misses nothing and gets nothing twice
(see :class:`db.notify.StatusFeed`). The stream is driven by PostgreSQL notifications (polling
on SQLite) and sends a keep-alive comment when idle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException

from api.deps import HubDep, StoreDep
from api.errors import json_error_responses
from api.live import Wakeup
from api.schemas import INT64_MAX, OptionalText, StatusEventOut
from db.notify import Notice, StatusFeed
from db.store import JobStore

router = APIRouter(tags=["events"])

#: Milliseconds a browser waits before reconnecting.
RECONNECT_MS = 1000
#: Seconds between reads when no notice arrives (a safety net for lost notices).
IDLE_RECHECK = 15.0


async def open_feed(
    store: StoreDep,
    job_id: Annotated[
        int | None, Query(ge=1, le=INT64_MAX, description="Only this job's changes.")
    ] = None,
    job_type: Annotated[
        OptionalText, Query(max_length=200, description="Only changes of jobs of this type.")
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="Start after this history id.")
    ] = None,
    last_event_id: Annotated[
        str | None, Header(max_length=20, description="Resume after this history id.")
    ] = None,
) -> StatusFeed:
    """The feed the stream reads, positioned where the request asks (404 for an unknown job)."""
    resume = _parse_last_event_id(last_event_id)
    start = resume if resume is not None else after
    cursor = await run_in_threadpool(_starting_cursor, store, job_id, start)
    return StatusFeed(store, after=cursor, job_id=job_id, job_type=job_type)


def _parse_last_event_id(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    if not value.strip().isdigit() or int(value) > INT64_MAX:
        raise HTTPException(422, "last-event-id: must be a history id (a non-negative integer)")
    return int(value)


def _starting_cursor(store: JobStore, job_id: int | None, start: int | None) -> int:
    if job_id is not None:
        history = store.history(job_id)  # JobNotFound: 404
        if start is None:
            return history[0].id - 1 if history else store.last_change_id()
    if start is not None:
        return start
    return store.last_change_id()


FeedDep = Annotated[StatusFeed, Depends(open_feed)]


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "A stream of `event: status` messages; `data` is a StatusEventOut.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **json_error_responses({404: "No such job."}),
    },
)
async def stream_events(feed: FeedDep, hub: HubDep) -> AsyncIterator[ServerSentEvent]:
    """Status changes as Server-Sent Events (filters: ``job_id``, ``job_type``)."""
    yield ServerSentEvent(comment="jobline status events", retry=RECONNECT_MS)
    with Wakeup(hub, _matcher(feed.job_id)) as wakeup:
        while True:
            before = feed.cursor
            for event in await run_in_threadpool(feed.read):
                yield ServerSentEvent(
                    id=str(event.id), event="status", data=StatusEventOut.from_event(event)
                )
            if feed.cursor != before:
                continue  # there may be more right away
            await wakeup.wait(feed.gap_retry if feed.waiting_on_gap else IDLE_RECHECK)


def _matcher(job_id: int | None) -> Callable[[Notice], bool]:
    """Which notices wake the stream: all, or those that may concern its job."""
    if job_id is None:
        return lambda notice: True
    return lambda notice: notice.concerns(job_id)
