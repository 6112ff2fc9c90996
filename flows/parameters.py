"""The flows' parameter types, with their bounds.

Prefect writes them into each deployment's parameter schema (``parameter_openapi_schema``), so the
UI's run form shows them, and refuses a deployment run whose parameters break them (HTTP 409)
before any worker starts; a flow called from Python validates them too. The descriptions are the
flows' docstrings (``Args:``), which Prefect reads for the schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

#: The most jobs one flow run takes; more come with the next run.
MAX_JOBS_PER_RUN = 1_000_000
#: The most jobs one flow run processes at once (threads, and containers at once).
MAX_CONCURRENCY = 64


def _as_utc(value: datetime | None) -> datetime | None:
    """A time without an offset is UTC (as the CLI reads it), so windows compare."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


#: A job type's name: letters, digits, ``_``, ``.`` and ``:`` (``module:Class``), nothing that
#: could be a path or an expression.
JOB_TYPE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_]*)?$"
JobTypeName = Annotated[str, Field(min_length=1, max_length=200, pattern=JOB_TYPE_PATTERN)]
WindowBound = Annotated[datetime | None, AfterValidator(_as_utc)]
MaxJobs = Annotated[int, Field(ge=1, le=MAX_JOBS_PER_RUN)]
Concurrency = Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]
Runner = Literal["auto", "local", "docker"] | None
JobId = Annotated[int, Field(ge=1, le=2**63 - 1)]
#: The most jobs one ``process-batch`` flow run takes.
MAX_BATCH = 1000
JobIds = Annotated[list[JobId], Field(min_length=1, max_length=MAX_BATCH)]
