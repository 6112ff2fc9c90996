"""Before ``jobline demo`` / ``jobline run`` start a flow: can Prefect serve it? If not, stop at
once with one line naming the cause and the setting that fixes it.

Without ``PREFECT_API_URL`` (in the environment or the active Prefect profile) Prefect starts an
embedded server for the run. That server keeps its SQLite database in ``PREFECT_HOME``
(``~/.prefect``); when the database cannot be opened (a home that cannot be created, a read-only
one, a database server that does not answer) Prefect retries for minutes, printing tracebacks,
and the run ends with nothing done. With ``PREFECT_API_URL`` set, a server that does not answer
fails the run after seconds of retries and a traceback. These checks find each of those causes
first, in well under a second (at most :data:`ANSWER_TIMEOUT_SECONDS` for a server that is away).

Other causes (a Prefect database written by a newer Prefect, say) still surface only when the
embedded server gives up, after ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from jobline.exceptions import PrefectUnavailable

#: How long a Prefect server (or the embedded server's database) may take to answer the check.
ANSWER_TIMEOUT_SECONDS = 5.0
#: The embedded server's first start took about 30 s on two cores, past Prefect's default 20 s.
EMBEDDED_STARTUP_TIMEOUT_SECONDS = "300"
#: What to do instead of the embedded server, said in every embedded-mode message.
USE_A_SERVER = "or set PREFECT_API_URL to a running Prefect server (`prefect server start`)"


@dataclass(frozen=True)
class PrefectTarget:
    """Where this run's flows report: a server's API URL, or None for the embedded server."""

    api_url: str | None

    @property
    def embedded(self) -> bool:
        return self.api_url is None


def prepare_prefect() -> PrefectTarget:
    """Set jobline's defaults for Prefect, then check that Prefect can serve the run; raises
    :class:`PrefectUnavailable` with the cause and the fix otherwise. Call before importing
    anything that imports Prefect: Prefect reads its settings once, at import."""
    # Setting defaults for Prefect's own settings (never overriding the user's): the embedded
    # server gets time to start, and neither phones home nor floods the terminal.
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EMBEDDED_STARTUP_TIMEOUT_SECONDS
    )
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with warnings.catch_warnings():
        # Prefect warns at import when it cannot create its home; check_embedded says it better.
        warnings.filterwarnings("ignore", message="Failed to create the Prefect home directory")
        from prefect.settings import get_current_settings

        settings = get_current_settings()
    if settings.api.url:
        check_server(settings.api.url)
        return PrefectTarget(settings.api.url)
    if not settings.server.ephemeral.enabled:
        raise PrefectUnavailable(
            "Prefect: no PREFECT_API_URL, and the embedded server is switched off "
            "(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false): set PREFECT_API_URL to a running "
            "Prefect server"
        )
    database = settings.server.database.connection_url
    check_embedded(Path(settings.home), database.get_secret_value() if database else None)
    return PrefectTarget(None)


def check_server(api_url: str) -> None:
    """The Prefect server at ``api_url`` answers its health check."""
    fix = "start it (`prefect server start`), correct PREFECT_API_URL, or unset it to use "
    fix += "Prefect's embedded server"
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=ANSWER_TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        reason = str(error) or type(error).__name__
        raise PrefectUnavailable(
            f"Prefect: the server at PREFECT_API_URL={api_url} does not answer ({reason}): {fix}"
        ) from None
    if response.status_code != 200:
        raise PrefectUnavailable(
            f"Prefect: the server at PREFECT_API_URL={api_url} answers its health check with "
            f"HTTP {response.status_code}: {fix}"
        )


def check_embedded(home: Path, database_url: str | None) -> None:
    """The embedded server can keep its files in ``home`` and open its database."""
    fix = f"set PREFECT_HOME to a writable directory, {USE_A_SERVER}"
    try:
        # The embedded server creates its home, parents included (a HOME that does not exist
        # yet works); a HOME that is a file, or a read-only place, does not.
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as error:
        raise PrefectUnavailable(
            f"Prefect: its embedded server cannot use its home {home} "
            f"({error.strerror or error}): {fix}"
        ) from None
    if database_url:
        check_embedded_database(database_url)


def check_embedded_database(database_url: str) -> None:
    """An SQLite file the embedded server can write, or a database server that answers."""
    url = make_url(database_url)
    setting = "PREFECT_API_DATABASE_CONNECTION_URL"
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database.startswith(":memory:") or "mode=memory" in str(url):
            return
        path = Path(url.database)
        writable = path if path.exists() else path.parent
        if not os.access(writable, os.W_OK):
            raise PrefectUnavailable(
                f"Prefect: its embedded server cannot write its database {path} ({setting}): "
                f"use a writable path, {USE_A_SERVER}"
            )
        return
    host, port = url.host or "localhost", url.port or 5432
    try:
        socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_SECONDS).close()
    except OSError as error:
        raise PrefectUnavailable(
            f"Prefect: its embedded server's database at {host}:{port} ({setting}) does not "
            f"answer ({error.strerror or error}): start it, correct {setting}, {USE_A_SERVER}"
        ) from None
