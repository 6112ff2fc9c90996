"""``jobline maintenance``: one maintenance pass (or one every N seconds), without Prefect."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console

from db.store import JobStore
from jobline.settings import get_settings
from tasks.maintenance import MaintenanceReport, run_maintenance

console = Console()


def maintenance(
    every: Annotated[
        float | None,
        typer.Option(min=1, help="Run again every this many seconds, until interrupted."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print each pass's report as JSON (for scripts).")
    ] = False,
) -> None:
    """Rescue jobs of lost workers and stuck jobs, expire old done jobs, collect finished jobs'
    metadata, remove orphaned containers. Exit code 1 when a part of the pass failed."""
    settings = get_settings()
    store = JobStore.from_settings(settings, reconnect_seconds=settings.db_reconnect_seconds)
    while True:
        report = run_maintenance(settings, store, log=lambda _line: None)
        _show(report, json_output)
        if every is None:
            raise typer.Exit(1 if report.errors else 0)
        time.sleep(every)


def _show(report: MaintenanceReport, json_output: bool) -> None:
    if json_output:
        typer.echo(report.model_dump_json())
        return
    console.print(f"{report.at:%Y-%m-%d %H:%M:%S} UTC: {report.summary()}")
    for status, job_ids in sorted(report.stuck.items()):
        console.print(f"  stuck in {status}: {_ids(job_ids)}")
    if report.rescued:
        console.print(f"  worker lost: {_ids(report.rescued)}")
    for error in report.errors:
        console.print(f"  [red]error:[/] {error}")


def _ids(job_ids: list[int], shown: int = 20) -> str:
    more = f" (+{len(job_ids) - shown} more)" if len(job_ids) > shown else ""
    return ", ".join(map(str, job_ids[:shown])) + more
