"""Plain values that go into and come out of the store (no database objects)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from db.statuses import Status


def content_key(*parts: str) -> bytes:
    """The 16-byte key that makes identical submissions one job."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x1f")  # unit separator: ("ab", "c") and ("a", "bc") differ
    return digest.digest()


def product_key(job_type_name: str, product_id: str) -> bytes:
    """Key of a product's job: the job type's stable ``name`` (not its import path, so a class
    can move to another module without its products looking new) and the product id."""
    return content_key("product", job_type_name, product_id)


def config_key(job_type_name: str, config: dict[str, Any]) -> bytes:
    """Key of a job submitted with a configuration only: the job type's ``name`` and the
    canonical JSON of that configuration."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return content_key("config", job_type_name, canonical)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert. ``status`` is ``initialized`` or ``cancelled`` (e.g. a too-old product).

    ``job_key`` None means :func:`product_key` of (``job_type``, ``product_id``), for callers of
    the store that name their job types by a plain word; the pipeline and the API pass the key
    made from the job type's ``name``, as ``job_type`` holds its import path."""

    job_type: str
    product_id: str
    queue: str = "default"
    priority: int = 0
    tile_id: str | None = None
    input_path: str | None = None
    input_publication_date: datetime | None = None
    input_files: list[Any] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    max_attempts: int = 3
    status: Status = Status.INITIALIZED
    message: str | None = None
    job_key: bytes | None = None
    #: When the job becomes late (None: its job type has no timeliness target).
    due_at: datetime | None = None
    #: When the input product was sensed, if its job type can tell.
    sensing_time: datetime | None = None

    @property
    def key(self) -> bytes:
        return self.job_key or product_key(self.job_type, self.product_id)


@dataclass(frozen=True, slots=True)
class InsertResult:
    """What :meth:`db.store.JobStore.insert_jobs` did: new job ids, and the products it skipped
    because a job with the same key already existed."""

    inserted: dict[bytes, int]
    skipped: list[str]

    @property
    def inserted_ids(self) -> list[int]:
        return list(self.inserted.values())


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A batch transition: the jobs that moved, and those that were not in an expected status."""

    changed: list[int]
    unchanged: list[int]


@dataclass(frozen=True, slots=True)
class RunIds:
    """The Prefect run that made a change, recorded in the history row when known."""

    flow_run_id: str | None = None
    task_run_id: str | None = None


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Filters of :meth:`db.store.JobStore.list_jobs`; every field narrows the list."""

    statuses: tuple[Status, ...] = ()
    job_type: str | None = None
    tile_id: str | None = None
    product_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    input_date_from: datetime | None = None
    input_date_until: datetime | None = None
    #: Only jobs late at this time (past their due time and not done, expired or cancelled).
    late_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of jobs in id order, and the cursor of the next page (None on the last)."""

    jobs: list[Any]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class MetadataLimits:
    """Bounds on one job's metadata: keys, and bytes of all its documents' stored JSON."""

    max_keys: int
    max_job_bytes: int


@dataclass(frozen=True, slots=True)
class MetadataSummary:
    """One stored metadata document, described without its content."""

    key: str
    model: str
    size_bytes: int
    created_at: datetime
    updated_at: datetime
