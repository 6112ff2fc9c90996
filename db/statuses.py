"""The job statuses and their legal transitions: the one source of truth.

Everything else is generated from this module: the database's CHECK on known statuses, the
PostgreSQL and SQLite triggers that refuse illegal transitions (see :mod:`db.guard`), the phases
shown to clients, and the Python-side checks in :mod:`db.store`.

Statuses are stored by name (what users see, and what raw SQL like
``UPDATE jobline.jobs SET status = 'done'`` names); the ids are stable and exposed for clients
that prefer numbers.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    # Each member: what it means; what moves a job in; what moves it out.
    INITIALIZED = "initialized"
    """Job created for an input product. In: insert. Out: configure, error, cancel."""
    CONFIGURED = "configured"
    """Configured, waiting for a dependency (an older product of the same tile).
    In: configure. Out: ready once the dependency is done."""
    READY = "ready"
    """Ready to be processed. In: configure, retry. Out: claim (queued)."""
    QUEUED = "queued"
    """Handed to the executor: a Prefect flow run exists for it. In: claim. Out: started."""
    STARTED = "started"
    """A worker took it and holds its lease. In: pre-process. Out: pre_processing."""
    PRE_PROCESSING = "pre_processing"
    """Staging inputs into the work dir. Out: processing."""
    PROCESSING = "processing"
    """The scientific container is running. Out: post_processing."""
    POST_PROCESSING = "post_processing"
    """Reading the result, uploading outputs. Out: processed."""
    PROCESSED = "processed"
    """Outputs generated (or none, recorded). Out: start_publication, or done with no output."""
    START_PUBLICATION = "start_publication"
    """Publication messages written to the outbox, being delivered. Out: published."""
    PUBLISHED = "published"
    """Every output product's message was confirmed. Out: done."""
    DONE = "done"
    """Nothing left to do. Out: expired after the retention period."""
    INTERNAL_ERROR = "internal_error"
    """Our fault: a bug, a lost worker, a timeout, a failing container. Out: error_checked."""
    EXTERNAL_ERROR = "external_error"
    """The world's fault: storage, broker, a container asking for a retry (exit 2).
    Out: error_checked (then ready for a retry, or cancelled)."""
    ERROR_CHECKED = "error_checked"
    """The error was handled; the job may be retried (ready) or given up (cancelled)."""
    CANCELLED = "cancelled"
    """Given up: attempts exhausted, too old, or by an operator. No products."""
    EXPIRED = "expired"
    """Done, and its outputs' retention period passed. A new request runs it again."""

    @property
    def id(self) -> int:
        return STATUS_IDS[self]

    @property
    def phase(self) -> str:
        return PHASES[self]

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


S = Status
STATUS_IDS: dict[Status, int] = {status: number for number, status in enumerate(Status, start=1)}

#: The lifecycle of a job that succeeds at its first attempt and publishes its products.
HAPPY_PATH: tuple[Status, ...] = (
    S.INITIALIZED,
    S.CONFIGURED,
    S.READY,
    S.QUEUED,
    S.STARTED,
    S.PRE_PROCESSING,
    S.PROCESSING,
    S.POST_PROCESSING,
    S.PROCESSED,
    S.START_PUBLICATION,
    S.PUBLISHED,
    S.DONE,
)

#: Statuses a brand-new job may be inserted with.
INITIAL: frozenset[Status] = frozenset({S.INITIALIZED, S.CANCELLED})

#: Legal transitions: from-status -> allowed to-statuses (REFERENCE.md).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.INITIALIZED: frozenset({S.CONFIGURED, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.CANCELLED}),
    S.CONFIGURED: frozenset({S.READY, S.INTERNAL_ERROR, S.CANCELLED}),
    S.READY: frozenset({S.QUEUED, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.CANCELLED}),
    S.QUEUED: frozenset({S.STARTED, S.INTERNAL_ERROR}),
    S.STARTED: frozenset({S.PRE_PROCESSING, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.CANCELLED}),
    S.PRE_PROCESSING: frozenset({S.PROCESSING, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.CANCELLED}),
    S.PROCESSING: frozenset({S.POST_PROCESSING, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.CANCELLED}),
    S.POST_PROCESSING: frozenset({S.PROCESSED, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.CANCELLED}),
    S.PROCESSED: frozenset(
        {S.START_PUBLICATION, S.DONE, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.CANCELLED}
    ),
    S.START_PUBLICATION: frozenset({S.PUBLISHED, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.CANCELLED}),
    S.PUBLISHED: frozenset({S.DONE}),
    S.DONE: frozenset({S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.EXPIRED}),
    S.INTERNAL_ERROR: frozenset({S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.ERROR_CHECKED}),
    S.EXTERNAL_ERROR: frozenset({S.STARTED, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.ERROR_CHECKED}),
    S.ERROR_CHECKED: frozenset(Status),
    S.CANCELLED: frozenset({S.INTERNAL_ERROR}),
    S.EXPIRED: frozenset({S.INITIALIZED}),
}

#: Statuses in which nothing more happens by itself: a waiter returns, ``finished_at`` is set.
#: ``external_error`` and ``error_checked`` are not terminal: the retry policy moves them on.
TERMINAL: frozenset[Status] = frozenset({S.DONE, S.INTERNAL_ERROR, S.CANCELLED, S.EXPIRED})

#: Terminal statuses that count as success for a waiter.
SUCCESSFUL: frozenset[Status] = frozenset({S.DONE, S.EXPIRED})

#: Coarse phases for summaries and for clients that want five words.
PHASES: dict[Status, str] = {
    **{s: "queued" for s in (S.INITIALIZED, S.CONFIGURED, S.READY, S.QUEUED)},
    **{
        s: "in-progress"
        for s in (
            S.STARTED,
            S.PRE_PROCESSING,
            S.PROCESSING,
            S.POST_PROCESSING,
            S.PROCESSED,
            S.START_PUBLICATION,
            S.PUBLISHED,
        )
    },
    S.DONE: "complete",
    **{s: "failed" for s in (S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.ERROR_CHECKED, S.CANCELLED)},
    S.EXPIRED: "expired",
}

#: Statuses in which a worker holds the job's lease.
LEASED: frozenset[Status] = frozenset(
    {S.STARTED, S.PRE_PROCESSING, S.PROCESSING, S.POST_PROCESSING}
)

#: Statuses that count against the launcher's running-weight caps: from the launch (``queued``,
#: a flow run exists) until the outputs are uploaded (``post_processing``).
RUNNING: frozenset[Status] = frozenset({S.QUEUED}) | LEASED

#: Statuses only a worker moves a job into, from its claim to its publication. Anyone else (an
#: API client) needs the job's current lease token for such a move: the lifecycle stays the
#: workers' (and an external processor's, which claims the job through the API first).
WORKER_OWNED: frozenset[Status] = frozenset(
    {
        S.QUEUED,
        S.STARTED,
        S.PRE_PROCESSING,
        S.PROCESSING,
        S.POST_PROCESSING,
        S.PROCESSED,
        S.START_PUBLICATION,
        S.PUBLISHED,
    }
)


def is_legal(from_status: Status | str | None, to_status: Status | str) -> bool:
    """True when a job may move from ``from_status`` (None: a new job) to ``to_status``."""
    try:
        target = Status(to_status)
    except ValueError:
        return False
    if from_status is None:
        return target in INITIAL
    try:
        return target in TRANSITIONS[Status(from_status)]
    except ValueError:
        return False


def statuses_in_phase(phase: str) -> list[Status]:
    """The statuses of a phase, in lifecycle order; a ValueError names an unknown phase."""
    found = [status for status, name in PHASES.items() if name == phase]
    if not found:
        raise ValueError(f"unknown phase {phase!r}; phases are {sorted(set(PHASES.values()))}")
    return sorted(found, key=lambda status: status.id)
