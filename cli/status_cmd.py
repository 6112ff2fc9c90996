"""``jobline status``: how production is going, per job type (the overview of
:mod:`db.overview`); ``--json`` prints ``GET /stats``'s JSON, ``--watch`` refreshes it."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from db.overview import Overview, duration_text, production_overview
from db.store import JobStore
from jobline.settings import Settings, get_settings
from jobtypes.registry import timeliness_targets

console = Console()


def current_overview(store: JobStore, settings: Settings) -> Overview:
    targets, queues = timeliness_targets(settings)
    return production_overview(store, targets, queues)


def status(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the overview as JSON on stdout (for scripts).")
    ] = False,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            min=0.5,
            help="Refresh every this many seconds until Ctrl-C.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Per job type: jobs by phase and status, late and stuck jobs, throughput, timeliness."""
    settings = get_settings()
    store = JobStore.from_settings(settings)
    try:
        if json_output:
            typer.echo(current_overview(store, settings).model_dump_json(indent=2))
            return
        if watch is None:
            console.print(render(current_overview(store, settings)))
            return
        with Live(
            render(current_overview(store, settings)), console=console, auto_refresh=False
        ) as live:
            while True:
                time.sleep(watch)
                live.update(render(current_overview(store, settings)), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        store.engine.dispose()


def render(overview: Overview) -> Group:
    """The overview as rich tables: one row per job type, then the stuck jobs and pauses."""
    table = Table(title=f"production at {overview.generated_at:%Y-%m-%d %H:%M:%S} UTC")
    table.add_column("job type", overflow="fold")
    for header in ("queued", "running", "done", "failed", "late", "stuck"):
        table.add_column(header, justify="right")
    table.add_column("done\n1 h / 24 h", justify="right")
    table.add_column("latency 24 h\np50 / p95 / max", justify="right")
    table.add_column("target", justify="right")
    for t in overview.job_types:
        timeliness = t.timeliness_24h
        target = timeliness.target_seconds
        over = target is not None and (timeliness.p95 or 0) > target
        name = Text(t.job_type)
        if t.paused:
            name.append(" (paused)", style="yellow")
        failed = t.by_phase.get("failed", 0)
        table.add_row(
            name,
            str(t.by_phase.get("queued", 0)),
            str(t.by_phase.get("in-progress", 0)),
            Text(str(t.by_phase.get("complete", 0)), style="green"),
            Text(str(failed), style="red" if failed else ""),
            Text(str(t.late), style="bold red" if t.late else ""),
            Text(str(sum(s.jobs for s in t.stuck)), style="yellow" if t.stuck else ""),
            f"{t.done_last_hour} / {t.done_last_day}",
            Text(
                " / ".join(
                    duration_text(v) for v in (timeliness.p50, timeliness.p95, timeliness.max)
                ),
                style="red" if over else "",
            ),
            duration_text(target),
        )
    parts: list[object] = [table]
    for t in overview.job_types:
        if t.by_status:
            statuses = ", ".join(f"{status} {n}" for status, n in t.by_status.items())
            parts.append(Text(f"{t.job_type}: {statuses}", style="dim"))
    stuck = [(t.job_type, s) for t in overview.job_types for s in t.stuck]
    if stuck:
        parts.append(Text("stuck:", style="bold yellow"))
        for kind, s in stuck:
            parts.append(
                Text(
                    f"  {kind}: {s.jobs} {s.status.value} since {s.oldest_change:%Y-%m-%d %H:%M}"
                    f" (limit {duration_text(s.limit_seconds)}): {s.reason}"
                )
            )
    for pause in overview.pauses:
        parts.append(
            Text(f"paused {pause.kind} {pause.name}: {pause.reason or 'no reason given'}", "yellow")
        )
    if not overview.job_types:
        parts.append(Text("no jobs yet", style="dim"))
    return Group(*parts)  # type: ignore[arg-type]
