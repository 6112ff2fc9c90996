"""The one settings object: every value comes from a ``JOBLINE_*`` variable or its default.

No other module reads the environment: code receives a :class:`Settings` (usually from
:func:`get_settings`) and tests build their own with explicit values.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: A job type's import path, ``module:Class`` (a dotted module, one class name).
IMPORT_PATH = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)
DEFAULT_DATA_DIR = Path(user_data_dir("jobline", appauthor=False))
#: Maintenance's limits per status (seconds): a job longer than this in the status is stuck.
DEFAULT_STUCK_AFTER_SECONDS: dict[str, float] = {
    "initialized": 30 * 60.0,
    "configured": 7 * 86400.0,
    "queued": 2 * 3600.0,
    "processed": 10 * 60.0,
    "start_publication": 3600.0,
    "external_error": 10 * 60.0,
    "error_checked": 10 * 60.0,
}


#: The work pool of every flavor the settings' ``flavor_pools`` does not name.
DEFAULT_POOL = "jobline"


class FlavorPool(BaseModel):
    """Where the launcher sends one worker flavor's jobs: a Prefect work pool, optionally one
    of its work queues, and job variables for the pool's base job template (a docker or
    kubernetes pool's memory and CPU, for instance)."""

    model_config = ConfigDict(extra="forbid")

    pool: str = Field(min_length=1, max_length=100, description="The Prefect work pool.")
    queue: str | None = Field(None, min_length=1, max_length=100, description="Its work queue.")
    job_variables: dict[str, Any] = Field(
        default_factory=dict, description="Job variables of the flow runs sent to the pool."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBLINE_", extra="ignore")

    data_dir: Path = Field(
        DEFAULT_DATA_DIR,
        description="Where the embedded defaults live: SQLite file, demo storage, work dirs.",
    )
    database_url: str = Field(
        "",
        description=(
            "SQLAlchemy URL of the job store. Empty means an SQLite file in data_dir, so the main "
            "job runs with no server. postgresql:// URLs use the psycopg 3 driver."
        ),
    )
    db_schema: str = Field(
        "jobline",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema holding every jobline table (ignored on SQLite).",
    )
    work_dir: Path | None = Field(
        None, description="Parent of the per-job work dirs; default data_dir/work."
    )
    runner: Literal["auto", "local", "docker"] = Field(
        "auto",
        description="How containers run: docker, local (a subprocess), or auto (docker if an "
        "engine answers, else local). A job type may pin its own.",
    )
    keep_failed_workdirs: bool = Field(
        False, description="Keep a failed job's work dir for inspection instead of removing it."
    )
    publication_sink: str = Field(
        "",
        description="Where publication messages go: amqp://… or file://…/publications.jsonl. "
        "Empty means data_dir/publications.jsonl.",
    )
    amqp_exchange: str = Field(
        "jobline.publications",
        description="AMQP exchange publication messages go to (declared durable, type topic).",
    )
    amqp_routing_key: str = Field(
        "product.published", description="Routing key of every AMQP publication message."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint for s3:// storage (e.g. a local S3-compatible server)."
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token the REST API requires on every endpoint but /health."
    )
    prefect_ui_url: str | None = Field(
        None,
        description="The Prefect UI (e.g. http://127.0.0.1:4200): the console links each job "
        "to its flow run there.",
    )
    api_max_body_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest request body the REST API accepts (413 above)."
    )
    job_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Job types jobline may load besides the bundled demo and those installed "
        "packages declare (entry point group jobline.job_types): import paths 'module:Class', "
        'comma-separated or a JSON list, e.g. "my_products.fsc:LakeIce,my_products.ice:Ice".',
    )
    api_metadata_max_document_bytes: int = Field(
        64 * 1024,
        gt=0,
        description="Largest metadata document the REST API stores (its compact JSON, in bytes; "
        "413 above).",
    )
    api_metadata_max_job_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Most metadata bytes one job may hold, all its documents together, for a "
        "document written through the REST API (413 above).",
    )
    api_metadata_max_keys: int = Field(
        64,
        gt=0,
        description="Most metadata keys one job may hold for a new key written through the REST "
        "API (422 above).",
    )
    lease_seconds: float = Field(30.0, gt=0, description="How long a worker's lease lasts.")
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a lease is extended.")
    retry_base_seconds: float = Field(
        2.0, ge=0, description="First backoff of a transient failure; doubles per attempt."
    )
    retry_max_seconds: float = Field(600.0, ge=0, description="Longest backoff.")
    stuck_after_seconds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_STUCK_AFTER_SECONDS),
        description="How long a job may sit in a status before maintenance treats it as stuck, "
        f"by status ({', '.join(DEFAULT_STUCK_AFTER_SECONDS)}); given keys replace the "
        "defaults one by one. What maintenance does with each is in the README (reliability).",
    )
    metadata_retention_seconds: dict[str, float | None] = Field(
        default_factory=lambda: {"*": 7 * 86400.0},
        description="How long a finished job's metadata is kept after the job finished, by "
        'metadata key; "*" covers every key not named; null keeps it forever. '
        'Example: {"*": 604800, "run-container": null}.',
    )
    expire_deletes_outputs: bool = Field(
        False, description="Delete a job's output files when it expires (retention passed)."
    )
    remove_orphan_containers: bool = Field(
        True,
        description="Maintenance removes jobline containers whose job is not in progress "
        "(left by a lost worker), when a Docker engine answers.",
    )
    db_reconnect_seconds: float = Field(
        60.0,
        ge=0,
        description="How long a worker repeats a job store operation whose database connection "
        "was lost (server restart, terminated backend) before giving up; 0 never repeats.",
    )
    worker_flavors: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Overrides of the worker flavors' container limits, by flavor name: "
        '{"small": {"cpus": 1, "memory_mib": 2048}}. Empty keeps the defaults '
        "(tasks/runners/flavors.py).",
    )
    flavor_pools: dict[str, FlavorPool] = Field(
        default_factory=dict,
        description="The Prefect work pool (and optional work queue and job_variables) the "
        "launcher sends each worker flavor's jobs to, by flavor name: "
        '{"large": {"pool": "jobline-large", "job_variables": {"mem_limit": "8g"}}}. '
        f"A flavor not named runs on the pool {DEFAULT_POOL!r}.",
    )
    launch_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Overrides of job types' launch weights (what one running job counts "
        'against the caps), by job type name: {"fsc": 4}. Unnamed: the job type\'s '
        "launch_weight (default 1).",
    )
    launcher_max_running_weight: float = Field(
        64.0,
        gt=0,
        description="Cap on the weight of all jobs queued through post_processing: the launcher "
        "launches no job that would take the running weight above it.",
    )
    launcher_max_running_weight_by_type: dict[str, float] = Field(
        default_factory=dict,
        description='The same cap per job type, by job type name: {"fsc": 16}. Unnamed: only '
        "the overall cap applies.",
    )
    launcher_max_launches_per_pass: int = Field(
        100,
        gt=0,
        description="The most jobs one launcher pass launches (each flow run it creates takes "
        "a Prefect API call of a fraction of a second).",
    )
    launcher_max_flow_runs_per_pass: int = Field(
        10,
        gt=0,
        description="The most flow runs one launcher pass creates (a batch is one): creating one "
        "costs the Prefect server 50-120 ms, so a pass stays under 2 s however many jobs are "
        "ready; the launch-jobs flow runs passes back to back (launcher_window_seconds).",
    )
    launcher_window_seconds: float = Field(
        20.0,
        ge=0,
        description="How long one launch-jobs flow run keeps starting passes while they "
        "launch jobs (keep it below the deployment's 30 s interval); 0: one pass.",
    )
    launcher_escalation_seconds: dict[str, float] = Field(
        default_factory=lambda: {"600": 10.0, "3600": 20.0},
        description="Priority a ready job gains while it waits, by seconds in ready: "
        '{"600": 10, "3600": 20} adds 10 after ten minutes and 20 after an hour.',
    )
    launcher_start_limit_seconds: float = Field(
        900.0,
        gt=0,
        description="How long a launched job's flow run may stay unstarted (scheduled, pending) "
        "before maintenance cancels it and sends the job through the retry policy.",
    )
    image_pull_policy: Literal["if-not-present", "always", "never"] = Field(
        "if-not-present",
        description="When the docker runner pulls a job's image: only when it is not on the "
        "engine, before every run, or never (images are built or loaded beforehand).",
    )

    @field_validator("api_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: Any) -> Any:
        # An empty JOBLINE_API_TOKEN must not mean "the empty string is the token".
        secret = value.get_secret_value() if isinstance(value, SecretStr) else value
        if secret is None or (isinstance(secret, str) and not secret.strip()):
            return None
        return value

    @field_validator("job_types", mode="before")
    @classmethod
    def _split_job_types(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
        return value

    @field_validator("job_types")
    @classmethod
    def _import_paths(cls, value: list[str]) -> list[str]:
        bad = [path for path in value if not IMPORT_PATH.match(path)]
        if bad:
            raise ValueError(f"job_types: {bad} are not import paths of the form 'module:Class'")
        return list(dict.fromkeys(value))

    @field_validator("database_url")
    @classmethod
    def _normalize_driver(cls, value: str) -> str:
        # A bare postgresql:// URL would pick psycopg2, which jobline does not ship.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("stuck_after_seconds")
    @classmethod
    def _known_stuck_statuses(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DEFAULT_STUCK_AFTER_SECONDS))
        if unknown:
            raise ValueError(
                f"stuck_after_seconds: no stuck limit for {unknown}; "
                f"statuses with one are {sorted(DEFAULT_STUCK_AFTER_SECONDS)}"
            )
        bad = sorted(status for status, seconds in value.items() if seconds <= 0)
        if bad:
            raise ValueError(f"stuck_after_seconds: limits must be positive, not for {bad}")
        return {**DEFAULT_STUCK_AFTER_SECONDS, **value}

    @field_validator("metadata_retention_seconds")
    @classmethod
    def _non_negative_retention(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        bad = sorted(key for key, seconds in value.items() if seconds is not None and seconds < 0)
        if bad:
            raise ValueError(f"metadata_retention_seconds: negative retention for keys {bad}")
        return value

    @field_validator("launcher_escalation_seconds")
    @classmethod
    def _escalation_steps(cls, value: dict[str, float]) -> dict[str, float]:
        for waited in value:
            try:
                seconds = float(waited)
            except ValueError:
                raise ValueError(
                    f"launcher_escalation_seconds: {waited!r} is not a number of seconds"
                ) from None
            if seconds < 0:
                raise ValueError(f"launcher_escalation_seconds: {waited!r} is negative")
        return value

    def pool_for(self, flavor: str) -> FlavorPool:
        """The work pool (queue, job variables) of a worker flavor's jobs."""
        return self.flavor_pools.get(flavor) or FlavorPool(pool=DEFAULT_POOL)

    def escalation_steps(self) -> list[tuple[float, float]]:
        """``launcher_escalation_seconds`` as (seconds waited, priority added), shortest first."""
        steps = self.launcher_escalation_seconds.items()
        return sorted((float(waited), bonus) for waited, bonus in steps)

    def stuck_after(self, status: str) -> float:
        """Seconds a job may sit in ``status`` before maintenance treats it as stuck."""
        return self.stuck_after_seconds.get(status, DEFAULT_STUCK_AFTER_SECONDS[status])

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'jobline.db'}"

    @property
    def resolved_work_dir(self) -> Path:
        return self.work_dir or self.data_dir / "work"

    @property
    def resolved_publication_sink(self) -> str:
        return self.publication_sink or f"file://{self.data_dir / 'publications.jsonl'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
