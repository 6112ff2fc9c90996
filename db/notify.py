"""Live status changes: notifications of committed changes, and a feed that misses none.

On PostgreSQL, migration 0003 sends one notification on channel ``jobline_status`` per statement
that writes history rows, delivered when its transaction commits. The payload is
``"<highest history id>:<job id>,<job id>,..."`` (``":*"`` when the statement touched more than
100 jobs). SQLite has no notifications: a :class:`Listener` there wakes its caller every
``poll_interval`` seconds to look again. Either way a notification is only a hint to read the
history table; nothing is lost when one is missed (e.g. while reconnecting).

:class:`StatusFeed` reads ``job_status_changes`` in id order from a cursor and never delivers an
id lower than one it delivered before, so a client resuming from the last id it saw misses nothing
and gets nothing twice. The subtle case is PostgreSQL: ids are drawn from a sequence when a row
is inserted, but transactions commit in any order, so id 11 may be visible while id 10 is still
uncommitted. The feed stops at such a gap until every transaction that was running when the gap
was first seen has ended (the gap is then an aborted transaction or a deleted job and is passed),
or ``gap_timeout`` seconds have passed. SQLite serialises writers, so its ids commit in order.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text

from db.store import JobStore

log = logging.getLogger(__name__)

CHANNEL = "jobline_status"


# ------------------------------------------------------------------------------ notices


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification: history rows up to ``max_id`` were committed for ``job_ids``
    (None: possibly any job, e.g. a large batch, a reconnection, or a poll on SQLite)."""

    max_id: int | None
    job_ids: frozenset[int] | None

    def concerns(self, job_id: int) -> bool:
        return self.job_ids is None or job_id in self.job_ids


#: "Anything may have changed: look again."
ANY_CHANGE = Notice(None, None)


def parse_notice(payload: str) -> Notice:
    """The :class:`Notice` of a ``jobline_status`` payload; unreadable parts widen it."""
    top, _, jobs = payload.partition(":")
    try:
        max_id: int | None = int(top)
    except ValueError:
        max_id = None
    if jobs in ("", "*"):
        return Notice(max_id, None)
    try:
        return Notice(max_id, frozenset(int(job) for job in jobs.split(",")))
    except ValueError:
        return Notice(max_id, None)


class Listener:
    """Notices of committed status changes for one waiter (a context manager).

    PostgreSQL: a dedicated autocommit connection that LISTENs on :data:`CHANNEL` from
    ``__enter__`` on, so a change committed between entering and the first :meth:`wait` is not
    missed. A lost connection is reopened on the next :meth:`wait`, which then answers
    :data:`ANY_CHANGE`. SQLite: :meth:`wait` sleeps ``poll_interval`` and answers ANY_CHANGE.
    """

    def __init__(self, engine: Engine, *, poll_interval: float = 0.5) -> None:
        self.engine = engine
        self.poll_interval = poll_interval
        self._postgresql = engine.dialect.name == "postgresql"
        self._connection: psycopg.Connection[Any] | None = None

    def __enter__(self) -> Listener:
        if self._postgresql:
            self._connection = self._connect()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def wait(self, timeout: float) -> list[Notice]:
        """Block until notices arrive (returned) or ``timeout`` seconds pass (``[]``)."""
        timeout = max(0.0, timeout)
        if not self._postgresql:
            time.sleep(min(timeout, self.poll_interval))
            return [ANY_CHANGE]
        if self._connection is None:
            return self._reconnect(timeout)
        try:
            received = list(self._connection.notifies(timeout=timeout, stop_after=1))
            if received:
                received.extend(self._connection.notifies(timeout=0))
        except psycopg.Error as error:
            log.warning("lost the %s listener connection: %s", CHANNEL, error)
            self.close()
            return [ANY_CHANGE]
        return [parse_notice(notify.payload) for notify in received]

    def _reconnect(self, timeout: float) -> list[Notice]:
        try:
            self._connection = self._connect()
        except psycopg.Error as error:
            log.warning("cannot listen on %s yet: %s", CHANNEL, error)
            time.sleep(min(timeout, self.poll_interval))
        # Changes may have been committed while nobody listened.
        return [ANY_CHANGE]

    def _connect(self) -> psycopg.Connection[Any]:
        args, params = self.engine.dialect.create_connect_args(self.engine.url)
        params.setdefault("connect_timeout", 10)
        connection = psycopg.connect(*args, **params, autocommit=True)
        connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        return connection


class NoticeHub:
    """One :class:`Listener` in a daemon thread, fanning its notices out to subscribers.

    A server uses one hub instead of a database connection per waiting client. Callbacks run in
    the hub's thread and must return quickly (e.g. hand over to an event loop).
    """

    def __init__(self, engine: Engine, *, poll_interval: float = 0.5, step: float = 1.0) -> None:
        self.engine = engine
        self.poll_interval = poll_interval
        self.step = step
        self._subscribers: dict[int, Callable[[Notice], None]] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="jobline-notices", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the %s listener thread did not stop within %.0f s", CHANNEL, timeout)
            self._thread = None

    def subscribe(self, callback: Callable[[Notice], None]) -> Callable[[], None]:
        """Call ``callback`` with every notice from now on; returns the unsubscribe function."""
        with self._lock:
            token = next(self._tokens)
            self._subscribers[token] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(token, None)

        return unsubscribe

    def publish(self, notice: Notice) -> None:
        with self._lock:
            callbacks = list(self._subscribers.values())
        for callback in callbacks:
            try:
                callback(notice)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("a status notice subscriber failed")

    def _run(self) -> None:
        listener = Listener(self.engine, poll_interval=self.poll_interval)
        try:
            while not self._stopping.is_set():
                for notice in listener.wait(self.step):
                    self.publish(notice)
        finally:
            listener.close()


# ------------------------------------------------------------------------------- feed


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One status change as clients see it: the history row and its job's type."""

    id: int
    job_id: int
    job_type: str
    from_status: str | None
    to_status: str
    changed_at: datetime
    message: str | None
    error_class: str | None
    error_subtype: str | None
    attempt: int
    worker: str | None
    flow_run_id: str | None
    task_run_id: str | None


@dataclass(slots=True)
class _Gap:
    first_missing: int
    snapshot: str
    seen_at: float


#: The ids after a cursor, and the snapshot they were read in (one statement, one snapshot).
_IDS_AFTER = text(
    "SELECT pg_current_snapshot()::text AS snapshot, ARRAY("
    "SELECT id FROM job_status_changes WHERE id > :cursor ORDER BY id LIMIT :limit) AS ids"
)
#: Whether a transaction of this database that was running in a snapshot is running still.
#: (Snapshots list the whole server's transactions; other databases' cannot hold our ids.
#: ``backend_xid`` is a 32-bit xid, the snapshot's are 64-bit: compare without the epoch.)
_STILL_RUNNING = text(
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity AS a "
    "JOIN pg_snapshot_xip(CAST(:snapshot AS pg_snapshot)) AS x "
    "ON a.backend_xid::text::bigint = x::text::bigint % 4294967296 "
    "WHERE a.datname = current_database())"
)
#: The ids after a cursor (SQLite: ids commit in order, no gap can be filled later).
_IDS_AFTER_SQLITE = text(
    "SELECT id FROM job_status_changes WHERE id > :cursor ORDER BY id LIMIT :limit"
)


class StatusFeed:
    """Status changes in history id order after ``after``, each committed change exactly once.

    :meth:`read` returns the next changes (filtered by ``job_id`` / ``job_type``) and advances
    :attr:`cursor`, the id up to which every change has been seen. Call it again when a
    :class:`Notice` arrives, and every ``gap_retry`` seconds while :attr:`waiting_on_gap`.
    """

    #: How often to look again while waiting for a gap to be filled.
    gap_retry = 0.1

    def __init__(
        self,
        store: JobStore,
        *,
        after: int,
        job_id: int | None = None,
        job_type: str | None = None,
        batch: int = 1000,
        gap_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.cursor = after
        self.job_id = job_id
        self.job_type = job_type
        self.batch = batch
        self.gap_timeout = gap_timeout
        self.clock = clock
        self._gap: _Gap | None = None

    @property
    def waiting_on_gap(self) -> bool:
        return self._gap is not None

    def read(self) -> list[StatusEvent]:
        """The next committed changes after the cursor (one batch of ids), oldest first."""
        horizon = self._horizon()
        if horizon <= self.cursor:
            return []
        rows = self.store.status_changes(
            after=self.cursor, until=horizon, job_id=self.job_id, job_type=self.job_type
        )
        self.cursor = horizon
        return [_event(change, job_type) for change, job_type in rows]

    def _horizon(self) -> int:
        """The highest id up to which no change can still appear."""
        if self.store.dialect != "postgresql":
            with self.store.session() as session:
                ids = session.execute(
                    _IDS_AFTER_SQLITE, {"cursor": self.cursor, "limit": self.batch}
                ).scalars()
                return max(ids, default=self.cursor)
        with self.store.session() as session:
            # Whether the pending gap is settled is decided BEFORE reading the ids: a holder that
            # commits in between is then read, never skipped.
            settled = self._gap_settled(session)
            snapshot, ids = session.execute(
                _IDS_AFTER, {"cursor": self.cursor, "limit": self.batch}
            ).one()
        if not ids:
            self._gap = None  # nothing after it to hold back (its successors were deleted)
            return self.cursor
        expected = self.cursor + 1
        horizon = self.cursor
        for change_id in ids:
            if change_id != expected and not self._pass_gap(expected, snapshot, settled):
                break
            horizon = change_id
            expected = change_id + 1
        if self._gap is not None and self._gap.first_missing <= horizon:
            self._gap = None  # filled: its transaction committed
        return horizon

    def _gap_settled(self, session: Any) -> bool:
        if self._gap is None:
            return False
        if self.clock() - self._gap.seen_at >= self.gap_timeout:
            log.warning(
                "passing history id %s after %.0f s: its transaction never committed",
                self._gap.first_missing,
                self.gap_timeout,
            )
            return True
        running = session.execute(_STILL_RUNNING, {"snapshot": self._gap.snapshot}).scalar()
        return not running

    def _pass_gap(self, first_missing: int, snapshot: str, settled: bool) -> bool:
        """True to pass over the missing ids from ``first_missing``; else remember the gap."""
        if self._gap is not None and self._gap.first_missing == first_missing and settled:
            self._gap = None
            return True
        if self._gap is None or self._gap.first_missing != first_missing:
            self._gap = _Gap(first_missing, snapshot, self.clock())
        return False


def _event(change: Any, job_type: str) -> StatusEvent:
    return StatusEvent(
        id=change.id,
        job_id=change.job_id,
        job_type=job_type,
        from_status=change.from_status,
        to_status=change.to_status,
        changed_at=change.changed_at,
        message=change.message,
        error_class=change.error_class,
        error_subtype=change.error_subtype,
        attempt=change.attempt,
        worker=change.worker,
        flow_run_id=change.flow_run_id,
        task_run_id=change.task_run_id,
    )
