"""The job types jobline may load: an allow-list, and the only way a job type is resolved.

Registered are

* the bundled demo, ``jobtypes.demo:SnowCover``;
* the import paths (``module:Class``) listed in ``JOBLINE_JOB_TYPES``;
* those installed packages declare in the entry point group ``jobline.job_types``
  (``[project.entry-points."jobline.job_types"] lake_ice = "my_products.fsc:LakeIce"``).

A reference (from the API, a deployment parameter, the CLI, or a job's row) is accepted when it is

* a registered import path, or the import path where a registered class is defined
  (``cls.__module__:cls.__qualname__``, what jobs store as their ``job_type``); or
* the ``name`` of a registered job type (``snow_cover``), or the name of its entry point, when
  exactly one registered job type has it (else it is refused as ambiguous, naming the paths).

Anything else is refused with one message, whatever it names, and nothing is imported for it: a
client cannot make the server run a module's import-time code, nor learn whether a module is
installed. Only registered modules are ever imported, each once per process; looking up a name or
a defining path loads every registered job type (a registered one that fails to load is logged and
skipped there, and named in the error when it is asked for directly).
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from importlib.metadata import entry_points

from jobline.exceptions import JobTypeError
from jobline.settings import IMPORT_PATH, Settings
from jobtypes.base import JobType, declaration_problems

log = logging.getLogger(__name__)

#: The job type that ships with jobline, always registered.
BUNDLED = ("jobtypes.demo:SnowCover",)
#: The entry point group installed packages declare their job types in.
ENTRY_POINT_GROUP = "jobline.job_types"
#: A job type's ``name``: letters, digits, '_', '.', '-'.
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
#: Either of the two, for schemas.
REFERENCE_PATTERN = f"({IMPORT_PATH.pattern})|({NAME.pattern})"


@dataclass(frozen=True, slots=True)
class Registration:
    """One allow-listed job type: its import path and where it was registered."""

    path: str
    source: str
    #: The entry point's name, for job types an installed package declares.
    label: str | None = None


def not_registered(reference: str, registry: JobTypeRegistry) -> JobTypeError:
    """The one refusal for anything that is not registered; it names the reference as given
    (shortened) and the registered job types, never what was or was not found on the system."""
    shown = reference if len(reference) <= 80 else reference[:77] + "..."
    return JobTypeError(
        f"job_type: {shown!r} is not a registered job type; registered are "
        f"{', '.join(registry.paths())} (register others with JOBLINE_JOB_TYPES or the "
        f"{ENTRY_POINT_GROUP!r} entry point group)"
    )


class JobTypeRegistry:
    """The allow-list of one configuration, and the classes loaded from it."""

    def __init__(self, registrations: Iterable[Registration]) -> None:
        self._by_path: dict[str, Registration] = {}
        for registration in registrations:
            self._by_path.setdefault(registration.path, registration)
        self._classes: dict[str, type[JobType]] = {}
        self._failures: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> JobTypeRegistry:
        return cls.of(settings.job_types)

    @classmethod
    def of(cls, listed: Iterable[str]) -> JobTypeRegistry:
        """The bundled job types, ``listed`` (from ``JOBLINE_JOB_TYPES``) and the packages'."""
        found = [Registration(path, "bundled") for path in BUNDLED]
        found += [Registration(path, "JOBLINE_JOB_TYPES") for path in listed]
        found += declared_by_packages()
        return cls(found)

    def paths(self) -> list[str]:
        """The registered import paths, in registration order."""
        return list(self._by_path)

    def registrations(self) -> list[Registration]:
        return list(self._by_path.values())

    def job_type_class(self, reference: str) -> type[JobType]:
        """The registered class ``reference`` names; :class:`JobTypeError` otherwise."""
        if not isinstance(reference, str) or not (
            IMPORT_PATH.match(reference) or NAME.match(reference)
        ):
            raise not_registered(str(reference), self)
        registration = self._by_path.get(reference)
        if registration is not None:
            return self._load(registration)
        matches = self._matching(reference)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            paths = ", ".join(sorted(match.import_path() for match in matches))
            raise JobTypeError(
                f"job_type: the name {reference!r} is ambiguous, several registered job types "
                f"have it; use an import path: {paths}"
            )
        raise not_registered(reference, self)

    def resolve(self, reference: str, settings: Settings) -> JobType:
        """The registered job type ``reference`` names, instantiated with ``settings``."""
        return self.job_type_class(reference)(settings)

    def canonical(self, reference: str) -> str | None:
        """The import path jobs of ``reference`` are stored under, or None if not registered."""
        try:
            return self.job_type_class(reference).import_path()
        except JobTypeError:
            return None

    def accepted_references(self) -> list[str]:
        """Every reference :meth:`job_type_class` accepts (loads the registered job types):
        registered and defining import paths, and unambiguous names."""
        accepted: set[str] = set()
        names: dict[str, set[str]] = {}
        for registration in self._by_path.values():
            try:
                cls = self._load(registration)
            except JobTypeError:
                continue
            accepted.update((registration.path, cls.import_path()))
            for name in {cls.name, registration.label} - {None}:
                names.setdefault(name, set()).add(cls.import_path())  # type: ignore[arg-type]
        accepted.update(name for name, paths in names.items() if len(paths) == 1)
        return sorted(ref for ref in accepted if IMPORT_PATH.match(ref) or NAME.match(ref))

    def _matching(self, reference: str) -> list[type[JobType]]:
        """Registered classes whose defining path, name or entry point name is ``reference``."""
        found: dict[str, type[JobType]] = {}
        for registration in self._by_path.values():
            try:
                cls = self._load(registration)
            except JobTypeError:
                continue  # logged by _load; refused when asked for by its own path
            if reference in (cls.import_path(), cls.name, registration.label):
                found[cls.import_path()] = cls
        return list(found.values())

    def _load(self, registration: Registration) -> type[JobType]:
        with self._lock:
            cls = self._classes.get(registration.path)
            failure = self._failures.get(registration.path)
            if cls is None and failure is None:
                try:
                    cls = _import_class(registration.path)
                    self._classes[registration.path] = cls
                except JobTypeError as error:
                    failure = str(error)
                    self._failures[registration.path] = failure
                    log.error("registered job type %s (%s): %s", *_context(registration), error)
        if cls is not None:
            return cls
        raise JobTypeError(
            f"job_type: the registered job type {registration.path} cannot be loaded: {failure}"
        )


def _context(registration: Registration) -> tuple[str, str]:
    return registration.path, registration.source


def declared_by_packages() -> list[Registration]:
    """The job types installed packages declare in :data:`ENTRY_POINT_GROUP`."""
    found: list[Registration] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        value = point.value.split("[", 1)[0].strip()  # "module:Class [extra]"
        distribution = point.dist.name if point.dist is not None else "an installed package"
        if not IMPORT_PATH.match(value):
            log.warning(
                "entry point %r of %s in %s is not 'module:Class': ignored",
                point.name,
                distribution,
                ENTRY_POINT_GROUP,
            )
            continue
        found.append(Registration(value, f"entry point of {distribution}", label=point.name))
    return found


def _import_class(path: str) -> type[JobType]:
    """Import a registered ``module:Class`` and check it is a well-formed job type."""
    module_name, class_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any failure of a registered module is reported
        raise JobTypeError(
            f"importing {module_name} failed: {type(error).__name__}: {error}"
        ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, JobType)):
        raise JobTypeError(f"{path} is not a subclass of jobtypes.base.JobType")
    problems = declaration_problems(cls)
    if problems:
        raise JobTypeError(f"{path} is malformed: {'; '.join(problems)}")
    return cls


@lru_cache(maxsize=16)
def _registry(job_types: tuple[str, ...], search_path: tuple[str, ...]) -> JobTypeRegistry:
    return JobTypeRegistry.of(job_types)


def registry_for(settings: Settings) -> JobTypeRegistry:
    """The registry of the settings' allow-list (one per allow-list and ``sys.path``, so a
    package installed into the path later is found by the next look-up)."""
    return _registry(tuple(settings.job_types), tuple(sys.path))


def resolve_job_type(reference: str, settings: Settings) -> JobType:
    """The registered job type ``reference`` names (see the module doc), instantiated."""
    return registry_for(settings).resolve(reference, settings)


def timeliness_targets(
    settings: Settings,
) -> tuple[dict[str, timedelta | None], dict[str, str]]:
    """The timeliness target and the queue of each registered job type that loads, by import
    path (for the production overview; a job type that does not load has neither)."""
    targets: dict[str, timedelta | None] = {}
    queues: dict[str, str] = {}
    registry = registry_for(settings)
    for path in registry.paths():
        try:
            cls = registry.job_type_class(path)
        except JobTypeError:
            continue
        targets[cls.import_path()] = cls.timeliness_target
        queues[cls.import_path()] = cls.queue
    return targets, queues
