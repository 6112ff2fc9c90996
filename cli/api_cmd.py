"""``jobline api``: serve the REST API with uvicorn."""

from __future__ import annotations

import typer
from rich.console import Console

from jobline.exceptions import ConfigurationError
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
    """Serve the REST API (OpenAPI document at /docs). Needs JOBLINE_API_TOKEN unless --no-auth;
    on an address that is not loopback, a token of at least 32 characters."""
    # The web stack loads only for this command: every other one starts in a fraction of it.
    import uvicorn

    from api.app import create_app
    from api.auth import check_serving

    settings = get_settings()
    try:
        check_serving(settings, host, require_auth=not no_auth)
    except ConfigurationError as error:
        errors.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    app = create_app(settings, require_auth=not no_auth)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
