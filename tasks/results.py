"""What each lifecycle step stores as job metadata, and what steps hand to the next one.

The metadata key of each model is the step's task name (:data:`METADATA_KEYS`), so after awaiting
a job a user reads, for instance, ``store.get_metadata(job_id, "run-container", RunResult)``.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from jobtypes.base import Configuration, OutputFile, Product
from tasks.runners.base import RunResult
from tasks.storage import StagedFile


class DiscoveryResult(BaseModel):
    """Stored per inserted job under ``discover-inputs``: the search and the product found."""

    job_type: str
    since: datetime
    until: datetime
    products_found: int
    product: Product | None = None


class Discovery(BaseModel):
    """The discover step's answer: every product found in the window searched."""

    job_type: str
    since: datetime
    until: datetime
    products: list[Product] = Field(default_factory=list)


class InsertSummary(BaseModel):
    inserted: list[int] = Field(default_factory=list)
    cancelled: list[int] = Field(default_factory=list)
    skipped: int = 0
    dropped: int = 0


class ConfigureSummary(BaseModel):
    ready: list[int] = Field(default_factory=list)
    waiting: list[int] = Field(default_factory=list)


class ClaimedJob(BaseModel):
    """A job this flow run claimed, with the lease token every later write must present."""

    job_id: int
    lease_token: str


class StagingResult(BaseModel):
    """Stored under ``pre-process``."""

    work_dir: str
    files: list[StagedFile] = Field(default_factory=list)
    total_bytes: int = 0


class PostProcessResult(BaseModel):
    """Stored under ``post-process``."""

    return_code: int
    product_generated: bool
    output_path: str | None = None
    outputs: list[OutputFile] = Field(default_factory=list)


class PublicationResult(BaseModel):
    """Stored under ``publish``."""

    message_ids: list[str] = Field(default_factory=list)
    delivered: bool = False
    publication_date: datetime | None = None


class StepOutcome(BaseModel):
    """Handed from one step to the next; ``ok`` False means the job left the happy path (its
    status says why) and later steps do nothing."""

    job_id: int
    lease_token: str
    ok: bool = True
    work_dir: str | None = None
    exit_code: int | None = None
    product_generated: bool = False


METADATA_KEYS: dict[str, type[BaseModel]] = {
    "discover-inputs": DiscoveryResult,
    "configure": Configuration,
    "pre-process": StagingResult,
    "run-container": RunResult,
    "post-process": PostProcessResult,
    "publish": PublicationResult,
}
