"""Live status for the API's event streams and waits: one reader of the history, fanned out.

A server holds one :class:`LiveFeed`. It listens through the process's one
:class:`~db.notify.NoticeHub` (one LISTEN connection on PostgreSQL, a poll on SQLite) and, on
each notice, reads the new history rows ONCE (:class:`~db.notify.StatusFeed`, which delivers
each committed change exactly once and in id order), keeps the latest :data:`BUFFERED` events in
memory and wakes the subscribers they concern. However many streams and waits are open, a
status change costs one read of the history (changes closer together than
:data:`MIN_READ_INTERVAL` share one), and an idle server one read every :data:`IDLE_RECHECK`
seconds (a safety net for lost notices), not one per client.

A :class:`Subscription` starts after a history id. While that id is older than the buffer (a
stream resuming from ``Last-Event-ID``, or a client that fell behind), it reads the history
itself, with a feed of its own and its filters in SQL, until it reaches the buffer; from there
on it takes its events from memory.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from fastapi.concurrency import run_in_threadpool

from db.notify import Notice, NoticeHub, StatusEvent, StatusFeed
from db.store import JobStore

log = logging.getLogger(__name__)

#: Events kept in memory; a subscriber further behind reads the history itself.
BUFFERED = 10_000
#: Seconds between reads when no notice arrives (a safety net for lost notices).
IDLE_RECHECK = 15.0
#: Seconds before reading again after a failed read (the database is away).
RETRY_AFTER_FAILURE = 1.0
#: How long stopping waits for a read in flight.
STOP_TIMEOUT = 10.0
#: Shortest time between two reads: changes that come faster reach the streams together, one
#: read and one write per stream for the lot (a change after a quiet spell is read at once).
MIN_READ_INTERVAL = 0.05
#: The buffer's start before the feed knows where the history is (the database was away at
#: start-up): subscribers that know their position read the history themselves meanwhile.
NOT_STARTED = 2**63


class LiveFeed:
    """The process's one reader of status changes; see the module doc."""

    def __init__(
        self,
        store: JobStore,
        hub: NoticeHub,
        *,
        buffered: int = BUFFERED,
        idle_recheck: float = IDLE_RECHECK,
        min_read_interval: float = MIN_READ_INTERVAL,
    ) -> None:
        self.store = store
        self.hub = hub
        self.buffered = buffered
        self.idle_recheck = idle_recheck
        self.min_read_interval = min_read_interval
        self._last_read = float("-inf")
        #: Every change with an id up to here has been read (or passed over, see StatusFeed).
        self.cursor = 0
        #: The buffer holds every change with ``base < id <= cursor``.
        self.base = NOT_STARTED
        self._events: list[StatusEvent] = []
        self._ids: list[int] = []
        self._subscribers: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._reader: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._feed: StatusFeed | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._suspect_reset = False
        #: How often the feed started the history again (see :meth:`_restart`).
        self.restarts = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="jobline-live")
        # Listen before reading where to start: a change committed in between is read.
        self._unsubscribe = self.hub.subscribe(lambda notice: _call_soon(loop, self._on, notice))
        self._task = asyncio.create_task(self._run(), name="jobline-live-feed")

    @property
    def started(self) -> bool:
        """Whether the feed knows where the history is (the database answered once)."""
        return self._feed is not None

    async def _begin(self) -> StatusFeed:
        """Find where the history is; until the database answers, try again every second."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                start = await loop.run_in_executor(self._reader, self.store.last_change_id)
                break
            except Exception as error:  # noqa: BLE001 - a server may start before its database
                log.warning("live status: cannot read the history yet: %s", error)
                await asyncio.sleep(RETRY_AFTER_FAILURE)
        self.cursor = self.base = start
        self._feed = StatusFeed(self.store, after=start)
        for subscriber in list(self._subscribers):
            subscriber.begin(start)
        return self._feed

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: a server's shutdown must not hang on its feed.
            await asyncio.wait({self._task}, timeout=STOP_TIMEOUT)
            if not self._task.done():
                log.warning("live status: the feed did not stop within %.0f s", STOP_TIMEOUT)
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._reader is not None:
            # A read in flight still holds a pooled connection: let it end before the caller
            # disposes of the engine (bounded, the database may be away).
            reader, self._reader = self._reader, None
            reader.shutdown(wait=False, cancel_futures=True)
            done = asyncio.get_running_loop().run_in_executor(None, reader.shutdown, True)
            await asyncio.wait({done}, timeout=STOP_TIMEOUT)

    def subscribe(
        self, after: int | None = None, *, job_id: int | None = None, job_type: str | None = None
    ) -> Subscription:
        """Changes after history id ``after`` (default: from now), filtered; a context manager."""
        if after is None and self.started:
            after = self.cursor
        return Subscription(self, after, job_id, job_type)

    @property
    def position(self) -> tuple[int, int]:
        """``(restarts, cursor)``, for :meth:`restart_if_history_went_back`."""
        return self.restarts, self.cursor

    def restart_if_history_went_back(self, seen: tuple[int, int], newest: int) -> None:
        """Start the history again now if it went backwards and no notice has told the feed.

        ``seen`` is :attr:`position` taken before ``newest``, the history's newest id, was read
        from the database. The cursor never passes a committed id, so ``newest`` below the
        cursor seen earlier means the history was emptied or replaced (TRUNCATE ... RESTART
        IDENTITY, a restored dump). A stream opened then would start at an id of the new
        history and take the old history's buffered events above it; called before it
        subscribes, it gets only the new history's.
        """
        restarts, cursor = seen
        if self.started and restarts == self.restarts and newest < cursor:
            self._restart()

    def buffered_after(self, position: int) -> tuple[list[StatusEvent], int]:
        """The buffered events after ``position`` (which must be at least :attr:`base`), and
        the position they bring a reader to."""
        start = bisect.bisect_right(self._ids, position)
        return self._events[start:], max(position, self.cursor)

    # ------------------------------------------------------------------------- reading

    def _on(self, notice: Notice) -> None:
        # A notice of ids below the cursor may mean the history started again (see _run).
        if notice.max_id is not None and notice.max_id < self.cursor:
            self._suspect_reset = True
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await self._begin()
        while True:
            feed = self._feed
            assert feed is not None
            timeout = feed.gap_retry if feed.waiting_on_gap else self.idle_recheck
            if not await _wait(self._wake, timeout):
                self._suspect_reset = not feed.waiting_on_gap
            pause = self._last_read + self.min_read_interval - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            self._last_read = loop.time()
            try:
                events = await loop.run_in_executor(self._reader, _read_all, feed)
                if feed is not self._feed:
                    continue  # the history started again during the read: drop the old events
                if self._suspect_reset and not events:
                    self._suspect_reset = False
                    newest = await loop.run_in_executor(self._reader, self.store.last_change_id)
                    if feed is not self._feed:
                        continue
                    if newest < feed.cursor:
                        self._restart()
                        continue
            except Exception as error:  # noqa: BLE001 - the database may be away for a while
                log.warning("live status: reading the history failed: %s", error)
                await asyncio.sleep(RETRY_AFTER_FAILURE)
                self._wake.set()
                continue
            self._publish(events, feed.cursor)

    def _restart(self) -> None:
        """The history's ids went backwards (it was emptied, e.g. TRUNCATE ... RESTART
        IDENTITY, or replaced): start again from its beginning, and so does every subscriber."""
        log.warning("live status: the history ids went backwards; reading it from the start")
        self.restarts += 1
        self._feed = StatusFeed(self.store, after=0)
        self.cursor = self.base = 0
        self._events.clear()
        self._ids.clear()
        self._wake.set()
        for subscriber in list(self._subscribers):
            subscriber.restart()

    def _publish(self, events: list[StatusEvent], cursor: int) -> None:
        self._events.extend(events)
        self._ids.extend(event.id for event in events)
        self.cursor = cursor
        if len(self._events) > 2 * self.buffered:
            cut = len(self._events) - self.buffered
            self.base = self._ids[cut - 1]
            del self._events[:cut], self._ids[:cut]
        for subscriber in list(self._subscribers):
            subscriber.offer(events)

    def _add(self, subscriber: Subscription) -> None:
        self._subscribers.add(subscriber)

    def _remove(self, subscriber: Subscription) -> None:
        self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


class Subscription:
    """One stream's or wait's view of the live feed: the matching changes after a position."""

    def __init__(
        self, live: LiveFeed, after: int | None, job_id: int | None, job_type: str | None
    ) -> None:
        self.live = live
        #: Every change up to here was delivered or did not match; None: "from when the live
        #: feed starts" (it had not yet when this subscription was made).
        self.position = after
        self.job_id = job_id
        self.job_type = job_type
        self._event = asyncio.Event()
        self._own_feed: StatusFeed | None = None
        live._add(self)
        self._event.set()  # look at once: the buffer may already hold changes after `after`

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.live._remove(self)

    def matches(self, event: StatusEvent) -> bool:
        return (self.job_id is None or event.job_id == self.job_id) and (
            self.job_type is None or event.job_type == self.job_type
        )

    def begin(self, start: int) -> None:
        """The live feed started at ``start``: a subscription "from now" starts there."""
        if self.position is None:
            self.position = start
        self._event.set()

    def restart(self) -> None:
        """The live feed started the history again: so does this subscription."""
        self.position = 0
        self._own_feed = None
        self._event.set()

    def offer(self, events: list[StatusEvent]) -> None:
        """Called by the live feed with new events: wake up if one of them is ours."""
        if self._own_feed is not None or any(self.matches(event) for event in events):
            self._event.set()

    async def next_events(self, timeout: float) -> list[StatusEvent]:
        """The next matching changes, waiting up to ``timeout`` seconds ([] if none came)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while self.position is None:  # the live feed has not started: wait until it has
            self._event.clear()
            if not await _wait(self._event, deadline - loop.time()):
                return []
        while True:
            if self.position < self.live.base:
                events = await self._catch_up()
                if events:
                    return events
                if self.position < self.live.base:  # its own feed waits on a gap
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return []
                    await asyncio.sleep(min(StatusFeed.gap_retry, remaining))
                    continue
            self._event.clear()
            events = self._from_buffer()
            if events:
                return events
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            if not await _wait(self._event, remaining):
                return []

    def _from_buffer(self) -> list[StatusEvent]:
        assert self.position is not None
        events, self.position = self.live.buffered_after(self.position)
        return [event for event in events if self.matches(event)]

    async def _catch_up(self) -> list[StatusEvent]:
        """Read the history directly (filtered in SQL) until there are events or the buffer
        covers the position; [] also when its feed waits on a gap."""
        assert self.position is not None
        if self._own_feed is None or self._own_feed.cursor != self.position:
            self._own_feed = StatusFeed(
                self.live.store, after=self.position, job_id=self.job_id, job_type=self.job_type
            )
        feed = self._own_feed
        while self.position < self.live.base:
            before = feed.cursor
            events = await run_in_threadpool(feed.read)
            self.position = feed.cursor
            if events or feed.cursor == before:
                return events
        self._own_feed = None
        return []


def _read_all(feed: StatusFeed) -> list[StatusEvent]:
    """Every change the feed can deliver now (it reads a batch of ids at a time)."""
    events: list[StatusEvent] = []
    while True:
        before = feed.cursor
        events += feed.read()
        if feed.cursor == before:
            return events


def _call_soon(
    loop: asyncio.AbstractEventLoop, call: Callable[[Notice], None], notice: Notice
) -> None:
    # The loop may be closing while the hub's thread still publishes.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(call, notice)


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds pass (False).

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that arrives as the
    event is set, and a feed being stopped would then run on (and its server hang on shutdown).
    """
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return False
    return True
