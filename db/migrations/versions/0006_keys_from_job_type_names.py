"""Job keys hash the job type's stable ``name`` instead of its import path.

Why: a job's key made identical submissions one job, but it hashed the job type's import path
(``module:Class``), while watermarks and output paths used its ``name``; moving a partner's
class to another module made every known product a new job, processed again. Keys are now
made from the name (``db.records.product_key``, ``config_key``); the import path stays in the
``job_type`` column.

How each stored job type's name is found: its class is imported from the stored import path and
its ``name`` attribute read (``db.rekey.job_type_name``). A job type that cannot be imported by
the process running the upgrade keeps its old keys and is recorded in ``meta`` as
``rekey:<import path>`` with the reason (logged here); its keys are rewritten the first time the
job type is used again, before any key is looked up, or by ``jobline db rekey``. What is rewritten
and what is kept (a config job whose config was replaced by its configuration, a duplicate of an
older job of the same name) is described in ``db.rekey``. No column changes; the schema is the
same.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from alembic import op

from db.rekey import (
    JobTypeNameUnknown,
    job_type_name,
    record_pending,
    rekey_job_types,
    restore_path_keys,
    stored_job_types,
)

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

logger = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    connection = op.get_bind()
    paths_by_name: dict[str, list[str]] = {}
    for import_path in stored_job_types(connection):
        try:
            paths_by_name.setdefault(job_type_name(import_path), []).append(import_path)
        except JobTypeNameUnknown as error:
            record_pending(connection, import_path, str(error), datetime.now(UTC))
            logger.warning(
                "job keys of %s left as they were until it can be loaded: %s", import_path, error
            )
    # Paths of one name (a class that moved) together, so the older of two jobs keeps the key.
    for name, import_paths in paths_by_name.items():
        logger.info("job keys: %s", rekey_job_types(connection, import_paths, name).describe())


def downgrade() -> None:
    restore_path_keys(op.get_bind())
