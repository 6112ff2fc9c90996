"""``jobline demo`` (the main job) and ``jobline run``: a pipeline run from the terminal.

Both create or migrate the job store's schema first, print the run's summary and a table of its
jobs (``--json``: the summary and the run's jobs as JSON on stdout, everything else on stderr),
and exit with a code scripts can trust:

* 0: every job of the run ended done (or there was nothing to do);
* 1: at least one job of the run ended failed (``internal_error``) or ``cancelled``;
* 2: usage error (a bad option, an unknown job type);
* 3: no job failed, but some were not finished when the run ended (a retry not yet due, a
  publication the broker did not take): like ``jobline jobs wait`` timing out.

Jobs the discovery inserted as ``cancelled`` (inputs older than ``max_input_age``) were never
processed and do not count: they are the job type's policy, not a failure.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer
from pydantic import TypeAdapter
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.schemas import JobOut
from cli.prefect_check import PrefectTarget, prepare_prefect
from db.migrate import upgrade
from db.records import JobFilter
from db.statuses import TERMINAL, Status
from db.store import JobStore
from jobline.exceptions import JoblineError, PublicationError
from jobline.settings import Settings, get_settings
from jobtypes.base import load_job_type

if TYPE_CHECKING:
    from flows.common import PipelineSummary

console = Console()
errors = Console(stderr=True)
#: A job of the run failed or was cancelled; a job of the run was not finished when it ended.
EXIT_FAILED, EXIT_UNFINISHED = 1, 3
RunnerOption = Annotated[
    str | None,
    typer.Option(help="auto (docker if an engine answers, else local), local or docker."),
]
ConcurrencyOption = Annotated[
    int, typer.Option(min=1, max=64, help="Jobs processed at the same time.")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the summary and the run's jobs as JSON on stdout.")
]


def demo(
    products: Annotated[int, typer.Option(min=1, max=500, help="Sample products to make.")] = 8,
    runner: RunnerOption = None,
    concurrency: ConcurrencyOption = 4,
    inputs_only: Annotated[
        bool,
        typer.Option(
            "--inputs-only",
            help="Only write the sample products, for a deployment (snow-cover) to pick up.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The main job: make sample Sentinel-2-style products and run the snow cover pipeline."""
    from jobtypes.demo import SnowCover, write_sample_products

    out = _output(as_json)
    settings = get_settings()
    job_type = SnowCover(settings)
    input_dir = Path(job_type.input_url.removeprefix("file://"))
    if inputs_only:
        write_sample_products(input_dir, count=products)
        _inputs_for_workers(job_type, settings, runner, f"{products} in {input_dir}", out)
        return
    target = prepare_prefect()
    upgrade(settings)
    write_sample_products(input_dir, count=products)
    out.print(f"input products: {products} in {input_dir}")
    chosen = _announce_runner(job_type, settings, runner, out)
    if chosen == "docker":
        chosen = _demo_image_or_local(asked=bool(runner or settings.runner != "auto"), out=out)
    run = PipelineRun(SnowCover.import_path(), None, None, 10_000, concurrency, chosen)
    _run(run, settings, as_json, target)


def _inputs_for_workers(
    job_type: object, settings: Settings, runner: str | None, what: str, out: Console
) -> None:
    """``--inputs-only``: say where the products are and who picks them up. With the docker
    runner a worker also needs the demo image on its engine, and no registry has it: build it
    here (workers on other machines build it with the same command there)."""
    from tasks.runners.images import ensure_demo_image
    from tasks.runners.select import resolve_runner_name

    # Soft wrap: a path or a command broken across lines cannot be copied.
    out.print(f"input products: {what} (nothing processed)", soft_wrap=True)
    out.print(
        f"A worker whose JOBLINE_DATA_DIR is {settings.data_dir} finds them on the next run of "
        "run-pipeline/snow-cover (hourly; now: `prefect deployment run run-pipeline/snow-cover`).",
        soft_wrap=True,
    )
    if resolve_runner_name(job_type, settings, runner) != "docker":  # type: ignore[arg-type]
        return
    try:
        ensure_demo_image()
    except JoblineError as error:
        out.print(
            f"[yellow]cannot build the demo image ({error}): start the worker with "
            "JOBLINE_RUNNER=local[/]"
        )
        return
    out.print("demo image: on this machine's Docker engine, for workers using docker")


def _demo_image_or_local(asked: bool, out: Console) -> str:
    """Build the demo image locally (no registry is needed); when that is impossible and docker
    was only chosen automatically, fall back to the local runner and say why."""
    from tasks.runners.images import ensure_demo_image

    try:
        ensure_demo_image()
    except JoblineError as error:
        if asked:
            raise
        out.print(f"[yellow]cannot build the demo image ({error}); using the local runner[/]")
        return "local"
    return "docker"


def run(
    job_type: Annotated[
        str,
        typer.Argument(
            help="A registered job type: import path (jobtypes.demo:SnowCover) or name "
            "(snow_cover); others are registered with JOBLINE_JOB_TYPES."
        ),
    ],
    since: Annotated[datetime | None, typer.Option(help="Search from (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Search until (UTC).")] = None,
    max_jobs: Annotated[int, typer.Option(min=1, help="Most job attempts to start.")] = 1000,
    concurrency: ConcurrencyOption = 4,
    runner: RunnerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the pipeline for any job type: discover, insert, configure, process, summarize.

    Creates or migrates the job store's schema first.

    Exit codes: 0 every job of the run done, or nothing to do; 1 a job failed or was cancelled;

    2 usage error; 3 a job not finished yet (a retry or a publication pending)."""
    out = _output(as_json)
    settings = get_settings()
    kind = load_job_type(job_type, settings)  # registered job types only, before any work
    target = prepare_prefect()
    upgrade(settings)
    chosen = _announce_runner(kind, settings, runner, out)
    run = PipelineRun(kind.import_path(), _utc(since), _utc(until), max_jobs, concurrency, chosen)
    _run(run, settings, as_json, target)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _output(as_json: bool) -> Console:
    """Where messages for people go: stdout, or stderr when stdout carries JSON."""
    return errors if as_json else console


def _announce_runner(job_type: object, settings: Settings, runner: str | None, out: Console) -> str:
    from tasks.runners.select import resolve_runner_name

    chosen = resolve_runner_name(job_type, settings, runner)  # type: ignore[arg-type]
    why = "as asked" if runner or settings.runner != "auto" else "auto"
    out.print(f"runner: [bold]{chosen}[/] ({why})")
    return chosen


@dataclass(frozen=True)
class PipelineRun:
    """The parameters of one ``run-pipeline`` call from the terminal."""

    job_type: str
    since: datetime | None
    until: datetime | None
    max_jobs: int
    concurrency: int
    runner: str


def _run(run: PipelineRun, settings: Settings, as_json: bool, target: PrefectTarget) -> None:
    out = _output(as_json)
    if target.embedded:
        out.print(
            "Prefect: no PREFECT_API_URL, starting Prefect's embedded server "
            "(its first start can take a minute)…"
        )
    from flows.pipeline import run_pipeline

    _declare_exchange(settings, out)
    store = JobStore.from_settings(settings)
    with _ProgressWatcher(store, run.job_type, out):
        summary = run_pipeline(
            job_type=run.job_type,
            since=run.since,
            until=run.until,
            max_jobs=run.max_jobs,
            concurrency=run.concurrency,
            runner=run.runner,  # type: ignore[arg-type]
        )
    if as_json:
        jobs = [JobOut.from_job(job) for job in store.get_jobs(summary.job_ids)]
        document = {"summary": summary.model_dump(mode="json"), "jobs": jobs}
        typer.echo(json.dumps(TypeAdapter(dict[str, Any]).dump_python(document, mode="json")))
    else:
        for line in summary_lines(summary):
            out.print(line)
        out.print(jobs_table(store, run.job_type))
    raise typer.Exit(exit_code(summary))


def _declare_exchange(settings: Settings, out: Console) -> None:
    """With the AMQP sink, declare the exchange before the first job publishes (consumers can
    bind to it from then on); an unreachable broker only delays publication."""
    from tasks.publication import declare_exchange

    if urlsplit(settings.resolved_publication_sink).scheme not in ("amqp", "amqps"):
        return
    try:
        where = declare_exchange(settings)
    except PublicationError as error:
        out.print(f"[yellow]{error}: publication messages stay pending until it answers[/]")
        return
    out.print(f"publication exchange {settings.amqp_exchange!r} declared on {where}")


def exit_code(summary: PipelineSummary) -> int:
    """0 all the run's jobs done (or none), 1 one failed or was cancelled, 3 one unfinished."""
    if summary.failed:
        return EXIT_FAILED
    if summary.unfinished:
        return EXIT_UNFINISHED
    return 0


def summary_lines(summary: PipelineSummary) -> list[str]:
    """The run's summary for people: what discovery found, and the run's jobs and attempts."""
    lines = [
        f"discovered {summary.discovered} products, inserted {summary.inserted} jobs, "
        f"skipped {summary.skipped} known products"
    ]
    if summary.rejected:
        names = ", ".join(Path(r.path).name for r in summary.rejected_objects[:3])
        more = f" and {summary.rejected - 3} more" if summary.rejected > 3 else ""
        lines.append(
            f"[yellow]rejected {summary.rejected} listed objects[/] ({names}{more}; "
            "see the run's log or its rejected-inputs artifact)"
        )
    lines.append(
        f"processed {summary.jobs} jobs in {summary.attempts} attempts: {summary.succeeded} done, "
        f"{summary.failed} failed or cancelled, {summary.unfinished} unfinished"
    )
    return lines


class _ProgressWatcher:
    """A rich progress bar fed by the store while the flow runs in this thread."""

    def __init__(self, store: JobStore, job_type: str, out: Console) -> None:
        self.store, self.job_type = store, job_type
        self.stop = threading.Event()
        self.progress = Progress(
            TextColumn("jobs finished"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
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
    """The job type's newest jobs: status, attempts, duration and outputs.

    Made to fit a terminal of 80 columns: ids, statuses and counts never wrap, and product ids
    and outputs wrap (folded inside long words) instead of being cut, so two products that
    differ only at their end never look alike."""
    table = Table(title=f"jobs of {job_type}")
    for header in ("id", "product", "tile", "status", "attempts", "duration", "outputs"):
        fold = header in ("product", "outputs", "tile")
        table.add_column(header, no_wrap=not fold, overflow="fold", min_width=6 if fold else None)
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
