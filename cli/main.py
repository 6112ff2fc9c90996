"""The ``jobline`` command."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="jobline: processing jobs tracked in a database.")


def main() -> None:
    app()
