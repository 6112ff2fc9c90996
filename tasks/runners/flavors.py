"""Worker flavors: the CPU and memory a job type's container gets, by name.

A job type declares ``worker_flavor``; the docker runner turns it into container limits with
:func:`resolve_flavor`. The defaults below can be overridden per flavor in the settings
(``worker_flavors``, e.g. ``JOBLINE_WORKER_FLAVORS='{"small": {"memory_mib": 2048}}'``).
CPUs are capped at the cores of the machine the engine runs on, which Docker requires.
"""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobline.exceptions import ConfigurationError
from jobline.settings import Settings
from jobtypes.base import WorkerFlavor

FLAVOR_NAMES: tuple[str, ...] = get_args(WorkerFlavor)


class Flavor(BaseModel):
    """The resources of one worker flavor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(gt=0, description="CPUs the container may use (fractions allowed)")
    memory_mib: float = Field(gt=0, description="Memory limit in MiB; swap is not added")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_mib * 1024 * 1024)


DEFAULT_FLAVORS: dict[str, Flavor] = {
    "extra_small": Flavor(cpus=0.5, memory_mib=256),
    "small": Flavor(cpus=1, memory_mib=1024),
    "medium": Flavor(cpus=2, memory_mib=4096),
    "large": Flavor(cpus=4, memory_mib=8192),
    "extra_large": Flavor(cpus=8, memory_mib=16384),
}


def flavor_table(settings: Settings) -> dict[str, Flavor]:
    """The defaults with the settings' overrides applied; a bad override raises
    :class:`ConfigurationError` naming it."""
    table = dict(DEFAULT_FLAVORS)
    for name, override in settings.worker_flavors.items():
        if name not in table:
            raise ConfigurationError(
                f"worker_flavors: unknown flavor {name!r}; known flavors are "
                f"{', '.join(FLAVOR_NAMES)}"
            )
        try:
            table[name] = Flavor.model_validate({**table[name].model_dump(), **override})
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}"
                for issue in error.errors()
            )
            raise ConfigurationError(f"worker_flavors.{name}: {problems}") from None
    return table


def resolve_flavor(name: str, table: dict[str, Flavor], max_cpus: float | None) -> Flavor:
    """The flavor called ``name``, its CPUs capped at ``max_cpus`` (the engine's cores)."""
    try:
        flavor = table[name]
    except KeyError:
        raise ConfigurationError(
            f"worker_flavor: unknown flavor {name!r}; known flavors are {', '.join(table)}"
        ) from None
    if max_cpus is not None and flavor.cpus > max_cpus:
        return flavor.model_copy(update={"cpus": float(max_cpus)})
    return flavor
