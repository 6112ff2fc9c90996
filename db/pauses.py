"""Paused job types and queues: their ready jobs are neither claimed nor launched.

A pause is a row of ``pauses`` (kind ``job_type`` or ``queue``, and the name: a job type's
import path, or a queue). Every query that hands out work adds :func:`not_paused` to its
conditions; a pause stops nothing that runs already, and resuming deletes the row.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, exists, or_, select

from db.models import Pause

PauseKind = Literal["job_type", "queue"]
PAUSE_KINDS: tuple[PauseKind, ...] = ("job_type", "queue")


def not_paused(jobs: Any) -> ColumnElement[bool]:
    """SQL condition on the columns ``jobs`` (``Job.__table__.c`` or an alias's ``.c``): neither
    the job's type nor its queue is paused."""
    p = Pause.__table__.c
    return ~exists(
        select(p.name).where(
            or_(
                and_(p.kind == "job_type", p.name == jobs.job_type),
                and_(p.kind == "queue", p.name == jobs.queue),
            )
        )
    )


def check_kind(kind: str) -> PauseKind:
    """The kind, or a ValueError naming the field and the kinds there are."""
    if kind not in PAUSE_KINDS:
        raise ValueError(f"kind: must be one of {list(PAUSE_KINDS)}, got {kind!r}")
    return kind  # type: ignore[return-value]
