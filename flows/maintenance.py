"""``maintenance``: check launched jobs against their flow runs, rescue lost and stuck jobs,
expire old ones, collect metadata, remove orphaned containers, then publish the production
overview as the ``production-status`` markdown artifact (what ``jobline status`` shows, in the
Prefect UI). Deployed on an interval (prefect.yaml); ``jobline maintenance`` runs the same pass
without Prefect (without the check of launched jobs against their flow runs)."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks import lifecycle
from tasks.maintenance import MaintenanceReport

#: The artifact's key: Prefect keeps its versions, one per maintenance pass.
STATUS_ARTIFACT = "production-status"


@flow(name="maintenance", log_prints=True)
def maintenance() -> MaintenanceReport:
    """Launched jobs checked against their flow runs, one maintenance pass over the job store
    (see tasks/maintenance.py), and the production report."""
    lifecycle.check_launched()
    report = lifecycle.maintain()
    create_markdown_artifact(
        key=STATUS_ARTIFACT,
        markdown=lifecycle.production_status(),
        description="Production by job type: counts, late and stuck jobs, throughput, timeliness",
    )
    return report
