"""``jobline jobs``: list, inspect, retry, cancel and await jobs, straight from the job store.

Rich tables for people; ``--json`` prints the REST API's JSON shapes on stdout for scripts.
Exit codes: 0 ok; 1 the awaited job ended unsuccessfully (failed or cancelled); 2 usage error or
not found; 3 the wait timed out.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter
from rich.console import Console
from rich.table import Column, Table

from api.schemas import HistoryEntry, JobOut, JobPage, MetadataOut, WaitResult
from db.records import JobFilter
from db.statuses import SUCCESSFUL, Status, statuses_in_phase
from db.store import JobStore
from db.waiting import wait_for_job
from jobline.exceptions import JobWaitTimeout
from jobline.settings import get_settings

jobs_app = typer.Typer(
    no_args_is_help=True, help="Inspect and steer jobs (directly in the job store)."
)
console = Console()
errors = Console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 1, 2, 3
PHASE_STYLE = {
    "queued": "",
    "in-progress": "cyan",
    "complete": "green",
    "failed": "red",
    "expired": "dim",
}

JobIdArg = Annotated[int, typer.Argument(min=1, help="The job's id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts).")]
MessageOpt = Annotated[str | None, typer.Option(help="Message recorded with the change.")]


def _store() -> JobStore:
    return JobStore.from_settings(get_settings())


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    errors.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def _print_json(value: Any, adapter: TypeAdapter[Any] | None = None) -> None:
    """Valid JSON on stdout, and nothing else there."""
    data = (adapter or TypeAdapter(type(value))).dump_python(value, mode="json")
    typer.echo(json.dumps(data, indent=2))


def _styled(status: str) -> str:
    style = PHASE_STYLE[Status(status).phase]
    return f"[{style}]{status}[/]" if style else status


def _table(*headers: str) -> Table:
    """A table whose id and status columns never wrap (free text does)."""
    keep = {"id", "status", "from", "to", "attempts"}
    return Table(*(Column(h, no_wrap=h in keep) for h in headers))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


# --------------------------------------------------------------------------- commands


@jobs_app.command("list")
def list_jobs(
    status: Annotated[
        list[Status] | None, typer.Option("--status", "-s", help="Only these statuses.")
    ] = None,
    phase: Annotated[
        str | None, typer.Option(help="queued, in-progress, complete, failed or expired.")
    ] = None,
    job_type: Annotated[str | None, typer.Option(help="Only this job type.")] = None,
    tile: Annotated[str | None, typer.Option(help="Only this tile.")] = None,
    created_after: Annotated[
        datetime | None, typer.Option(help="Created at or after (UTC).")
    ] = None,
    created_before: Annotated[datetime | None, typer.Option(help="Created before (UTC).")] = None,
    late: Annotated[
        bool, typer.Option("--late", help="Only late jobs (past their due time, not done).")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Jobs per page.")] = 50,
    cursor: Annotated[int | None, typer.Option(min=0, help="Next page after this id.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs in id order, a page at a time."""
    statuses = list(status or [])
    if phase is not None:
        try:
            in_phase = statuses_in_phase(phase)
        except ValueError as error:
            raise _fail(f"--phase: {error}") from None
        statuses = [s for s in in_phase if not statuses or s in statuses] or []
        if not statuses:
            _show_page(JobPage(jobs=[], next_cursor=None), as_json)
            return
    filters = JobFilter(
        statuses=tuple(statuses),
        job_type=job_type,
        tile_id=tile,
        created_after=_aware(created_after),
        created_before=_aware(created_before),
        late_at=datetime.now(UTC) if late else None,
    )
    page = _store().list_jobs(filters, after=cursor, limit=limit)
    result = JobPage(jobs=[JobOut.from_job(job) for job in page.jobs], next_cursor=page.next_cursor)
    _show_page(result, as_json)


def _aware(value: datetime | None) -> datetime | None:
    """Options without a zone are UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _show_page(page: JobPage, as_json: bool) -> None:
    if as_json:
        _print_json(page)
        return
    table = _table("id", "job type", "product", "tile", "status", "attempts", "changed (UTC)")
    for job in page.jobs:
        table.add_row(
            str(job.id),
            job.job_type.rsplit(":", 1)[-1],
            job.product_id,
            job.tile_id or "",
            _styled(job.status) + (" [bold red]late[/]" if job.late else ""),
            f"{job.attempts}/{job.max_attempts}",
            _when(job.status_changed_at),
        )
    console.print(table)
    if page.next_cursor is not None:
        console.print(f"more: --cursor {page.next_cursor}")


@jobs_app.command("show")
def show(job_id: JobIdArg, as_json: JsonOpt = False) -> None:
    """One job, every field."""
    job = JobOut.from_job(_store().get_job(job_id))
    if as_json:
        _print_json(job)
        return
    table = Table("field", "value", show_header=False, box=None)
    for name, value in job.model_dump(mode="json").items():
        shown = _styled(value) if name == "status" else _plain(value)
        table.add_row(f"[bold]{name}[/]", shown)
    console.print(table)


def _plain(value: Any) -> str:
    if value is None:
        return "[dim]-[/]"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


@jobs_app.command("history")
def history(job_id: JobIdArg, as_json: JsonOpt = False) -> None:
    """The job's status changes, oldest first."""
    changes = [HistoryEntry.from_change(change) for change in _store().history(job_id)]
    if as_json:
        _print_json(changes, TypeAdapter(list[HistoryEntry]))
        return
    table = _table("id", "changed (UTC)", "from", "to", "attempt", "worker", "message")
    for change in changes:
        table.add_row(
            str(change.id),
            _when(change.changed_at),
            change.from_status or "",
            _styled(change.to_status),
            str(change.attempt),
            change.worker or "",
            change.message or "",
        )
    console.print(table)


@jobs_app.command("metadata")
def metadata(
    job_id: JobIdArg,
    key: Annotated[str | None, typer.Argument(help="One key; all keys when left out.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The job's metadata documents (all, or the one under KEY)."""
    store = _store()
    if key is not None:
        row = MetadataOut.from_row(store.get_metadata_document(job_id, key))
        if as_json:
            _print_json(row)
        else:
            console.print(f"[bold]{row.key}[/] ({row.model}, updated {_when(row.updated_at)})")
            console.print_json(data=row.document)
        return
    rows = [MetadataOut.from_row(row) for row in store.metadata_documents(job_id)]
    if as_json:
        _print_json(rows, TypeAdapter(list[MetadataOut]))
        return
    table = _table("key", "model", "updated (UTC)", "document")
    for row in rows:
        table.add_row(row.key, row.model, _when(row.updated_at), _short(json.dumps(row.document)))
    console.print(table)


def _short(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@jobs_app.command("retry")
def retry(job_id: JobIdArg, message: MessageOpt = None, as_json: JsonOpt = False) -> None:
    """Send a failed job (internal_error, external_error, error_checked) back to ready."""
    job = _store().retry(job_id, message=message or "retried from the command line")
    _show_change(JobOut.from_job(job), as_json)


@jobs_app.command("cancel")
def cancel(job_id: JobIdArg, message: MessageOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a job, if its status allows it."""
    job = _store().cancel(job_id, message=message or "cancelled from the command line")
    _show_change(JobOut.from_job(job), as_json)


def _show_change(job: JobOut, as_json: bool) -> None:
    if as_json:
        _print_json(job)
    else:
        console.print(f"job {job.id} is now {_styled(job.status)}")


@jobs_app.command("wait")
def wait(
    job_id: JobIdArg,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait at most.")] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Block until the job is terminal: exit 0 done or expired, 1 failed or cancelled, 3 timeout."""
    store = _store()
    try:
        job = JobOut.from_job(wait_for_job(store, job_id, timeout))
    except JobWaitTimeout as error:
        if as_json:
            current = JobOut.from_job(store.get_job(job_id, touch=False))
            _print_json(WaitResult(job=current, terminal=False, timed_out=True))
        raise _fail(str(error), EXIT_TIMEOUT) from None
    if as_json:
        _print_json(WaitResult(job=job, terminal=True, timed_out=False))
    else:
        console.print(f"job {job.id} is {_styled(job.status)}")
    if job.status not in SUCCESSFUL:
        raise typer.Exit(EXIT_FAILED)
