"""Which runner executes a job: the job type's pin, else the run's choice, else the settings."""

from __future__ import annotations

from functools import lru_cache

from jobline.exceptions import ConfigurationError
from jobline.settings import Settings
from jobtypes.base import JobType
from tasks.runners.base import Runner
from tasks.runners.local import LocalRunner


def resolve_runner_name(job_type: JobType | None, settings: Settings, override: str | None) -> str:
    """``local`` or ``docker``; ``auto`` becomes docker when an engine answers, else local."""
    choice = (job_type.runner if job_type else None) or override or settings.runner
    if choice == "auto":
        return "docker" if _engine_answers() else "local"
    if choice not in ("local", "docker"):
        raise ConfigurationError(f"runner: {choice!r} is not one of auto, local, docker")
    return choice


@lru_cache(maxsize=1)
def _engine_answers() -> bool:
    from tasks.runners.docker import docker_available

    return docker_available()


def runner_for(job_type: JobType, settings: Settings, override: str | None = None) -> Runner:
    name = resolve_runner_name(job_type, settings, override)
    if name == "docker":
        from tasks.runners.docker import DockerRunner

        return DockerRunner(settings)
    return LocalRunner()
