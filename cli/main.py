"""The ``jobline`` command: operators' entry point.

Exit codes scripts can rely on: 0 ok, 1 a job failed (when waiting, or a job of a ``run`` or
``demo``), 2 usage error or not found, 3 a wait timed out (or a job of a ``run`` was not finished
when it ended), 4 the AMQP broker could not be reached (``amqp``).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cli import api_cmd, maintenance_cmd, pipeline_cmds, status_cmd
from cli.amqp_cmd import amqp_app
from cli.jobs import jobs_app
from db.engine import make_engine
from db.migrate import current_revision, head_revision, upgrade
from db.rekey import JobTypeNameUnknown, job_type_name
from db.store import JobStore
from jobline.exceptions import JoblineError
from jobline.settings import get_settings

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="jobline: processing jobs tracked in a database.",
)
db_app = typer.Typer(no_args_is_help=True, help="The job store's schema.")
app.add_typer(db_app, name="db")
app.command("demo")(pipeline_cmds.demo)
app.command("run")(pipeline_cmds.run)
app.add_typer(jobs_app, name="jobs")
app.command("api")(api_cmd.serve_api)
app.command("maintenance")(maintenance_cmd.maintenance)
app.command("status")(status_cmd.status)
app.add_typer(amqp_app, name="amqp")
console = Console()
errors = Console(stderr=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the job store's schema (idempotent)."""
    settings = get_settings()
    revision = upgrade(settings)
    console.print(f"job store at revision [bold]{revision}[/] ({_describe_store()})")


@db_app.command("status")
def db_status() -> None:
    """Show the store's schema revision and the newest one this jobline knows."""
    settings = get_settings()
    current = current_revision(make_engine(settings), settings)
    console.print(f"store: {_describe_store()}")
    console.print(f"revision: {current or '(empty)'}; newest: {head_revision()}")
    if current:
        for import_path, reason in JobStore.from_settings(settings).pending_rekeys().items():
            console.print(
                f"[yellow]job keys of {import_path} still made from its import path[/] ({reason}): "
                f"they are rewritten when it is next used, or by `jobline db rekey {import_path}`"
            )


@db_app.command("rekey")
def db_rekey(
    import_path: Annotated[str, typer.Argument(help="The stored job type, module:Class.")],
    name: Annotated[
        str | None,
        typer.Option(help="Its name, when the class cannot be imported (e.g. it moved)."),
    ] = None,
) -> None:
    """Rewrite the keys of a job type's jobs from its name (see migration 0006)."""
    settings = get_settings()
    upgrade(settings)
    if name is None:
        try:
            name = job_type_name(import_path)
        except JobTypeNameUnknown as error:
            errors.print(f"[red]error:[/] {error}; give its name with --name")
            raise typer.Exit(2) from None
    try:
        report = JobStore.from_settings(settings).rekey_job_type(import_path, name)
    except ValueError as error:
        errors.print(f"[red]error:[/] --name: {error}")
        raise typer.Exit(2) from None
    console.print(report.describe())


def _describe_store() -> str:
    settings = get_settings()
    engine = make_engine(settings)
    where = engine.url.render_as_string(hide_password=True)
    schema = f", schema {settings.db_schema}" if engine.dialect.name == "postgresql" else ""
    return f"{where}{schema}"


def main() -> None:
    try:
        app()
    except JoblineError as error:
        # One line, however long (scripts and logs read it), and never read as markup.
        errors.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise SystemExit(2) from None
