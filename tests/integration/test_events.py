"""Live status events: NOTIFY payloads, the SSE stream, resuming with Last-Event-ID, and the
feed's handling of changes that commit out of id order."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from api.live import LiveFeed
from api.routers.events import open_feed
from cli.main import app
from db.migrate import upgrade
from db.notify import (
    ANY_CHANGE,
    Listener,
    Notice,
    NoticeHub,
    StatusEvent,
    StatusFeed,
    parse_notice,
)
from db.records import NewJob
from db.store import JobStore
from jobline.settings import Settings
from tests.integration import api_server as server_support
from tests.integration.api_server import (
    HAPPY_PATH,
    JOB_TYPE,
    ApiServer,
    EventReader,
    start_server,
    stop_server,
)
from tests.support.database import empty_database
from tests.support.jobtypes import write_partner_module, write_products

pytestmark = pytest.mark.slow
api_server = server_support.api_server  # the fixture


def new_job(store: JobStore, product_id: str, job_type: str = JOB_TYPE) -> int:
    return store.insert_jobs([NewJob(job_type=job_type, product_id=product_id)]).inserted_ids[0]


def drive(store: JobStore, job_id: int, path: tuple[str, ...], pause: float = 0.0) -> None:
    current = store.get_job(job_id, touch=False).status
    for status in path:
        time.sleep(pause)
        store.transition(job_id, status, expected_from=current)
        current = status


def statuses(events: list[tuple[int, dict[str, object]]]) -> list[object]:
    return [data["to_status"] for _, data in events]


def reached(status: str):  # type: ignore[no-untyped-def]
    return lambda events: events[-1][1]["to_status"] == status


# ---------------------------------------------------------------------------- notices


def test_parse_notice() -> None:
    assert parse_notice("42:7,9") == Notice(42, frozenset({7, 9}))
    assert parse_notice("42:*") == Notice(42, None)
    assert parse_notice("garbage") == ANY_CHANGE
    assert parse_notice("42:7").concerns(7)
    assert not parse_notice("42:7").concerns(8)
    assert parse_notice("42:*").concerns(8)


def test_a_committed_transition_notifies_listeners(pg_store: JobStore) -> None:
    job_id = new_job(pg_store, "P1")
    with Listener(pg_store.engine) as listener:
        assert listener.wait(0.2) == []
        pg_store.transition(job_id, "configured", expected_from="initialized")
        notices = listener.wait(5)
    last = pg_store.history(job_id)[-1].id
    assert notices == [Notice(last, frozenset({job_id}))]


# ---------------------------------------------------------------------------- streams


def test_a_client_sees_every_transition_of_a_job_in_order(
    api_server: ApiServer, pg_store: JobStore
) -> None:
    job_id = new_job(pg_store, "P1")
    other = new_job(pg_store, "P2")
    reader = EventReader(api_server, {"job_id": job_id}, stop_when=reached("done")).start()
    worker = threading.Thread(target=drive, args=(pg_store, job_id, HAPPY_PATH, 0.01))
    noise = threading.Thread(target=drive, args=(pg_store, other, HAPPY_PATH, 0.01))
    worker.start()
    noise.start()
    events = reader.wait_until_finished()
    worker.join(10)
    noise.join(10)
    # The job's whole history (replayed from its first change), then live, in order.
    assert statuses(events) == ["initialized", *HAPPY_PATH]
    assert [event_id for event_id, _ in events] == [c.id for c in pg_store.history(job_id)]
    assert {data["job_id"] for _, data in events} == {job_id}


def test_reconnecting_with_last_event_id_loses_and_repeats_nothing(
    api_server: ApiServer, pg_store: JobStore
) -> None:
    job_id = new_job(pg_store, "P1")
    first = EventReader(api_server, {"job_id": job_id}, stop_when=reached("queued")).start()
    drive(pg_store, job_id, HAPPY_PATH[:3])  # configured, ready, queued
    before = first.wait_until_finished()
    drive(pg_store, job_id, HAPPY_PATH[3:6])  # while nobody listens
    second = EventReader(
        api_server, {"job_id": job_id}, last_event_id=before[-1][0], stop_when=reached("done")
    ).start()
    drive(pg_store, job_id, HAPPY_PATH[6:], pause=0.01)
    after = second.wait_until_finished()

    ids = [event_id for event_id, _ in before + after]
    assert ids == [c.id for c in pg_store.history(job_id)]
    assert statuses(before + after) == ["initialized", *HAPPY_PATH]
    assert statuses(after)[:3] == list(HAPPY_PATH[3:6])


def test_the_stream_filters_by_job_type(api_server: ApiServer, pg_store: JobStore) -> None:
    ours = new_job(pg_store, "P1")
    theirs = new_job(pg_store, "P1", job_type="partner.types:Other")
    reader = EventReader(api_server, {"job_type": JOB_TYPE}, stop_when=reached("ready")).start()
    drive(pg_store, theirs, ("configured", "ready"))
    drive(pg_store, ours, ("configured", "ready"))
    events = reader.wait_until_finished()
    assert [data["job_id"] for _, data in events] == [ours, ours]


class ManualHub(NoticeHub):
    """A hub without a listener: its notices come when the test delivers them."""

    def deliver(self) -> None:
        for callback in list(self._subscribers.values()):
            callback(ANY_CHANGE)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the live feed did not get there"
        await asyncio.sleep(0.01)


def test_a_stream_opened_after_the_history_was_emptied_gets_none_of_the_old_history(
    pg_settings: Settings, pg_store: JobStore
) -> None:
    """Ids restart at 1 after TRUNCATE ... RESTART IDENTITY (every test here does it). A stream
    opened before any notice told the server's feed must not take the old history's buffered
    changes above its start (once a flaky failure of the job-type filter test)."""

    async def scenario() -> tuple[list[StatusEvent], list[StatusEvent], int, int]:
        hub = ManualHub(pg_store.engine)
        live = LiveFeed(pg_store, hub, idle_recheck=3600)
        await live.start()
        try:
            await until(lambda: live.started)
            drive(pg_store, new_job(pg_store, "OLD"), HAPPY_PATH)
            hub.deliver()
            await until(lambda: live.cursor == 1 + len(HAPPY_PATH))
            empty_database(pg_settings)
            job_id = new_job(pg_store, "NEW")
            drive(pg_store, job_id, ("configured",))  # no notice: the feed knows nothing
            start = await open_feed(pg_store, pg_settings, live, job_type=JOB_TYPE)
            with live.subscribe(start.after, job_type=start.job_type) as changes:
                before = await changes.next_events(0.3)
                drive(pg_store, job_id, ("ready",))
                hub.deliver()
                after = await changes.next_events(10)
            return before, after, start.after, live.restarts
        finally:
            await live.stop()

    before, after, start, restarts = asyncio.run(scenario())
    assert (start, restarts) == (2, 1)
    assert before == []
    assert [(event.id, event.to_status) for event in after] == [(3, "ready")]


def test_a_change_is_held_back_until_an_earlier_id_commits(
    api_server: ApiServer, pg_store: JobStore
) -> None:
    """History ids come from a sequence, but transactions commit in any order: the stream must
    not deliver id N+1 while N may still appear (a client resuming after N+1 would lose N)."""
    slow, fast = new_job(pg_store, "SLOW"), new_job(pg_store, "FAST")
    reader = EventReader(api_server, stop_when=lambda events: len(events) == 2).start()
    with pg_store.engine.connect() as held:
        held.begin()
        held.execute(text("UPDATE jobs SET status = 'configured' WHERE id = :id"), {"id": slow})
        drive(pg_store, fast, ("configured",))  # commits the higher id first
        time.sleep(1.0)
        assert reader.events == []
        held.commit()
    events = reader.wait_until_finished(10)
    assert [data["job_id"] for _, data in events] == [slow, fast]
    assert events[0][0] < events[1][0]


def test_an_aborted_change_does_not_stall_the_stream(
    api_server: ApiServer, pg_store: JobStore
) -> None:
    aborted, fast = new_job(pg_store, "ABORTED"), new_job(pg_store, "FAST")
    reader = EventReader(api_server, stop_when=lambda events: len(events) == 1).start()
    with pg_store.engine.connect() as held:
        held.begin()
        held.execute(text("UPDATE jobs SET status = 'configured' WHERE id = :id"), {"id": aborted})
        drive(pg_store, fast, ("configured",))
        time.sleep(0.5)
        held.rollback()
    started = time.monotonic()
    events = reader.wait_until_finished(10)
    assert time.monotonic() - started < 5  # the gap is passed once its transaction ended
    assert [data["job_id"] for _, data in events] == [fast]


def test_the_stream_follows_the_process_job_flow(
    api_server: ApiServer,
    pg_settings: Settings,
    prefect_api_url: str,
    jobline_env: Callable[[Settings], Settings],
    tmp_path: Path,
) -> None:
    """The lead's ``process-job`` flow drives a real job; a client follows it live."""
    from flows.discover import discover_jobs
    from flows.process import process_job

    settings = jobline_env(
        pg_settings.model_copy(update={"retry_base_seconds": 0.0, "runner": "local"})
    )
    inputs = tmp_path / "partner-input"
    job_type = write_partner_module(tmp_path / "partner-src", inputs, tmp_path / "outputs")
    write_products(inputs, ["ok-followed"])
    discover_jobs(job_type=job_type)
    store = JobStore.from_settings(settings)
    try:
        (job,) = store.list_jobs().jobs
        reader = EventReader(api_server, {"job_id": job.id}, stop_when=reached("done")).start()
        outcome = process_job(job_id=job.id)
        events = reader.wait_until_finished(60)
        history = store.history(job.id)
    finally:
        store.engine.dispose()
    assert outcome is not None and outcome.ok
    assert statuses(events) == ["initialized", *HAPPY_PATH]
    assert [event_id for event_id, _ in events] == [change.id for change in history]
    assert all(data["flow_run_id"] for _, data in events[3:])  # claimed onwards: the flow's


def test_the_feed_passes_a_gap_held_longer_than_its_timeout(pg_store: JobStore) -> None:
    held_job, fast = new_job(pg_store, "HELD"), new_job(pg_store, "FAST")
    now = [0.0]
    feed = StatusFeed(
        pg_store, after=pg_store.last_change_id(), gap_timeout=30, clock=lambda: now[0]
    )
    with pg_store.engine.connect() as held:
        held.begin()
        held.execute(text("UPDATE jobs SET status = 'configured' WHERE id = :id"), {"id": held_job})
        drive(pg_store, fast, ("configured",))
        assert feed.read() == []
        assert feed.waiting_on_gap
        now[0] = 29.0
        assert feed.read() == []
        now[0] = 31.0  # a transaction open this long is taken for stuck: move on
        assert [event.job_id for event in feed.read()] == [fast]
        assert not feed.waiting_on_gap
        held.rollback()


def test_bad_stream_requests_are_refused(api_server: ApiServer, pg_store: JobStore) -> None:
    with api_server.client() as client:
        unknown = client.get("/events", params={"job_id": 999_999})
        assert unknown.status_code == 404
        malformed = client.get("/events", headers={"Last-Event-ID": "yesterday"})
        assert malformed.status_code == 422
        assert malformed.json()["errors"][0]["field"] == "last-event-id"


def test_events_and_wait_on_sqlite_by_polling(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings)
    store = JobStore.from_settings(settings)
    server = start_server(settings.resolved_database_url, settings.data_dir)
    try:
        job_id = new_job(store, "P1")
        reader = EventReader(server, {"job_id": job_id}, stop_when=reached("done")).start()
        worker = threading.Thread(target=drive, args=(store, job_id, HAPPY_PATH, 0.02))
        worker.start()
        with server.client() as client:
            waited = client.get(f"/jobs/{job_id}/wait", params={"timeout": 30}).json()
        events = reader.wait_until_finished()
        worker.join(10)
    finally:
        stop_server(server)
        store.engine.dispose()
    assert waited["job"]["status"] == "done"
    assert statuses(events) == ["initialized", *HAPPY_PATH]


def test_the_server_needs_a_token_unless_no_auth_on_loopback(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings)
    url = settings.resolved_database_url
    with pytest.raises(RuntimeError, match="JOBLINE_API_TOKEN"):
        start_server(url, settings.data_dir, token=None)
    # Refused before anything binds: no need for a process.
    refused = CliRunner().invoke(app, ["api", "--no-auth", "--host", "0.0.0.0", "--port", "1"])
    assert refused.exit_code == 2
    assert "loopback" in refused.output
    open_server = start_server(url, settings.data_dir, token=None, extra_args=("--no-auth",))
    try:
        assert httpx.get(f"{open_server.url}/jobs").json() == {"jobs": [], "next_cursor": None}
    finally:
        stop_server(open_server)
