"""After ``jobline demo``: ``jobline status --json``, and the operator console in a real browser
(Debian's Chromium driven by Playwright) against a real ``jobline api``.

One demo run (on a scratch PostgreSQL database, reporting to the session's Prefect server) is
shared by the module. Screenshots of each page go to ``test-artifacts/console/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from db.records import NewJob
from db.statuses import Status
from db.store import JobStore
from jobline.settings import Settings
from tests.acceptance.test_demo import fresh_machine_env
from tests.conftest import IN_CI, scratch_database
from tests.integration.api_server import TOKEN, ApiServer, start_server, stop_server

pytestmark = pytest.mark.slow

DEMO_TYPE = "jobtypes.demo:SnowCover"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
#: How long a live change may take to show in the browser (ms).
LIVE_TIMEOUT_MS = 15_000


@dataclass
class Demo:
    database_url: str
    data_dir: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def demo(prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``jobline demo`` run once on a scratch PostgreSQL database (local runner)."""
    home = tmp_path_factory.mktemp("console-home")
    data_dir = home / "data"
    with scratch_database("jobline_console") as database_url:
        env = fresh_machine_env(
            home,
            JOBLINE_DATABASE_URL=database_url,
            JOBLINE_DATA_DIR=str(data_dir),
            PREFECT_API_URL=prefect_api_url,
        )
        result = subprocess.run(
            ["jobline", "demo"], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
        yield Demo(database_url, data_dir, env)


def test_status_json_after_the_demo(demo: Demo) -> None:
    result = subprocess.run(
        ["jobline", "status", "--json"], env=demo.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    overview = json.loads(result.stdout)
    [snow] = [t for t in overview["job_types"] if t["job_type"] == DEMO_TYPE]
    assert snow["by_status"] == {"done": 8}
    assert snow["late"] == 0
    assert snow["done_last_day"] == 8
    timeliness = snow["timeliness_24h"]
    assert timeliness["done"] == 8
    assert 0 < timeliness["p50"] <= timeliness["p95"] <= timeliness["max"]
    assert timeliness["target_seconds"] == 3 * 3600
    # The human table says the same.
    table = subprocess.run(
        ["jobline", "status"], env=demo.env, capture_output=True, text=True, timeout=60
    )
    assert table.returncode == 0 and "8 / 8" in table.stdout, table.stdout


@pytest.fixture(scope="module")
def console(demo: Demo, prefect_api_url: str) -> Iterator[ApiServer]:
    """``jobline api`` on the demo's database; the console links flow runs to Prefect's UI."""
    saved = os.environ.get("JOBLINE_PREFECT_UI_URL")
    os.environ["JOBLINE_PREFECT_UI_URL"] = prefect_api_url.removesuffix("/api")
    try:
        server = start_server(demo.database_url, demo.data_dir)
    finally:
        if saved is None:
            os.environ.pop("JOBLINE_PREFECT_UI_URL", None)
        else:
            os.environ["JOBLINE_PREFECT_UI_URL"] = saved
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def demo_store(demo: Demo) -> Iterator[JobStore]:
    store = JobStore.from_settings(Settings(database_url=demo.database_url))
    yield store
    store.engine.dispose()


@contextmanager
def _signed_in(console: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=console.url, timeout=30.0) as client:
        login = client.get("/ui/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
        assert token is not None
        answer = client.post("/ui/login", data={"csrf_token": token[1], "token": TOKEN})
        assert answer.status_code == 303, answer.text
        yield client


def test_without_the_cookie_or_the_csrf_token_nothing_changes(
    console: ApiServer, demo_store: JobStore
) -> None:
    job_id = demo_store.list_jobs(limit=1).jobs[0].id
    before = len(demo_store.history(job_id))
    with httpx.Client(base_url=console.url, timeout=30.0) as anonymous:
        page = anonymous.get("/ui")
        assert page.status_code == 401
        assert 'action="/ui/login"' in page.text and 'type="password"' in page.text
        assert anonymous.get(f"/ui/jobs/{job_id}").status_code == 401
        refused = anonymous.post(f"/ui/jobs/{job_id}", data={"action": "note", "note": "x"})
        assert refused.status_code == 401
        wrong = anonymous.post("/ui/login", data={"csrf_token": "forged", "token": TOKEN})
        assert wrong.status_code == 403 and "jobline_session" not in wrong.headers.get(
            "set-cookie", ""
        )
    with _signed_in(console) as client:
        cookie = client.cookies.jar
        assert any(c.name == "jobline_session" for c in cookie)
        header = client.get("/ui/login").headers  # signed in: redirected, no new cookie
        assert "jobline_session" not in header.get("set-cookie", "")
        for form in ({}, {"csrf_token": "forged"}):
            answer = client.post(f"/ui/jobs/{job_id}", data={"action": "note", "note": "x", **form})
            assert answer.status_code == 403, answer.text
            answer = client.post("/ui/pauses", data={"kind": "job_type", "name": DEMO_TYPE, **form})
            assert answer.status_code == 403
    assert len(demo_store.history(job_id)) == before
    assert demo_store.pauses() == []


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "no chromium on PATH (scripts/test.sh installs Debian's)"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


def _shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_the_console_in_a_browser(
    console: ApiServer, demo_store: JobStore, browser: object
) -> None:
    context = browser.new_context(viewport={"width": 1360, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(LIVE_TIMEOUT_MS)

    # Without the cookie: the login page. Sign in with the API's token.
    page.goto(f"{console.url}/ui")
    assert page.locator("h1").inner_text() == "Sign in"
    _shot(page, "01-login")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/ui")

    # The overview's counts: the demo's 8 jobs, all done, none late.
    card = page.locator(f'section.jobtype[data-job-type="{DEMO_TYPE}"]')
    assert card.locator('[data-count="complete"]').inner_text() == "8"
    assert card.locator('[data-count="late"]').inner_text() == "0"
    assert page.locator("#total-jobs").inner_text() == "8"
    assert card.locator("svg rect.bar").count() == 7
    _shot(page, "02-overview")

    # The table, filtered by status.
    page.click("text=Jobs")
    page.select_option("#filter-status", ["done"])
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*status=done.*"))
    rows = page.locator("#job-table tbody tr[data-job-id]")
    assert rows.count() == 8
    assert set(rows.locator("[data-status]").all_inner_texts()) == {"done"}
    _shot(page, "03-jobs-done")

    # A job's page: its history as a timeline, its metadata, its flow run.
    rows.first.locator("a").click()
    page.wait_for_url(re.compile(r".*/ui/jobs/\d+$"))
    steps = page.locator("#history li").all_inner_texts()
    assert len(steps) == 12 and "initialized" in steps[0] and "done" in steps[-1]
    assert page.locator("details summary").count() >= 5  # one per step's metadata
    assert page.locator("a[href*='/runs/flow-run/']").count() >= 1
    _shot(page, "04-job")

    # Three failed jobs; the table of all the demo type's jobs is open while they are retried.
    failed_ids = demo_store.insert_jobs(
        [NewJob(DEMO_TYPE, f"console-failure-{i}", queue="snow") for i in range(3)]
    ).inserted_ids
    demo_store.transition_many(
        failed_ids,
        Status.INTERNAL_ERROR,
        expected_from=Status.INITIALIZED,
        message="exit code 1",
        error_class="ContainerFailed",
    )
    watcher = context.new_page()
    watcher.set_default_timeout(LIVE_TIMEOUT_MS)
    watcher.goto(f"{console.url}/ui/jobs?job_type={DEMO_TYPE}")
    watcher.wait_for_selector("#live-state.on")
    for job_id in failed_ids:
        cell = watcher.locator(f'tr[data-job-id="{job_id}"] [data-status]')
        assert cell.inner_text() == "internal_error"

    page.goto(f"{console.url}/ui/jobs?phase=failed")
    assert page.locator("#job-table tbody tr[data-job-id]").count() == 3
    page.click("#bulk-retry")
    assert page.locator("h1").inner_text() == "Retry 3 jobs?"
    _shot(page, "05-bulk-confirm")
    page.click("#confirm")
    page.wait_for_selector(".flash")
    assert "3 jobs retried" in page.locator(".flash").inner_text()

    # The open table changed live, without a reload.
    for job_id in failed_ids:
        watcher.wait_for_selector(
            f'tr[data-job-id="{job_id}"] [data-status]:text-is("ready")', timeout=LIVE_TIMEOUT_MS
        )
    _shot(watcher, "06-jobs-live")
    assert {j.status for j in demo_store.get_jobs(failed_ids)} == {"ready"}
    context.close()


def test_maintenance_publishes_the_production_status_artifact(
    demo: Demo, jobline_env: Callable[[Settings], Settings]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.maintenance import STATUS_ARTIFACT, maintenance

    jobline_env(Settings(database_url=demo.database_url, data_dir=demo.data_dir))
    maintenance()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[STATUS_ARTIFACT]))
        )
    assert artifacts, "no production-status artifact"
    report = str(artifacts[-1].data)
    assert artifacts[-1].type == "markdown"
    row = next(line for line in report.splitlines() if line.startswith(f"| {DEMO_TYPE}"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "11" and cells[4] == "8"  # jobs, done (3 were retried above)
    assert cells[-1] == "3.0 h"
