"""Lease heartbeats: a worker process keeps the leases of the jobs it holds alive.

A job is held from its claim (``queued``) until it reaches ``processed`` or fails. One thread per
process and store (:class:`LeaseKeeper`) extends every held lease by ``lease_seconds`` each
``heartbeat_seconds``, so a job whose worker is alive is never rescued, however long its steps
take and however long it waits between Prefect tasks. When the store refuses an extension (the
job was rescued after the worker stalled, or taken over), the lease's ``lost`` event is set: the
runner watching it stops the container, and the step writes nothing more (every write of the
worker checks its token anyway).

A worker that dies stops heartbeating; its leases expire and maintenance rescues the jobs.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field

from db.store import JobStore
from jobline.exceptions import LeaseLost
from jobline.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Lease:
    """One job's lease as this process holds it."""

    job_id: int
    token: str
    #: Set when the store refused to extend the lease: the job is no longer this worker's.
    lost: threading.Event = field(default_factory=threading.Event)
    #: ``time.monotonic()`` after which the keeper stops extending it (None: until released).
    held_until: float | None = None


class LeaseKeeper:
    """Extends the leases this process holds on one store, from one background thread."""

    def __init__(self, store: JobStore, lease_seconds: float, interval: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.interval = interval
        self._leases: dict[int, Lease] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, job_id: int, token: str, *, for_seconds: float | None = None) -> Lease:
        """Keep the job's lease alive (for at most ``for_seconds``, or until released); holding
        it again refreshes that limit. Returns the lease, whose ``lost`` event tells a loss."""
        with self._lock:
            lease = self._leases.get(job_id)
            if lease is None or lease.token != token:
                lease = self._leases[job_id] = Lease(job_id, token)
            lease.held_until = None if for_seconds is None else time.monotonic() + for_seconds
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="jobline-lease-keeper", daemon=True
                )
                self._thread.start()
        return lease

    def release(self, job_id: int, token: str | None = None) -> None:
        """Stop extending the job's lease (only ``token``'s, if given)."""
        with self._lock:
            lease = self._leases.get(job_id)
            if lease is not None and token in (None, lease.token):
                del self._leases[job_id]

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def beat(self) -> None:
        """Extend every held lease once; drop those past their limit or lost."""
        for lease in self.held():
            if lease.held_until is not None and time.monotonic() > lease.held_until:
                self.release(lease.job_id, lease.token)
                continue
            try:
                self.store.heartbeat(lease.job_id, lease.token, self.lease_seconds)
            except LeaseLost:
                logger.warning("job %s: lease lost; stopping its work", lease.job_id)
                lease.lost.set()
                self.release(lease.job_id, lease.token)
            except Exception as error:  # noqa: BLE001
                # The database may be restarting: the next beat tries again, well within the
                # lease (heartbeat_seconds is a fraction of lease_seconds).
                logger.warning("job %s: heartbeat failed, will retry: %s", lease.job_id, error)

    def close(self) -> None:
        """Stop the thread and forget every lease (they expire unless held elsewhere)."""
        self._closed.set()
        with self._lock:
            self._leases.clear()

    def _run(self) -> None:
        while not self._closed.wait(self.interval):
            self.beat()
            with self._lock:
                if not self._leases:  # decided under the lock: a new hold starts a new thread
                    self._thread = None
                    return
        with self._lock:
            self._thread = None


_keepers: weakref.WeakKeyDictionary[JobStore, LeaseKeeper] = weakref.WeakKeyDictionary()
_keepers_lock = threading.Lock()


def keeper_for(store: JobStore, settings: Settings) -> LeaseKeeper:
    """The process's lease keeper for ``store``, with the settings' lease and heartbeat times."""
    with _keepers_lock:
        keeper = _keepers.get(store)
        if keeper is None:
            keeper = _keepers[store] = LeaseKeeper(
                store, settings.lease_seconds, settings.heartbeat_seconds
            )
        keeper.lease_seconds = settings.lease_seconds
        keeper.interval = settings.heartbeat_seconds
        return keeper
