"""``jobline maintenance``: one maintenance pass (or one every N seconds), without Prefect.

Checking launched jobs against their flow runs needs the Prefect API, so it is asked for with
``--launches`` (the ``maintenance`` deployment always does it): a machine without a Prefect
server can still rescue, expire and collect.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from db.store import JobStore
from jobline.settings import Settings, get_settings
from tasks.maintenance import MaintenanceReport, run_maintenance

if TYPE_CHECKING:
    from tasks.launcher import LaunchCheck

console = Console()


def maintenance(
    every: Annotated[
        float | None,
        typer.Option(min=1, help="Run again every this many seconds, until interrupted."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print each pass's report as JSON (for scripts).")
    ] = False,
    launches: Annotated[
        bool,
        typer.Option(
            "--launches",
            help="Also compare launched jobs with their Prefect flow runs (needs PREFECT_API_URL).",
        ),
    ] = False,
) -> None:
    """Rescue jobs of lost workers and stuck jobs, expire old done jobs, collect finished jobs'
    metadata, remove orphaned containers; with --launches, first send back launched jobs whose
    flow run never reported back. Exit code 1 when a part of the pass failed."""
    settings = get_settings()
    store = JobStore.from_settings(settings, reconnect_seconds=settings.db_reconnect_seconds)
    while True:
        checked, failure = _check_launches(settings, store) if launches else (None, None)
        report = run_maintenance(settings, store, log=lambda _line: None)
        if failure:
            report.errors.insert(0, failure)
        _show(report, checked, json_output)
        if every is None:
            raise typer.Exit(1 if report.errors else 0)
        time.sleep(every)


def _check_launches(settings: Settings, store: JobStore) -> tuple[LaunchCheck | None, str | None]:
    """The launch check, or why it could not run (an unreachable Prefect API must not stop the
    rest of the pass). Imported here: the rest of the command needs no Prefect."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    from cli.prefect_check import check_server
    from tasks.launcher import check_launches

    api_url = get_current_settings().api.url
    if not api_url:
        # An embedded server knows none of the launcher's flow runs: every launched job would
        # look deleted in Prefect and be sent back.
        return None, "check launched jobs: --launches needs PREFECT_API_URL (the launcher's server)"
    try:
        check_server(api_url)
        with get_client(sync_client=True) as client:
            return check_launches(settings, store, client, log=lambda _line: None), None
    except Exception as error:  # noqa: BLE001 - reported as the pass's error, exit code 1
        return None, f"check launched jobs: {type(error).__name__}: {error}"


def _show(report: MaintenanceReport, checked: LaunchCheck | None, json_output: bool) -> None:
    if json_output:
        data = report.model_dump(mode="json")
        if checked is not None:
            data["launches"] = checked.model_dump(mode="json")
        typer.echo(json.dumps(data))
        return
    console.print(f"{report.at:%Y-%m-%d %H:%M:%S} UTC: {report.summary()}")
    if checked is not None:
        console.print(
            f"  launched jobs sent back: {_ids(checked.returned) or '-'}; cancelled with their "
            f"flow run: {_ids(checked.cancelled) or '-'}"
        )
    for status, job_ids in sorted(report.stuck.items()):
        console.print(f"  stuck in {status}: {_ids(job_ids)}")
    if report.rescued:
        console.print(f"  worker lost: {_ids(report.rescued)}")
    for error in report.errors:
        console.print(f"  [red]error:[/] {error}")


def _ids(job_ids: list[int], shown: int = 20) -> str:
    more = f" (+{len(job_ids) - shown} more)" if len(job_ids) > shown else ""
    return ", ".join(map(str, job_ids[:shown])) + more
