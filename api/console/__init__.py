"""The operator console at ``/ui``: server-rendered pages (Jinja2 templates in ``templates/``)
over the same store functions as the JSON API; no page builds SQL, no JavaScript build step.

* **Who may look.** The API's token: the login form checks it as the bearer check does
  (:func:`api.auth.token_matches`) and sets a session cookie (HttpOnly, SameSite=Strict) signed
  with a key derived from the token (:func:`api.auth.sign`). A request without a valid cookie
  gets the login page (401) and changes nothing.
* **Every form POST carries a CSRF token**, an HMAC of the session id; a POST without the right
  one is refused (403) and changes nothing. The login form has its own, bound to a nonce cookie.
* **Live updates**: ``static/console.js`` reads ``/events`` (the cookie authenticates it) and
  updates the job table's status cells in place, or reloads the overview or job page's content.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from api.auth import SESSION_COOKIE, session_id_of, sign, token_matches
from api.console.charts import day_chart
from api.routers.jobs import stored_job_type
from db.overview import duration_text, production_overview
from db.records import JobFilter, Page
from db.statuses import PHASES, TERMINAL, Status, statuses_in_phase
from db.store import CANCELLABLE, JobStore, utcnow
from jobline.exceptions import JoblineError
from jobline.settings import Settings
from jobtypes.registry import timeliness_targets

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["duration"] = duration_text
templates.env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"
templates.env.globals["PHASES"] = {s.value: p for s, p in PHASES.items()}

router = APIRouter(prefix="/ui", include_in_schema=False)

LOGIN_COOKIE = "jobline_login"
PAGE_SIZE = 50
#: Statuses shown on the filter form, in lifecycle order.
STATUS_NAMES = [s.value for s in Status]
PHASE_NAMES = ["queued", "in-progress", "complete", "failed", "expired"]


# --------------------------------------------------------------------------- sessions


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _csrf(request: Request, session_id: str) -> str:
    return sign(_settings(request), request.app.state.console_key, "csrf", session_id)


async def _form(request: Request) -> dict[str, list[str]]:
    """A urlencoded form body (the console's forms send nothing else)."""
    body = (await request.body()).decode("utf-8", "replace")
    return parse_qs(body, keep_blank_values=True, max_num_fields=200)


def _one(form: dict[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0] if values else default


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    session_id = session_id_of(request)
    context.setdefault("csrf_token", _csrf(request, session_id) if session_id else "")
    context.setdefault("signed_in", session_id is not None)
    context.setdefault("live", "")
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _login_page(request: Request, error: str = "", status_code: int = 401) -> Response:
    """The login form, with a fresh nonce cookie its CSRF token is bound to."""
    nonce = secrets.token_urlsafe(16)
    response = _render(
        request,
        "login.html",
        status_code,
        login_token=sign(_settings(request), request.app.state.console_key, "login", nonce),
        needs_token=request.app.state.require_auth,
        error=error,
        signed_in=False,
    )
    _set_cookie(request, response, LOGIN_COOKIE, nonce)
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


class Refused(Exception):
    """A console request that is answered with ``response`` and changes nothing."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _session(request: Request) -> str:
    """The session id, or the login page (401)."""
    session_id = session_id_of(request)
    if session_id is None:
        raise Refused(_login_page(request))
    return session_id


async def _checked_form(request: Request) -> dict[str, list[str]]:
    """The form of a POST from a signed-in session that carries its CSRF token; else the
    login page (401) or 403, and nothing changes."""
    session_id = _session(request)
    form = await _form(request)
    if not hmac.compare_digest(_one(form, "csrf_token"), _csrf(request, session_id)):
        raise Refused(
            _render(
                request,
                "message.html",
                403,
                title="Refused",
                message="csrf_token: missing or wrong; reload the page and try again. "
                "Nothing was changed.",
            )
        )
    return form


def refused_handler(_request: Request, error: Exception) -> Response:
    assert isinstance(error, Refused)
    return error.response


# ------------------------------------------------------------------------------ login


@router.get("/login")
def login_form(request: Request) -> Response:
    if session_id_of(request) is not None:
        return RedirectResponse("/ui", 303)
    return _login_page(request, status_code=200)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    expected = sign(_settings(request), request.app.state.console_key, "login", nonce)
    if not nonce or not hmac.compare_digest(_one(form, "csrf_token"), expected):
        return _login_page(request, "The form expired: please sign in again.", 403)
    token = _settings(request).api_token
    if request.app.state.require_auth and (
        token is None or not token_matches(_one(form, "token"), token)
    ):
        return _login_page(request, "That is not the API's token.")
    session_id = secrets.token_urlsafe(24)
    signature = sign(_settings(request), request.app.state.console_key, "session", session_id)
    response = RedirectResponse("/ui", 303)
    _set_cookie(request, response, SESSION_COOKIE, f"{session_id}.{signature}")
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await _checked_form(request)
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --------------------------------------------------------------------------- overview


@router.get("")
def overview(request: Request) -> Response:
    _session(request)
    targets, queues = timeliness_targets(_settings(request))
    figures = production_overview(_store(request), targets, queues, days=7)
    charts = {
        t.job_type: day_chart(t.days, t.timeliness_24h.target_seconds, figures.generated_at, 7)
        for t in figures.job_types
    }
    return _render(
        request,
        "overview.html",
        overview=figures,
        totals=figures.totals(),
        charts=charts,
        queues=queues,
        live="overview",
    )


@router.post("/pauses")
async def pause_or_resume(request: Request) -> Response:
    form = await _checked_form(request)
    kind, name = _one(form, "kind"), _one(form, "name").strip()
    if kind not in ("job_type", "queue") or not name or len(name) > 200:
        return _render(
            request, "message.html", 422, title="Refused", message="kind, name: not a pause."
        )
    if kind == "job_type":
        name = stored_job_type(name, _settings(request)) or name
    store = _store(request)
    if _one(form, "action") == "resume":
        await run_in_threadpool(store.resume, kind, name)  # type: ignore[arg-type]
    else:
        reason = _one(form, "reason").strip()[:2000] or None
        await run_in_threadpool(store.pause, kind, name, reason=reason)  # type: ignore[arg-type]
    return RedirectResponse("/ui", 303)


# ------------------------------------------------------------------------------ jobs


class FilterError(ValueError):
    """A filter value the console cannot use, named."""


def _filter_from(
    params: dict[str, list[str]], settings: Settings
) -> tuple[JobFilter | None, dict[str, Any]]:
    """The store's filter from query or form parameters (None: its status and phase exclude
    each other, nothing matches), and the values to show in the form."""
    statuses = [s for s in params.get("status", []) if s]
    for status in statuses:
        if status not in STATUS_NAMES:
            raise FilterError(f"status: {status!r} is not a status")
    phase = _one(params, "phase")
    if phase:
        if phase not in PHASE_NAMES:
            raise FilterError(f"phase: {phase!r} is not a phase")
        in_phase = [s.value for s in statuses_in_phase(phase)]
        statuses = [s for s in in_phase if s in statuses] if statuses else in_phase
    shown = {
        "status": [s for s in params.get("status", []) if s],
        "phase": phase,
        "job_type": _one(params, "job_type").strip(),
        "tile_id": _one(params, "tile_id").strip(),
        "late": _one(params, "late") in ("1", "true", "on"),
    }
    for name in ("job_type", "tile_id"):
        if len(shown[name]) > 200:
            raise FilterError(f"{name}: longer than 200 characters")
    if phase and not statuses:
        return None, shown
    filters = JobFilter(
        statuses=tuple(Status(s) for s in statuses),
        job_type=stored_job_type(shown["job_type"] or None, settings),
        tile_id=shown["tile_id"] or None,
        late_at=utcnow() if shown["late"] else None,
    )
    return filters, shown


def _query(shown: dict[str, Any], **extra: Any) -> str:
    pairs: list[tuple[str, str]] = [("status", s) for s in shown["status"]]
    for name in ("phase", "job_type", "tile_id"):
        if shown[name]:
            pairs.append((name, shown[name]))
    if shown["late"]:
        pairs.append(("late", "1"))
    pairs += [(k, str(v)) for k, v in extra.items() if v is not None]
    return urlencode(pairs)


def _describe(shown: dict[str, Any]) -> str:
    """A filter in words, for the confirmation of a bulk action."""
    parts = []
    if shown["status"]:
        parts.append("status " + " or ".join(shown["status"]))
    for name in ("phase", "job_type", "tile_id"):
        if shown[name]:
            parts.append(f"{name.replace('_', ' ')} {shown[name]}")
    if shown["late"]:
        parts.append("late")
    return ", ".join(parts) or "none"


@router.get("/jobs")
def job_table(request: Request) -> Response:
    _session(request)
    params = parse_qs(request.url.query, keep_blank_values=True, max_num_fields=100)
    try:
        filters, shown = _filter_from(params, _settings(request))
        cursor = int(_one(params, "cursor") or 0) or None
        if cursor is not None and not 0 < cursor < 2**63:
            raise FilterError("cursor: out of range")
    except (FilterError, ValueError) as error:
        return _render(request, "message.html", 400, title="Bad filter", message=str(error))
    page = (
        _store(request).list_jobs(filters, after=cursor, limit=PAGE_SIZE)
        if filters is not None
        else Page(jobs=[], next_cursor=None)
    )
    now = datetime.now(UTC)
    return _render(
        request,
        "jobs.html",
        jobs=page.jobs,
        now=now,
        shown=shown,
        statuses=STATUS_NAMES,
        phases=PHASE_NAMES,
        next_query=_query(shown, cursor=page.next_cursor) if page.next_cursor else None,
        first_query=_query(shown) if cursor else None,
        filter_query=_query(shown),
        flash=_one(params, "flash"),
        live="jobs",
    )


@router.post("/jobs/bulk")
async def bulk_action(request: Request) -> Response:
    """Retry or cancel the jobs of a filter: first a confirmation page with the count (a dry
    run), then, with ``confirm``, the action."""
    form = await _checked_form(request)
    action = _one(form, "action")
    if action not in ("retry", "cancel"):
        return _render(request, "message.html", 422, title="Refused", message="action: unknown")
    try:
        filters, shown = _filter_from(form, _settings(request))
    except FilterError as error:
        return _render(request, "message.html", 400, title="Bad filter", message=str(error))
    if filters == JobFilter():
        return _render(
            request,
            "message.html",
            422,
            title="Refused",
            message="filter: name at least one filter for a bulk action.",
        )
    store = _store(request)
    if _one(form, "confirm") != "1":
        if filters is None:
            count = 0
        elif action == "retry":
            count = await run_in_threadpool(store.count_retryable, filters)
        else:
            count = await run_in_threadpool(store.count_cancellable, filters)
        return _render(
            request,
            "confirm.html",
            action=action,
            count=count,
            shown=shown,
            filter_query=_query(shown),
            filter_text=_describe(shown),
        )
    if filters is None:
        changed = 0
    elif action == "retry":
        changed = await run_in_threadpool(
            store.retry_many, filters, message="retried by an operator (console)"
        )
    else:
        changed = await run_in_threadpool(
            store.cancel_many, filters, message="cancelled by an operator (console)"
        )
    verb = "retried" if action == "retry" else "cancelled"
    return RedirectResponse(f"/ui/jobs?{_query(shown, flash=f'{changed} jobs {verb}')}", 303)


# ------------------------------------------------------------------------------- a job


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: int) -> Response:
    _session(request)
    store = _store(request)
    try:
        job = store.get_job(job_id, touch=False)
    except JoblineError:
        return _render(request, "message.html", 404, title="Not found", message=f"no job {job_id}")
    history = store.history(job_id)
    documents = store.metadata_documents(job_id)
    log_tail: list[str] = []
    for row in documents:
        if row.key == "run-container" and isinstance(row.value.get("log_tail"), list):
            log_tail = [str(line) for line in row.value["log_tail"]]
    prefect_ui = _settings(request).prefect_ui_url
    flow_runs = list(dict.fromkeys(c.flow_run_id for c in history if c.flow_run_id))
    return _render(
        request,
        "job.html",
        job=job,
        now=datetime.now(UTC),
        history=history,
        documents=documents,
        log_tail=log_tail,
        flow_runs=[
            (run, f"{prefect_ui.rstrip('/')}/runs/flow-run/{run}" if prefect_ui else None)
            for run in flow_runs
        ],
        terminal={s.value for s in TERMINAL},
        retryable=job.status in ("internal_error", "external_error", "error_checked"),
        cancellable=Status(job.status) in CANCELLABLE,
        last_change=history[-1].id if history else 0,
        live="job",
    )


@router.post("/jobs/{job_id}")
async def job_action(request: Request, job_id: int) -> Response:
    """Retry, cancel or add a note to one job."""
    form = await _checked_form(request)
    action = _one(form, "action")
    store = _store(request)
    try:
        if action == "retry":
            await run_in_threadpool(store.retry, job_id, message="retried by an operator (console)")
        elif action == "cancel":
            await run_in_threadpool(
                store.cancel, job_id, message="cancelled by an operator (console)"
            )
        elif action == "note":
            note = _one(form, "note").strip()
            if not note or len(note) > 4000:
                raise ValueError("note: must have 1 to 4000 characters")
            author = _one(form, "author").strip()[:200] or None
            await run_in_threadpool(store.add_note, job_id, note, author=author)
        else:
            raise ValueError("action: unknown")
    except (JoblineError, ValueError, ValidationError) as error:
        return _render(request, "message.html", 409, title="Refused", message=str(error))
    return RedirectResponse(f"/ui/jobs/{job_id}", 303)
