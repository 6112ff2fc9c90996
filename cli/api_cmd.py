"""``jobline api``: serve the REST API with uvicorn."""

from __future__ import annotations

import ipaddress

import typer
import uvicorn
from rich.console import Console

from api.app import create_app
from jobline.settings import get_settings

errors = Console(stderr=True)


def serve_api(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to bind (0: any free port)."),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Serve without a bearer token (loopback addresses only)."
    ),
    log_level: str = typer.Option("info", help="uvicorn's log level."),
) -> None:
    """Serve the REST API (OpenAPI document at /docs). Needs JOBLINE_API_TOKEN unless --no-auth."""
    if no_auth and not is_loopback(host):
        errors.print(
            f"[red]error:[/] --host: {host} is not a loopback address; without authentication "
            "the API only listens on loopback (127.0.0.1, ::1, localhost)"
        )
        raise typer.Exit(2)
    app = create_app(get_settings(), require_auth=not no_auth)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
