"""``jobline demo`` (the main job) and ``jobline run``: a pipeline run from the terminal."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from db.migrate import upgrade
from db.records import JobFilter
from db.statuses import TERMINAL, Status
from db.store import JobStore
from jobline.exceptions import JoblineError
from jobline.settings import Settings, get_settings
from jobtypes.base import load_job_type

console = Console()
RunnerOption = Annotated[
    str | None,
    typer.Option(help="auto (docker if an engine answers, else local), local or docker."),
]


def use_embedded_prefect_defaults() -> bool:
    """Without PREFECT_API_URL, Prefect starts a temporary local server for the run. Its first
    start took about 30 s on two cores, past Prefect's default 20 s limit: give it longer, and
    keep it from phoning home. Returns whether the embedded server will be used."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    return not os.environ.get("PREFECT_API_URL")


def demo(
    products: Annotated[int, typer.Option(min=1, max=500, help="Sample products to make.")] = 8,
    runner: RunnerOption = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 4,
) -> None:
    """The main job: make sample Sentinel-2-style products and run the snow cover pipeline."""
    from jobtypes.demo import SnowCover, write_sample_products

    settings = get_settings()
    upgrade(settings)
    job_type = SnowCover(settings)
    input_dir = Path(job_type.input_url.removeprefix("file://"))
    write_sample_products(input_dir, count=products)
    console.print(f"input products: {products} in {input_dir}")
    chosen = _announce_runner(job_type, settings, runner)
    if chosen == "docker":
        chosen = _demo_image_or_local(asked=bool(runner or settings.runner != "auto"))
    _run(SnowCover.import_path(), settings, None, None, 10_000, concurrency, chosen)


def _demo_image_or_local(asked: bool) -> str:
    """Build the demo image locally (no registry is needed); when that is impossible and docker
    was only chosen automatically, fall back to the local runner and say why."""
    from tasks.runners.images import ensure_demo_image

    try:
        ensure_demo_image()
    except JoblineError as error:
        if asked:
            raise
        console.print(f"[yellow]cannot build the demo image ({error}); using the local runner[/]")
        return "local"
    return "docker"


def run(
    job_type: Annotated[str, typer.Argument(help="Import path, e.g. jobtypes.demo:SnowCover")],
    since: Annotated[datetime | None, typer.Option(help="Search from (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Search until (UTC).")] = None,
    max_jobs: Annotated[int, typer.Option(min=1)] = 1000,
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 4,
    runner: RunnerOption = None,
) -> None:
    """Run the pipeline for any job type: discover, insert, configure, process, summarize."""
    settings = get_settings()
    upgrade(settings)
    kind = load_job_type(job_type, settings)
    chosen = _announce_runner(kind, settings, runner)
    _run(job_type, settings, _utc(since), _utc(until), max_jobs, concurrency, chosen)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _announce_runner(job_type: object, settings: Settings, runner: str | None) -> str:
    from tasks.runners.select import resolve_runner_name

    chosen = resolve_runner_name(job_type, settings, runner)  # type: ignore[arg-type]
    why = "as asked" if runner or settings.runner != "auto" else "auto"
    console.print(f"runner: [bold]{chosen}[/] ({why})")
    return chosen


def _run(
    job_type: str,
    settings: Settings,
    since: datetime | None,
    until: datetime | None,
    max_jobs: int,
    concurrency: int,
    runner: str,
) -> None:
    if use_embedded_prefect_defaults():
        console.print(
            "Prefect: no PREFECT_API_URL, starting Prefect's embedded server "
            "(its first start can take a minute)…"
        )
    from flows.pipeline import run_pipeline

    store = JobStore.from_settings(settings)
    started = store.clock()
    with _ProgressWatcher(store, job_type, started):
        summary = run_pipeline(
            job_type=job_type,
            since=since,
            until=until,
            max_jobs=max_jobs,
            concurrency=concurrency,
            runner=runner,  # type: ignore[arg-type]
        )
    console.print(
        f"discovered {summary.discovered}, inserted {summary.inserted}, "
        f"skipped {summary.skipped} known, processed {summary.jobs} jobs "
        f"({summary.attempts} attempts)"
    )
    console.print(jobs_table(store, job_type))


class _ProgressWatcher:
    """A rich progress bar fed by the store while the flow runs in this thread."""

    def __init__(self, store: JobStore, job_type: str, since: datetime) -> None:
        self.store, self.job_type, self.since = store, job_type, since
        self.stop = threading.Event()
        self.progress = Progress(
            TextColumn("jobs finished"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    def __enter__(self) -> _ProgressWatcher:
        self.progress.start()
        self.task = self.progress.add_task("jobs", total=None)
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            counts = self.store.count_by_type_status(JobFilter(job_type=self.job_type))
            total = sum(counts.values())
            finished = sum(n for (_, status), n in counts.items() if Status(status) in TERMINAL)
            self.progress.update(self.task, total=total or None, completed=finished)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.progress.stop()


def jobs_table(store: JobStore, job_type: str, limit: int = 50) -> Table:
    """The job type's newest jobs: status, attempts, duration and outputs."""
    table = Table(title=f"jobs of {job_type}")
    for column in ("id", "product", "tile", "status", "attempts", "duration", "outputs"):
        table.add_column(column)
    page = store.list_jobs(JobFilter(job_type=job_type), limit=10_000)
    for job in page.jobs[-limit:]:
        duration = (
            f"{(job.finished_at - job.claimed_at).total_seconds():.1f} s"
            if job.finished_at and job.claimed_at
            else "-"
        )
        color = {"done": "green", "cancelled": "yellow"}.get(job.status, "red")
        if Status(job.status) not in TERMINAL:
            color = "cyan"
        table.add_row(
            str(job.id),
            job.product_id,
            job.tile_id or "",
            f"[{color}]{job.status}[/]",
            f"{job.attempts}/{job.max_attempts}",
            duration,
            ", ".join(Path(f["path"]).name for f in job.output_files) or "-",
        )
    return table
