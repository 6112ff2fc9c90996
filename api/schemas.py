"""Request and response bodies of the REST API, apart from the table models in ``db.models``.

Every request model forbids unknown fields, bounds its numbers and strings to what the database
columns hold, and refuses what PostgreSQL would refuse later (NUL characters, NaN and infinite
numbers), so that bad input answers 4xx naming the field and the reason and changes nothing.
This module imports no web framework: the CLI reuses it for its ``--json`` output.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from db.models import Job, JobMetadata, JobStatusChange
from db.notify import StatusEvent
from db.statuses import PHASES, STATUS_IDS, TERMINAL, Status

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1
#: Nesting depth of free-form JSON documents (config, files, metadata).
MAX_JSON_DEPTH = 32

Phase = Literal["queued", "in-progress", "complete", "failed", "expired"]


# --------------------------------------------------------------------------- validators


def no_nul(value: str) -> str:
    """Refuse NUL characters, which PostgreSQL text cannot hold."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _optional_no_nul(value: str | None) -> str | None:
    return value if value is None else no_nul(value)


def _plain_json(value: Any, depth: int = 0) -> Any:
    """Refuse what a JSON column cannot store: NUL in strings, NaN/infinite numbers, deep nests."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        no_nul(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            no_nul(key)
            _plain_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _plain_json(item, depth + 1)
    return value


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _iso_text(value: Any) -> Any:
    """Datetimes come as ISO 8601 text, as the schema says (not as epoch numbers)."""
    if isinstance(value, datetime) or (isinstance(value, str) and _ISO_DATE.match(value)):
        return value
    raise ValueError("must be an ISO 8601 date-time string, e.g. 2026-01-31T12:00:00Z")


def _utc(value: datetime) -> datetime:
    """Aware datetimes in UTC; a naive one is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


Text = Annotated[str, AfterValidator(no_nul)]
OptionalText = Annotated[str | None, AfterValidator(_optional_no_nul)]
# Strict: the schema says integer, so "5" and 5.0 are refused rather than coerced.
Priority = Annotated[
    int, Field(strict=True, ge=INT32_MIN, le=INT32_MAX, description="Higher runs first.")
]
MaxAttempts = Annotated[int, Field(strict=True, ge=1, le=1000)]
UtcDatetime = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_utc)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_plain_json)]
JsonList = Annotated[list[Any], AfterValidator(_plain_json)]
ImportPath = Annotated[
    str,
    Field(
        min_length=3,
        max_length=200,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$",
        description="Import path of the job type, 'module:Class'.",
        examples=["jobtypes.demo:SnowCover"],
    ),
]
#: Metadata keys: letters, digits, '_', '.', ':', '-' (normally a task name).
METADATA_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"


class ApiModel(BaseModel):
    """Request bodies: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------ errors


class FieldError(BaseModel):
    field: str = Field(
        description="The offending field, query parameter or header ('body' for all)."
    )
    reason: str


class ErrorBody(BaseModel):
    """Every error answer."""

    detail: str
    errors: list[FieldError] = Field(default_factory=list)


# -------------------------------------------------------------------------------- jobs


class JobCreate(ApiModel):
    """A job to create. ``product_id`` or ``config`` (or both) is required.

    Identity: with a ``product_id`` the job is the product's job of that type (the same job the
    pipeline's discovery would make); with only a ``config`` it is the job of that configuration.
    Submitting an identical job again returns the existing one.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["product_id"], "properties": {"product_id": {"type": "string"}}},
                {"required": ["config"], "properties": {"config": {"type": "object"}}},
            ]
        },
    )

    job_type: ImportPath
    product_id: Annotated[Text, Field(min_length=1, max_length=300)] | None = None
    config: JsonObject | None = Field(None, description="Job configuration (any JSON object).")
    priority: Priority = 0
    queue: Annotated[Text, Field(min_length=1, max_length=100)] | None = Field(
        None, description="Default: the job type's queue."
    )
    tile_id: Annotated[Text, Field(min_length=1, max_length=64)] | None = None
    input_path: Annotated[Text, Field(max_length=4096)] | None = None
    input_publication_date: UtcDatetime | None = None
    input_files: JsonList = Field(default_factory=list)
    max_attempts: MaxAttempts | None = Field(None, description="Default: the job type's.")

    @model_validator(mode="after")
    def _product_or_config(self) -> JobCreate:
        if self.product_id is None and self.config is None:
            raise ValueError("product_id: give a product_id or a config (or both)")
        return self


#: Fields a PATCH may set besides ``status`` (and its ``message`` / ``error_class``).
PATCHABLE_FIELDS = (
    "priority",
    "max_attempts",
    "output_path",
    "output_publication_date",
    "output_files",
)
#: Of those, the ones that may be cleared with null.
NULLABLE_FIELDS = ("output_path", "output_publication_date")


class JobPatch(ApiModel):
    """A partial job: only these fields may change. A ``status`` different from the job's goes
    through the state machine (409 when illegal); ``message`` and ``error_class`` accompany it.
    A status equal to the current one changes nothing."""

    status: Status | None = None
    message: Annotated[Text, Field(max_length=10_000)] | None = None
    error_class: Annotated[Text, Field(max_length=100)] | None = None
    priority: Priority | None = None
    max_attempts: MaxAttempts | None = None
    output_path: Annotated[Text, Field(max_length=4096)] | None = None
    output_publication_date: UtcDatetime | None = None
    output_files: JsonList | None = None

    @model_validator(mode="after")
    def _no_null_for_required(self) -> JobPatch:
        for name in ("status", "priority", "max_attempts", "output_files"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name}: may not be null")
        return self

    def field_values(self) -> dict[str, Any]:
        """The non-status fields the patch names, as store column values."""
        return {
            name: getattr(self, name) for name in PATCHABLE_FIELDS if name in self.model_fields_set
        }


class ActionRequest(ApiModel):
    """Optional body of retry and cancel."""

    message: Annotated[Text, Field(max_length=10_000)] | None = None


class JobOut(BaseModel):
    """A job as the API and ``jobline jobs --json`` show it."""

    id: int
    key: str = Field(description="Content key (hex): identical submissions share it.")
    job_type: str
    queue: str
    priority: int
    product_id: str
    tile_id: str | None
    input_path: str | None
    input_publication_date: datetime | None
    output_path: str | None
    output_publication_date: datetime | None
    config: dict[str, Any]
    input_files: list[Any]
    output_files: list[Any]
    status: Status
    status_id: int
    phase: Phase
    terminal: bool
    status_changed_at: datetime
    message: str | None = Field(description="Message of the latest status change.")
    error_class: str | None
    error_subtype: str | None
    attempts: int
    max_attempts: int
    retry_at: datetime | None
    last_error: str | None
    created_at: datetime
    last_accessed_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    lease_expires_at: datetime | None
    flow_run_id: str | None
    task_run_id: str | None

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        status = Status(job.status)
        return cls(
            id=job.id,
            key=job.job_key.hex(),
            job_type=job.job_type,
            queue=job.queue,
            priority=job.priority,
            product_id=job.product_id,
            tile_id=job.tile_id,
            input_path=job.input_path,
            input_publication_date=job.input_publication_date,
            output_path=job.output_path,
            output_publication_date=job.output_publication_date,
            config=job.config,
            input_files=job.input_files,
            output_files=job.output_files,
            status=status,
            status_id=STATUS_IDS[status],
            phase=PHASES[status],  # type: ignore[arg-type]
            terminal=status in TERMINAL,
            status_changed_at=job.status_changed_at,
            message=job.status_message,
            error_class=job.error_class,
            error_subtype=job.error_subtype,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            retry_at=job.retry_at,
            last_error=job.last_error,
            created_at=job.created_at,
            last_accessed_at=job.last_accessed_at,
            claimed_at=job.claimed_at,
            finished_at=job.finished_at,
            worker=job.worker,
            lease_expires_at=job.lease_expires_at,
            flow_run_id=job.flow_run_id,
            task_run_id=job.task_run_id,
        )


class JobPage(BaseModel):
    """One page of jobs in id order; pass ``next_cursor`` as ``cursor`` for the next page."""

    jobs: list[JobOut]
    next_cursor: int | None


class HistoryEntry(BaseModel):
    """One status change of a job."""

    id: int
    job_id: int
    from_status: Status | None
    to_status: Status
    changed_at: datetime
    message: str | None
    error_class: str | None
    error_subtype: str | None
    attempt: int
    worker: str | None
    flow_run_id: str | None
    task_run_id: str | None

    @classmethod
    def from_change(cls, change: JobStatusChange) -> HistoryEntry:
        return cls.model_validate(change, from_attributes=True)


class WaitResult(BaseModel):
    """The answer of a long-poll: the job, and whether it became terminal before the timeout."""

    job: JobOut
    terminal: bool
    timed_out: bool


# ---------------------------------------------------------------------------- metadata


class ApiMetadata(BaseModel):
    """A metadata document written through the API: any JSON object."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _plain(self) -> ApiMetadata:
        _plain_json(self.model_extra or {})
        return self


class MetadataOut(BaseModel):
    """A stored metadata document and the model that wrote it."""

    job_id: int
    key: str
    model: str = Field(description="Pydantic model that wrote the document (import path).")
    document: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: JobMetadata) -> MetadataOut:
        return cls(
            job_id=row.job_id,
            key=row.key,
            model=row.model,
            document=row.value,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


# ----------------------------------------------------------------------- events, health


class StatusEventOut(BaseModel):
    """The ``data`` of one server-sent event; its SSE ``id`` is the history ``id``."""

    id: int
    job_id: int
    job_type: str
    from_status: Status | None
    to_status: Status
    phase: Phase
    terminal: bool
    changed_at: datetime
    message: str | None
    error_class: str | None
    error_subtype: str | None
    attempt: int
    worker: str | None
    flow_run_id: str | None
    task_run_id: str | None

    @classmethod
    def from_event(cls, event: StatusEvent) -> StatusEventOut:
        status = Status(event.to_status)
        return cls(
            id=event.id,
            job_id=event.job_id,
            job_type=event.job_type,
            from_status=event.from_status,
            to_status=status,
            phase=PHASES[status],  # type: ignore[arg-type]
            terminal=status in TERMINAL,
            changed_at=event.changed_at,
            message=event.message,
            error_class=event.error_class,
            error_subtype=event.error_subtype,
            attempt=event.attempt,
            worker=event.worker,
            flow_run_id=event.flow_run_id,
            task_run_id=event.task_run_id,
        )


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["reachable", "unreachable"]
    revision: str | None = Field(description="Schema revision of the store.")
    head: str = Field(description="Newest schema revision this jobline knows.")
    up_to_date: bool
    detail: str | None = None
