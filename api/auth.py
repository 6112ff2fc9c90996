"""Who may call the API: the bearer token, the rules a server must meet to start, and the Host
check of a server without a token.

* A token is required unless the server is started with ``--no-auth``. An empty or blank
  ``JOBLINE_API_TOKEN`` counts as none (see :class:`jobline.settings.Settings`).
* On an address that is not loopback the token must have at least :data:`MIN_TOKEN_LENGTH`
  characters (``python -c "import secrets; print(secrets.token_urlsafe(32))"`` prints 43).
* Tokens are compared in constant time, as SHA-256 digests, so neither their content nor their
  length shows in the answer's timing.
* Without a token the server binds to loopback only, and :class:`LoopbackHostOnly` refuses every
  request whose ``Host`` is not a loopback name: a web page whose domain an attacker re-binds to
  127.0.0.1 (DNS rebinding) sends its own domain as the Host, and is refused.

:data:`AuthDep` is the dependency the routers use. Other ways in (a console's login cookie) are
further dependencies that accept a request or raise 401 the same way: see :func:`unauthorized`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from api.schemas import FieldError
from jobline.exceptions import ConfigurationError
from jobline.settings import Settings

#: Fewest characters of a token on an address that is not loopback.
MIN_TOKEN_LENGTH = 32

_bearer = HTTPBearer(
    auto_error=False, description="The server's JOBLINE_API_TOKEN, as `Bearer <token>`."
)


def token_matches(given: str, expected: SecretStr) -> bool:
    """Whether ``given`` is the token, in time that depends on neither of them."""
    given_digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    expected_digest = hashlib.sha256(expected.get_secret_value().encode()).digest()
    return hmac.compare_digest(given_digest, expected_digest)


def unauthorized() -> HTTPException:
    """The 401 every way of authenticating answers with."""
    return HTTPException(
        401,
        "authorization: a valid bearer token is required",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries the configured bearer token (``async``: no thread hop)."""
    settings: Settings = request.app.state.settings
    expected = settings.api_token
    if expected is None or credentials is None:
        raise unauthorized()
    if not token_matches(credentials.credentials, expected):
        raise unauthorized()


AuthDep = Depends(require_token)


# ------------------------------------------------------------------ the console's cookie

#: The console's session cookie: ``<session id>.<signature>``, HttpOnly, SameSite=Strict.
SESSION_COOKIE = "jobline_session"


def _signing_key(settings: Settings, fallback: bytes) -> bytes:
    """Sessions are signed with a key derived from the API token (a new token ends every
    session); a server without a token signs with a key of its own process."""
    token = settings.api_token
    if token is None:
        return fallback
    return hashlib.sha256(b"jobline-console:" + token.get_secret_value().encode()).digest()


def sign(settings: Settings, fallback: bytes, purpose: str, session_id: str) -> str:
    """An HMAC of ``purpose:session_id`` under the console's key (hex)."""
    key = _signing_key(settings, fallback)
    return hmac.new(key, f"{purpose}:{session_id}".encode(), hashlib.sha256).hexdigest()


def session_id_of(request: Request) -> str | None:
    """The id of the request's console session, if its cookie carries a valid signature."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    session_id, _, signature = cookie.partition(".")
    if not session_id or not signature:
        return None
    expected = sign(
        request.app.state.settings, request.app.state.console_key, "session", session_id
    )
    return session_id if hmac.compare_digest(signature, expected) else None


async def require_token_or_session(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer token, or the console's session cookie (a browser's EventSource cannot send
    a header); 401 otherwise."""
    if session_id_of(request) is not None:
        return
    await require_token(request, credentials)


TokenOrSessionDep = Depends(require_token_or_session)


# ------------------------------------------------------------------------------ start-up


def check_serving(settings: Settings, host: str | None, *, require_auth: bool) -> None:
    """Refuse (ConfigurationError) to serve in a way these rules forbid; ``host`` None means
    the address is not known here (``uvicorn --factory``), and is taken as not loopback."""
    loopback = host is not None and is_loopback(host)
    if not require_auth:
        if not loopback:
            raise ConfigurationError(
                f"--host: {host} is not a loopback address; without authentication the API "
                "only listens on loopback (127.0.0.1, ::1, localhost)"
            )
        return
    token = settings.api_token
    if token is None:
        raise ConfigurationError(
            "JOBLINE_API_TOKEN: the API requires a bearer token (an empty or blank one counts "
            "as none); set one, or serve without authentication on loopback with --no-auth"
        )
    if not loopback and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"JOBLINE_API_TOKEN: on {host or 'an address that is not loopback'} the token "
            f"must have at least {MIN_TOKEN_LENGTH} characters; it has "
            f"{len(token.get_secret_value())}"
        )


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- host check


def host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class LoopbackHostOnly:
    """Answers 400 to every request whose ``Host`` header is missing or not a loopback name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if not is_loopback(host_name(header)):
            reason = (
                f"{header!r} is not a loopback name; a server without a token answers only "
                "requests for localhost, 127.0.0.1 or [::1]"
            )
            response = error_response(
                400, f"host: {reason}", [FieldError(field="host", reason=reason)]
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
