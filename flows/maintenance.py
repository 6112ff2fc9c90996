"""``maintenance``: rescue lost and stuck jobs, expire old ones, collect metadata, remove
orphaned containers, then publish the production overview as the ``production-status``
markdown artifact (what ``jobline status`` shows, in the Prefect UI). Deployed on an interval
(prefect.yaml); ``jobline maintenance`` runs the same pass without Prefect."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks import lifecycle
from tasks.maintenance import MaintenanceReport

#: The artifact's key: Prefect keeps its versions, one per maintenance pass.
STATUS_ARTIFACT = "production-status"


@flow(name="maintenance", log_prints=True)
def maintenance() -> MaintenanceReport:
    """One maintenance pass over the job store (see tasks/maintenance.py), and the report."""
    report = lifecycle.maintain()
    create_markdown_artifact(
        key=STATUS_ARTIFACT,
        markdown=lifecycle.production_status(),
        description="Production by job type: counts, late and stuck jobs, throughput, timeliness",
    )
    return report
