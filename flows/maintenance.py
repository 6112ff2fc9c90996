"""``maintenance``: rescue lost and stuck jobs, expire old ones, collect metadata, remove
orphaned containers. Deployed on an interval (prefect.yaml); ``jobline maintenance`` runs the
same pass without Prefect (without the check of launched jobs against their flow runs)."""

from __future__ import annotations

from prefect import flow

from tasks import lifecycle
from tasks.maintenance import MaintenanceReport


@flow(name="maintenance", log_prints=True)
def maintenance() -> MaintenanceReport:
    """Launched jobs checked against their flow runs, then one maintenance pass over the job
    store (see tasks/maintenance.py)."""
    lifecycle.check_launched()
    return lifecycle.maintain()
