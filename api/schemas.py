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

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

from db.models import Job, JobMetadata, JobStatusChange
from db.notify import StatusEvent
from db.statuses import PHASES, STATUS_IDS, TERMINAL, Status
from jobtypes.registry import REFERENCE_PATTERN

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1
#: Nesting depth of free-form JSON documents (config, files, metadata).
MAX_JSON_DEPTH = 32

Phase = Literal["queued", "in-progress", "complete", "failed", "expired"]


# --------------------------------------------------------------------------- validators

#: A lone UTF-16 surrogate: JSON can spell one (``"\\ud800"``), Unicode text cannot hold it.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Control characters: C0, DEL and C1.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: Control characters but tab, line feed and carriage return (free text may have lines).
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: What the schema says of names and of free text (JSON Schema patterns, ECMA syntax).
NAME_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f]*$"


def valid_unicode(value: str) -> str:
    """Refuse lone surrogates (no encoding can store them) and NUL (PostgreSQL text cannot)."""
    if _SURROGATE.search(value):
        raise ValueError("must be valid Unicode text: a lone UTF-16 surrogate is not a character")
    return no_nul(value)


def no_nul(value: str) -> str:
    """Refuse NUL characters, which PostgreSQL text cannot hold."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _name(value: Any) -> Any:
    """Names and paths (ids, queues, URLs): valid Unicode without control characters."""
    if isinstance(value, str):
        valid_unicode(value)
        if _CONTROL.search(value):
            raise ValueError("must not contain control characters")
    return value


def _text(value: Any) -> Any:
    """Free text (messages): valid Unicode; of the control characters only tab and newlines."""
    if isinstance(value, str):
        valid_unicode(value)
        if _CONTROL_IN_TEXT.search(value):
            raise ValueError("must not contain control characters (tab and line breaks may)")
    return value


def _folder_name(value: Any) -> Any:
    """A product or tile id also names a folder of the output storage: one plain segment."""
    if isinstance(value, str) and (value in (".", "..") or "/" in value or "\\" in value):
        raise ValueError("names a folder of the output storage: no '/', '\\', '.' or '..'")
    return value


def _plain_json(value: Any, depth: int = 0) -> Any:
    """Refuse what a JSON column cannot store: NUL or lone surrogates in strings and keys,
    NaN/infinite numbers, deep nests."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        valid_unicode(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            valid_unicode(key)
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


def name_field(max_length: int, min_length: int = 0) -> Any:
    """A name or path field: no control characters, valid Unicode, bounded."""
    # The Field first: with the validator before it the pattern would be missing from the schema.
    return Annotated[
        str,
        Field(min_length=min_length, max_length=max_length, pattern=NAME_PATTERN),
        BeforeValidator(_name),
    ]


def text_field(max_length: int) -> Any:
    """A free-text field: valid Unicode, no control characters but tab and line breaks."""
    return Annotated[
        str, Field(max_length=max_length, pattern=TEXT_PATTERN), BeforeValidator(_text)
    ]


OptionalText = Annotated[str | None, BeforeValidator(_name)]
# Strict: the schema says integer, so "5" and 5.0 are refused rather than coerced.
Priority = Annotated[
    int, Field(strict=True, ge=INT32_MIN, le=INT32_MAX, description="Higher runs first.")
]
MaxAttempts = Annotated[int, Field(strict=True, ge=1, le=1000)]
UtcDatetime = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_utc)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_plain_json)]
JsonList = Annotated[list[Any], AfterValidator(_plain_json)]
JobTypeReference = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=REFERENCE_PATTERN,
        description="A registered job type: its import path 'module:Class' or its name.",
        examples=["jobtypes.demo:SnowCover", "snow_cover"],
    ),
    BeforeValidator(_name),
]
#: Metadata keys: letters, digits, '_', '.', ':', '-', starting with a letter, digit or '_' (so
#: no '.', '..' or other dot-led key, and no '/'); normally a task name.
METADATA_KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}$"
#: A lease token as :meth:`db.store.JobStore.claim` makes them.
LEASE_TOKEN_PATTERN = r"^[0-9a-f]{32}$"


def _omit_null(schema: dict[str, Any]) -> None:
    """Field schema of an optional field that may be left out but not sent as null: the
    schema says the type alone (the server refuses null with 422)."""
    options = [option for option in schema.pop("anyOf", []) if option != {"type": "null"}]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    schema.pop("default", None)


#: For fields that may be omitted but not null: ``field: X | None = NOT_NULL``.
NOT_NULL: Any = Field(None, json_schema_extra=_omit_null)


class ApiModel(BaseModel):
    """Request bodies: unknown fields are errors, and so is null for a field whose schema
    does not allow it (see :data:`NOT_NULL`)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _null_only_where_allowed(self) -> ApiModel:
        for field, info in type(self).model_fields.items():
            if (
                info.json_schema_extra is _omit_null
                and field in self.model_fields_set
                and getattr(self, field) is None
            ):
                raise ValueError(f"{field}: may not be null")
        return self


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

    job_type: JobTypeReference
    product_id: Annotated[name_field(300, 1), AfterValidator(_folder_name)] | None = None
    config: JsonObject | None = Field(None, description="Job configuration (any JSON object).")
    priority: Priority = 0
    queue: name_field(100, 1) | None = Field(None, description="Default: the job type's queue.")
    tile_id: Annotated[name_field(64, 1), AfterValidator(_folder_name)] | None = None
    input_path: name_field(4096) | None = Field(
        None, description="URL of the product; it must lie under the job type's input storage."
    )
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
    """A partial job: only these fields may change.

    A ``status`` different from the job's goes through the state machine (409 when illegal);
    ``message`` and ``error_class`` accompany it, and a status equal to the current one changes
    nothing. A status workers own (``queued`` through ``published``) also needs the job's
    current ``lease_token`` (from ``POST /jobs/{id}/claim``): 409 without it. ``output_path``
    must lie under the job type's output storage.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "dependentRequired": {
                "message": ["status"],
                "error_class": ["status"],
                "lease_token": ["status"],
            }
        },
    )

    status: Status | None = NOT_NULL
    message: text_field(10_000) | None = None
    error_class: name_field(100) | None = None
    lease_token: Annotated[str, Field(pattern=LEASE_TOKEN_PATTERN)] | None = Field(
        None, description="The job's current lease.", json_schema_extra=_omit_null
    )
    priority: Priority | None = NOT_NULL
    max_attempts: MaxAttempts | None = NOT_NULL
    output_path: name_field(4096) | None = Field(
        None, description="Under the job type's output storage; null clears it."
    )
    output_publication_date: UtcDatetime | None = None
    output_files: JsonList | None = NOT_NULL

    @model_validator(mode="after")
    def _with_a_status(self) -> JobPatch:
        for field in ("message", "error_class", "lease_token"):
            if getattr(self, field) is not None and self.status is None:
                raise ValueError(f"{field}: only accompanies a status")
        return self

    def field_values(self) -> dict[str, Any]:
        """The non-status fields the patch names, as store column values."""
        return {
            field: getattr(self, field)
            for field in PATCHABLE_FIELDS
            if field in self.model_fields_set
        }


class ActionRequest(ApiModel):
    """Optional body of retry and cancel."""

    message: text_field(10_000) | None = None


class ClaimRequest(ApiModel):
    """An external processor claims a ready job: ``ready -> queued`` with a lease for it."""

    worker: name_field(200, 1) = Field(description="Who processes the job (shown in history).")
    lease_seconds: float | None = Field(
        None,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="How long the lease lasts unless renewed; default JOBLINE_LEASE_SECONDS.",
        json_schema_extra=_omit_null,
    )


class HeartbeatRequest(ApiModel):
    """Extend a held lease."""

    lease_token: Annotated[str, Field(pattern=LEASE_TOKEN_PATTERN)]
    lease_seconds: float | None = Field(
        None,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="Default JOBLINE_LEASE_SECONDS.",
        json_schema_extra=_omit_null,
    )


class LeaseOut(BaseModel):
    """A lease on a job: present its token with every PATCH into a worker-owned status."""

    job_id: int
    lease_token: str
    lease_expires_at: datetime


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
    due_at: datetime | None = Field(
        description="When the job becomes late (its job type's timeliness target)."
    )
    late: bool = Field(description="Past its due time and not done (nor expired or cancelled).")
    sensing_time: datetime | None
    latency_seconds: float | None = Field(
        description="A done job's latency: input publication to output publication."
    )
    sensing_latency_seconds: float | None

    @classmethod
    def from_job(cls, job: Job, now: datetime | None = None) -> JobOut:
        status = Status(job.status)
        latency = job.latency
        sensing_latency = job.sensing_latency
        return cls(
            due_at=job.due_at,
            late=job.is_late(now or datetime.now(UTC)),
            sensing_time=job.sensing_time,
            latency_seconds=latency.total_seconds() if latency is not None else None,
            sensing_latency_seconds=(
                sensing_latency.total_seconds() if sensing_latency is not None else None
            ),
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


class ClaimOut(BaseModel):
    """The claimed job and its lease (the token is shown only here)."""

    job: JobOut
    lease: LeaseOut


class JobPage(BaseModel):
    """One page of jobs in id order; pass ``next_cursor`` as ``cursor`` for the next page."""

    jobs: list[JobOut]
    next_cursor: int | None


class HistoryEntry(BaseModel):
    """One status change of a job, or an operator's note (``kind`` ``note``: from and to the
    status the job was in)."""

    id: int
    kind: Literal["status", "note"] = "status"
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


class NoteCreate(ApiModel):
    """An operator's note on a job, kept in its history."""

    note: text_field(4000) = Field(min_length=1)
    author: name_field(200) | None = None


class BulkRequest(ApiModel):
    """A bulk retry or cancel: the jobs of a filter (at least one filter)."""

    status: list[Status] | None = Field(None, max_length=len(Status))
    phase: Phase | None = None
    job_type: name_field(200) | None = None
    tile_id: name_field(64) | None = None
    created_after: UtcDatetime | None = None
    created_before: UtcDatetime | None = None
    late: StrictBool | None = Field(None, description="true: only late jobs.")
    dry_run: StrictBool = Field(False, description="Only count the jobs the action would change.")
    message: text_field(2000) | None = None

    @model_validator(mode="after")
    def _some_filter(self) -> BulkRequest:
        fields = ("status", "phase", "job_type", "tile_id", "created_after", "created_before")
        if all(getattr(self, name) is None for name in fields) and not self.late:
            raise ValueError(
                "filter: name at least one filter (status, phase, job_type, tile_id, "
                "created_after, created_before, late)"
            )
        return self


class BulkOut(BaseModel):
    """What a bulk action changed (or, on a dry run, would change)."""

    dry_run: bool
    jobs: int = Field(description="Jobs changed, or that a dry run would change.")


class PauseCreate(ApiModel):
    reason: text_field(2000) | None = None


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


class MetadataSummary(BaseModel):
    """One metadata document of a job, without the document (``GET .../metadata/{key}``)."""

    key: str
    model: str = Field(description="Pydantic model that wrote the document (import path).")
    size_bytes: int = Field(description="Size of the stored document's JSON text.")
    created_at: datetime
    updated_at: datetime


class MetadataPage(BaseModel):
    """A page of a job's metadata summaries in key order; pass ``next_after`` as ``after``."""

    items: list[MetadataSummary]
    next_after: str | None


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
    """What the public health check tells: no host, port or error text (those are logged)."""

    status: Literal["ok", "unavailable"]
    database: Literal["reachable", "unreachable"]
    revision: str | None = Field(description="Schema revision of the store (null when down).")
