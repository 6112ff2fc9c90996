"""The ``JobType`` contract: what a partner declares to plug their processing into jobline.

A job type is a subclass of :class:`JobType`, referenced by its import path
(``"jobtypes.demo:SnowCover"`` or ``"partner_module:TheirType"``) or its ``name``, and loaded
with :func:`load_job_type`, which loads only registered job types (:mod:`jobtypes.registry`).
Class attributes declare the processing; methods are hooks with sensible defaults that a
subclass overrides where its products need it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field

from jobline.settings import Settings

if TYPE_CHECKING:
    from db.models import Job
    from db.store import JobStore

WorkerFlavor = Literal["extra_small", "small", "medium", "large", "extra_large"]


class InputFile(BaseModel):
    """One file of an input product, relative to the product's path in input storage."""

    path: str
    size: int | None = None


class Product(BaseModel):
    """An input product found in input storage: one job is made for each."""

    product_id: str
    path: str = Field(description="URL of the product (a folder or an object) in input storage")
    tile_id: str | None = None
    publication_date: datetime | None = None
    sensing_time: datetime | None = Field(None, description="when the input was acquired")
    files: list[InputFile] = Field(default_factory=list)


class InsertDecision(BaseModel):
    """What :meth:`JobType.pre_insert` decided for a product."""

    action: Literal["insert", "cancel", "drop"] = "insert"
    reason: str = ""


class Configuration(BaseModel):
    """What :meth:`JobType.configure_job` chose for a job; stored as its metadata."""

    ready: bool = Field(True, description="False: the job waits (configured) for a dependency")
    reason: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = None


class OutputFile(BaseModel):
    path: str = Field(description="Path relative to the job's output directory")
    size: int
    sha256: str


class PublicationMessage(BaseModel):
    """One message announcing one output product (a STAC-style item)."""

    product_id: str
    body: dict[str, Any]


class JobType:
    """Base class of every job type. Subclasses set the class attributes and override hooks."""

    #: Short name, used in output paths and summaries.
    name: ClassVar[str] = ""
    input_product_type: ClassVar[str] = ""
    queue: ClassVar[str] = "default"
    #: The processing container: image and command. Inside it, the job's inputs are at
    #: /work/input (read-only) and outputs go to /work/output; the working directory is /work.
    image: ClassVar[str] = ""
    command: ClassVar[list[str]] = []
    #: The same processing as a host command for the ``local`` runner (cwd = the job's work dir,
    #: so ``input`` and ``output`` are relative paths in both). Defaults to ``command``.
    local_command: ClassVar[list[str] | None] = None
    environment: ClassVar[dict[str, str]] = {}
    worker_flavor: ClassVar[WorkerFlavor] = "small"
    output_products: ClassVar[list[str]] = []
    max_attempts: ClassVar[int] = 3
    #: Seconds the container may run before it is killed.
    timeout: ClassVar[float] = 3600.0
    #: fsspec URLs; empty means the embedded defaults under the settings' data dir.
    input_storage: ClassVar[str] = ""
    output_storage: ClassVar[str] = ""
    #: Glob, relative to input storage, that matches one product per hit.
    product_glob: ClassVar[str] = "*"
    #: ``local`` or ``docker`` to pin a runner; None follows the run's or the settings' choice.
    runner: ClassVar[str | None] = None
    #: Containers have no network unless the job type needs it.
    network: ClassVar[bool] = False
    #: Products older than this (by publication date) are inserted as cancelled; None keeps all.
    max_input_age: ClassVar[timedelta | None] = None
    #: How long a done job's outputs are kept before the job expires.
    retention: ClassVar[timedelta] = timedelta(days=30)
    #: How soon after its input's publication an output is due (None: no target). A job past
    #: it and not done is late; publication messages carry it as ``product:timeliness``.
    timeliness_target: ClassVar[timedelta | None] = None
    #: The STAC ``product:timeliness_category`` of the outputs (e.g. ``NRT``), if any.
    timeliness_category: ClassVar[str | None] = None
    #: What one running job counts against the launcher's caps (settings ``launch_weights``
    #: may override it by name): a heavy job type weighs more.
    launch_weight: ClassVar[float] = 1.0
    #: Jobs the launcher puts into one flow run (``process-batch``); 1: a ``process-job`` run
    #: per job. Batching amortises a worker's seconds of start-up over short jobs.
    batch_size: ClassVar[int] = 1
    #: Products older than this (by publication date) are back-processing: the launcher takes
    #: them after every live job. None: no product is back-processing.
    backprocessing_horizon: ClassVar[timedelta | None] = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # ---------------------------------------------------------------- derived declarations

    @classmethod
    def due_at(cls, published: datetime | None, now: datetime) -> datetime | None:
        """When a job for an input published at ``published`` (None: now) becomes late."""
        if cls.timeliness_target is None:
            return None
        return (published or now) + cls.timeliness_target

    @classmethod
    def import_path(cls) -> str:
        return f"{cls.__module__}:{cls.__qualname__}"

    @property
    def input_url(self) -> str:
        return self.input_storage or f"file://{self.settings.data_dir / 'input' / self.name}"

    @property
    def output_url(self) -> str:
        return self.output_storage or f"file://{self.settings.data_dir / 'output'}"

    @property
    def host_command(self) -> list[str]:
        return list(self.local_command if self.local_command is not None else self.command)

    # --------------------------------------------------------------------------- hooks

    def parse_product(self, path: str, publication_date: datetime | None = None) -> Product | None:
        """Turn one listed path into a product, or None to ignore it. Default: the last path
        component is the product id; no tile."""
        product_id = Path(path.rstrip("/")).name
        if not product_id:
            return None
        return Product(product_id=product_id, path=path, publication_date=publication_date)

    def discover(self, since: datetime, until: datetime) -> list[Product] | None:
        """Products published in [since, until). None (the default) lets jobline list
        ``input_storage`` with ``product_glob`` and call :meth:`parse_product` on each hit."""
        return None

    def pre_insert(self, product: Product, now: datetime) -> InsertDecision:
        """Decide whether a product becomes a job. Default: cancel products older than
        ``max_input_age``."""
        if (
            self.max_input_age is not None
            and product.publication_date is not None
            and now - product.publication_date > self.max_input_age
        ):
            return InsertDecision(action="cancel", reason=f"input older than {self.max_input_age}")
        return InsertDecision()

    def configure_batch(self, jobs: list[Job], store: JobStore) -> dict[int, Configuration]:
        """Configure newly inserted jobs together. Default: :meth:`configure_job` for each.
        Hooks read through ``store``; they must not change job state themselves."""
        return {job.id: self.configure_job(job, store) for job in jobs}

    def configure_job(self, job: Job, store: JobStore) -> Configuration:
        """Ready (the default), or not ready: the job waits in ``configured``."""
        return Configuration()

    def environment_for(self, job: Job) -> dict[str, str]:
        """Environment of the processing container."""
        return {
            **self.environment,
            "JOBLINE_JOB_ID": str(job.id),
            "JOBLINE_ATTEMPT": str(job.attempts),
            "JOBLINE_PRODUCT_ID": job.product_id,
            "JOBLINE_TILE_ID": job.tile_id or "",
        }

    def image_for(self, job: Job) -> str:
        """The container image of this job: ``config["image"]`` if the configuration pinned one
        (e.g. a processor version chosen in ``configure_job``), else the job type's ``image``."""
        return str(job.config.get("image") or self.image)

    def output_product_id(self, job: Job) -> str:
        """Name of the job's output product."""
        return f"{self.name}_{job.product_id}"

    def generated_product(self, exit_code: int, outputs: list[OutputFile]) -> bool:
        """Whether the processing produced a product. Default: exit 0 and any output file."""
        return exit_code == 0 and bool(outputs)

    def geometry(self, job: Job) -> dict[str, Any] | None:
        """GeoJSON geometry of the job's output, if known."""
        return None

    def publication_messages(
        self, job: Job, outputs: list[OutputFile], output_url: str
    ) -> list[PublicationMessage]:
        """One message per output product: a STAC-style item. Default: one product per job."""
        product_id = self.output_product_id(job)
        item = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": product_id,
            "geometry": self.geometry(job),
            "properties": {
                "product_type": self.output_products[0] if self.output_products else self.name,
                "tile_id": job.tile_id,
                "input_product_id": job.product_id,
                "input_publication_date": _iso(job.input_publication_date),
                "output_publication_date": _iso(job.output_publication_date),
                **self.timeliness_properties(),
            },
            "assets": {
                file.path: {
                    "href": f"{output_url.rstrip('/')}/{file.path}",
                    "file:size": file.size,
                    "file:checksum": f"sha256:{file.sha256}",
                }
                for file in outputs
            },
        }
        return [PublicationMessage(product_id=product_id, body=item)]

    def timeliness_properties(self) -> dict[str, str]:
        """The STAC product extension's timeliness fields of this job type's outputs."""
        properties = {}
        if self.timeliness_target is not None:
            properties["product:timeliness"] = iso_duration(self.timeliness_target)
        if self.timeliness_category is not None:
            properties["product:timeliness_category"] = self.timeliness_category
        return properties


def iso_duration(value: timedelta) -> str:
    """An ISO 8601 duration (``PT3H``, ``PT1H15M``, ``P1DT2H``) of a non-negative timedelta."""
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    time_part = "".join(
        f"{amount}{unit}"
        for amount, unit in ((hours, "H"), (minutes, "M"), (seconds, "S"))
        if amount
    )
    text = f"P{days}D" if days else "P"
    if time_part or not days:
        text += f"T{time_part or '0S'}"
    return text


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def load_job_type(reference: str, settings: Settings) -> JobType:
    """The registered job type ``reference`` names (an import path ``module:Class`` or a job
    type's name), instantiated. Only registered job types load (see :mod:`jobtypes.registry`);
    :class:`JobTypeError` refuses anything else without importing it."""
    from jobtypes.registry import resolve_job_type  # the registry imports this module

    return resolve_job_type(reference, settings)


def declaration_problems(cls: type[JobType]) -> list[str]:
    """What is wrong with a job type class's declarations (empty: nothing)."""
    problems = []
    if not cls.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", cls.name):
        problems.append("name must be a non-empty word of letters, digits, '_', '.', '-'")
    if not cls.command and not cls.local_command:
        problems.append("command (or local_command) must name the processing to run")
    if any(not isinstance(part, str) for part in [*cls.command, *(cls.local_command or [])]):
        problems.append("command parts must be strings")
    if cls.max_attempts < 1:
        problems.append("max_attempts must be at least 1")
    if cls.timeout <= 0:
        problems.append("timeout must be positive")
    if cls.worker_flavor not in ("extra_small", "small", "medium", "large", "extra_large"):
        problems.append(f"worker_flavor {cls.worker_flavor!r} is not a known flavor")
    if cls.timeliness_target is not None and cls.timeliness_target <= timedelta(0):
        problems.append("timeliness_target must be positive (or None)")
    if cls.launch_weight <= 0:
        problems.append("launch_weight must be positive")
    if cls.batch_size < 1:
        problems.append("batch_size must be at least 1")
    if cls.runner not in (None, "local", "docker"):
        problems.append(f"runner {cls.runner!r} must be 'local', 'docker' or None")
    return problems
