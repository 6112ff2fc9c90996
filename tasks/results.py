"""What each lifecycle step stores as job metadata, and what steps hand to the next one.

The metadata key of each model is the step's task name (:data:`METADATA_KEYS`), so after awaiting
a job a user reads, for instance, ``store.get_metadata(job_id, "run-container", RunResult)``.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from jobtypes.base import Configuration, OutputFile, Product
from tasks.runners.base import RunResult
from tasks.storage import Rejection, StagedFile

#: Rejected objects named in each job's ``discover-inputs`` metadata (all are counted).
REJECTIONS_PER_JOB = 20


class DiscoveryResult(BaseModel):
    """Stored per inserted job under ``discover-inputs``: the search, the product found, and the
    listed objects the same search rejected (counted by kind, the first ones named)."""

    job_type: str
    since: datetime
    until: datetime
    products_found: int
    product: Product | None = None
    rejected_count: int = 0
    rejected_by_kind: dict[str, int] = Field(default_factory=dict)
    rejected: list[Rejection] = Field(default_factory=list)


class Discovery(BaseModel):
    """The discover step's answer: every product found in the window searched, and every
    listed object that did not become one (with the reason)."""

    job_type: str
    since: datetime
    until: datetime
    products: list[Product] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list)

    def rejected_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rejection in self.rejected:
            counts[rejection.kind] = counts.get(rejection.kind, 0) + 1
        return counts


class InsertSummary(BaseModel):
    inserted: list[int] = Field(default_factory=list)
    cancelled: list[int] = Field(default_factory=list)
    skipped: int = 0
    dropped: int = 0


class ConfigureSummary(BaseModel):
    ready: list[int] = Field(default_factory=list)
    waiting: list[int] = Field(default_factory=list)


class ClaimedJob(BaseModel):
    """A job this flow run claimed, with the lease token every later write must present, and
    its product and tile (for the names and tags of its task runs)."""

    job_id: int
    lease_token: str
    product_id: str = ""
    tile_id: str | None = None

    @property
    def label(self) -> str:
        """``<job id> <tile> <product>``: what names the job's task runs in the Prefect UI."""
        return job_label(self.job_id, self.tile_id, self.product_id)


def job_label(job_id: int, tile_id: str | None, product_id: str) -> str:
    return " ".join(part for part in (str(job_id), tile_id, product_id) if part)


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
    product_id: str = ""
    tile_id: str | None = None

    @property
    def label(self) -> str:
        """``<job id> <tile> <product>``, as :attr:`ClaimedJob.label`."""
        return job_label(self.job_id, self.tile_id, self.product_id)


METADATA_KEYS: dict[str, type[BaseModel]] = {
    "discover-inputs": DiscoveryResult,
    "configure": Configuration,
    "pre-process": StagingResult,
    "run-container": RunResult,
    "post-process": PostProcessResult,
    "publish": PublicationResult,
}
