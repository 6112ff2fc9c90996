"""Job keys made from the job type's stable ``name``: rewriting the keys of stored jobs.

Until migration 0006 a job's key hashed the job type's import path (``module:Class``), so moving
a class to another module made every known product look new. Keys now hash the job type's
``name`` (:func:`db.records.product_key`, :func:`db.records.config_key`); the import path stays
in the ``job_type`` column, which deployments, the API and the claim queries name.

Rewriting needs each stored job type's name, which only its class knows:

* :func:`job_type_name` imports ``module:Class`` (the same checks as
  ``jobtypes.base.load_job_type``, without importing ``jobtypes``: ``db`` imports nothing above
  it) and reads the class attribute ``name``.
* :func:`rekey_job_type` recomputes the key of each job of one import path from its stored
  values: a product job's from (name, product id), a config job's from (name, canonical config).
  A job is recognised by its old key: it must equal the path-based key of its product id, or of
  its stored config. A config job whose config the job type's configuration replaced since
  (so its submitted config is gone) is kept as it is, and so is any job whose new key another
  job holds already (a duplicate made when the class moved before keys were names: the oldest
  job keeps the key). Counts of what was kept are returned, and logged by the callers.
* A job type that cannot be imported when the migration runs (its module is not on the path of
  the process that upgrades) keeps its old keys; the migration records it in ``meta`` under
  ``rekey:<import path>`` with the reason. The first time that job type is used again
  (discovery, ``POST /jobs``), :func:`finish_pending_rekey` rewrites its keys before any key is
  looked up; ``jobline db rekey IMPORT_PATH --name NAME`` does it by hand, e.g. for a path that
  will never load again because its class moved. ``jobline db status`` lists what is pending.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from db.models import Job, Meta
from db.records import content_key

logger = logging.getLogger(__name__)

#: ``meta`` keys of job types whose jobs still carry keys made from their import path.
PENDING_PREFIX = "rekey:"
#: Jobs read and rewritten per statement.
BATCH = 5_000

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class JobTypeNameUnknown(LookupError):
    """The name of a stored job type cannot be found; the message says why."""


@dataclass
class RekeyReport:
    """What :func:`rekey_job_type` did with the jobs of one import path."""

    import_path: str
    name: str
    rekeyed: int = 0
    #: Config jobs whose stored config no longer gives their key (and unrecognised keys).
    kept_unrecognised: int = 0
    #: Jobs whose new key another job holds already: the oldest job keeps it.
    kept_duplicate: int = 0

    def describe(self) -> str:
        return (
            f"{self.import_path} (name {self.name!r}): {self.rekeyed} keys rewritten, "
            f"{self.kept_unrecognised} kept (config replaced since submission), "
            f"{self.kept_duplicate} kept (duplicate of an older job)"
        )


def job_type_name(import_path: str) -> str:
    """The ``name`` of the job type class at ``module:Class``; :class:`JobTypeNameUnknown`
    says why when it cannot be imported or is not a job type with a valid name."""
    if not _IMPORT_PATH.match(import_path):
        raise JobTypeNameUnknown(f"{import_path!r} is not an import path 'module:Class'")
    module_name, class_name = import_path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any failure to import is reported, not raised
        raise JobTypeNameUnknown(
            f"cannot import {module_name!r}: {type(error).__name__}: {error}"
        ) from None
    cls = getattr(module, class_name, None)
    is_job_type = isinstance(cls, type) and any(
        base.__module__ == "jobtypes.base" and base.__name__ == "JobType" for base in cls.__mro__
    )
    if not is_job_type:
        raise JobTypeNameUnknown(f"{import_path} is not a jobtypes.base.JobType subclass")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not _NAME.match(name):
        raise JobTypeNameUnknown(f"{import_path} has no valid name ({name!r})")
    return name


def stored_job_types(connection: Connection) -> list[str]:
    """The distinct job types (import paths) of the stored jobs."""
    jobs = Job.__table__
    return list(connection.scalars(select(jobs.c.job_type).distinct().order_by(jobs.c.job_type)))


def rekey_job_type(connection: Connection, import_path: str, name: str) -> RekeyReport:
    """Rewrite the keys of the jobs of ``import_path`` from its ``name`` (see the module)."""
    return rekey_job_types(connection, [import_path], name)


def rekey_job_types(connection: Connection, import_paths: Sequence[str], name: str) -> RekeyReport:
    """Rewrite the keys of the jobs of every one of ``import_paths`` (job types of one
    ``name``) in id order, so that of two jobs of one product the older keeps the key."""
    if not _NAME.match(name):
        raise ValueError(f"name: {name!r} is not a word of letters, digits, '_', '.', '-'")
    report = RekeyReport(", ".join(import_paths), name)
    jobs = Job.__table__
    after = 0
    while True:
        rows = connection.execute(
            select(jobs.c.id, jobs.c.job_type, jobs.c.job_key, jobs.c.product_id, jobs.c.config)
            .where(jobs.c.job_type.in_(list(import_paths)), jobs.c.id > after)
            .order_by(jobs.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return report
        after = rows[-1].id
        changes = _new_keys(rows, name, report)
        taken = _existing_keys(connection, [key for _, key in changes])
        changes = [(job_id, key) for job_id, key in changes if key not in taken]
        report.kept_duplicate += len(taken)
        _write_keys(connection, changes)
        report.rekeyed += len(changes)


def _new_keys(rows: list[Any], name: str, report: RekeyReport) -> list[tuple[int, bytes]]:
    """(job id, new key) of the recognised jobs of one batch; the first of a key wins."""
    changes: dict[bytes, int] = {}
    for row in rows:
        old = bytes(row.job_key)
        if old == content_key("product", row.job_type, row.product_id):
            new = content_key("product", name, row.product_id)
        elif old == content_key("config", row.job_type, _canonical(row.config)):
            new = content_key("config", name, _canonical(row.config))
        else:
            report.kept_unrecognised += 1
            continue
        if new in changes:
            report.kept_duplicate += 1
            continue
        changes[new] = row.id
    return [(job_id, key) for key, job_id in changes.items()]


def _canonical(config: Any) -> str:
    # Exactly db.records.config_key's canonical JSON.
    return json.dumps(config or {}, sort_keys=True, separators=(",", ":"), default=str)


def _existing_keys(connection: Connection, keys: list[bytes]) -> set[bytes]:
    if not keys:
        return set()
    jobs = Job.__table__
    found = connection.scalars(select(jobs.c.job_key).where(jobs.c.job_key.in_(keys)))
    return {bytes(key) for key in found}


def _write_keys(connection: Connection, changes: list[tuple[int, bytes]]) -> None:
    """One UPDATE per batch. The status guard's triggers ignore a change that leaves the status
    and ``status_seq`` alone, so no history is written."""
    if not changes:
        return
    if connection.dialect.name == "postgresql":
        connection.execute(
            text(
                "UPDATE jobs SET job_key = v.new_key FROM unnest("
                "CAST(:ids AS bigint[]), CAST(:keys AS bytea[])) AS v(id, new_key) "
                "WHERE jobs.id = v.id"
            ),
            {"ids": [i for i, _ in changes], "keys": [k for _, k in changes]},
        )
        return
    jobs = Job.__table__
    statement = (
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"))
        .values(job_key=bindparam("new_key"))
        .execution_options(synchronize_session=False)
    )
    connection.execute(statement, [{"job_id": i, "new_key": k} for i, k in changes])


# ------------------------------------------------------------------ job types left pending


def pending_rekeys(connection: Connection) -> dict[str, str]:
    """Import path -> why its keys could not be rewritten, for every job type left pending."""
    meta = Meta.__table__
    rows = connection.execute(
        select(meta.c.key, meta.c.value).where(meta.c.key.startswith(PENDING_PREFIX))
    )
    return {key.removeprefix(PENDING_PREFIX): value for key, value in rows}


def record_pending(connection: Connection, import_path: str, reason: str, now: datetime) -> None:
    module = postgresql if connection.dialect.name == "postgresql" else sqlite
    key = (PENDING_PREFIX + import_path)[:200]
    statement = module.insert(Meta.__table__).values(key=key, value=reason, updated_at=now)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": reason, "updated_at": now}
        )
    )


def finish_pending_rekey(connection: Connection, import_path: str, name: str) -> RekeyReport | None:
    """Rewrite the keys of ``import_path`` if they were left pending; None when nothing was.

    On PostgreSQL the pending row is locked first, so concurrent callers rewrite once."""
    meta = Meta.__table__
    key = (PENDING_PREFIX + import_path)[:200]
    query = select(meta.c.key).where(meta.c.key == key)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    if connection.scalar(query) is None:
        return None
    report = rekey_job_type(connection, import_path, name)
    connection.execute(delete(meta).where(meta.c.key == key))
    logger.warning("job keys rewritten from the job type's name: %s", report.describe())
    return report


# ------------------------------------------------------------------------------ downgrade

_CONFIG_PRODUCT = re.compile(r"^config:([0-9a-f]{32})$")


def restore_path_keys(connection: Connection) -> int:
    """Give every job its key made from the import path again (migration 0006's downgrade).

    A product job's key is recomputed from (import path, product id); a config job's is the one
    its product id ``config:<key>`` recorded when it was submitted. Returns the jobs changed."""
    jobs = Job.__table__
    after, changed = 0, 0
    while True:
        rows = connection.execute(
            select(jobs.c.id, jobs.c.job_key, jobs.c.job_type, jobs.c.product_id)
            .where(jobs.c.id > after)
            .order_by(jobs.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            connection.execute(delete(Meta.__table__).where(Meta.key.startswith(PENDING_PREFIX)))
            return changed
        after = rows[-1].id
        changes = []
        for row in rows:
            submitted = _CONFIG_PRODUCT.match(row.product_id)
            old = (
                bytes.fromhex(submitted[1])
                if submitted
                else content_key("product", row.job_type, row.product_id)
            )
            if old != bytes(row.job_key):
                changes.append((row.id, old))
        _write_keys(connection, changes)
        changed += len(changes)
