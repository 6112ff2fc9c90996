"""``/stats``, ``late=true``, bulk retry and cancel, notes and pauses against a real ``jobline
api`` process on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from db.records import NewJob
from db.statuses import Status
from db.store import JobStore
from tests.integration import api_server as server_support
from tests.integration.api_server import JOB_TYPE, ApiServer

pytestmark = pytest.mark.slow
api_server = server_support.api_server  # the fixture


@pytest.fixture
def client(api_server: ApiServer, pg_store: JobStore) -> Iterator[httpx.Client]:
    with api_server.client() as http:
        yield http


def _jobs(store: JobStore, count: int, *, due: datetime | None = None) -> list[int]:
    return store.insert_jobs(
        [NewJob(JOB_TYPE, f"P{i}", queue="snow", due_at=due) for i in range(count)]
    ).inserted_ids


def test_stats_and_the_late_filter(client: httpx.Client, pg_store: JobStore) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    late = _jobs(pg_store, 2, due=past)
    answer = client.get("/stats")
    assert answer.status_code == 200
    assert "app;dur=" in answer.headers["server-timing"]
    [snow] = answer.json()["job_types"]
    assert (snow["job_type"], snow["total"], snow["late"]) == (JOB_TYPE, 2, 2)
    assert snow["by_status"] == {"initialized": 2}
    assert snow["timeliness_24h"]["target_seconds"] == 3 * 3600  # the demo's target
    page = client.get("/jobs", params={"late": "true"}).json()
    assert [job["id"] for job in page["jobs"]] == late
    assert all(job["late"] for job in page["jobs"])
    pg_store.cancel(late[0])
    page = client.get("/jobs", params={"late": "true"}).json()
    assert [job["id"] for job in page["jobs"]] == late[1:]
    assert [day["day"] for day in snow["days"]] == []  # nothing finished yet


def test_bulk_retry_and_cancel_with_a_dry_run_first(
    client: httpx.Client, pg_store: JobStore
) -> None:
    ids = _jobs(pg_store, 4)
    pg_store.transition_many(ids[:3], Status.INTERNAL_ERROR, expected_from=Status.INITIALIZED)
    failed = {"phase": "failed", "job_type": "snow_cover"}
    dry = client.post("/jobs/retry", json={**failed, "dry_run": True})
    assert dry.json() == {"dry_run": True, "jobs": 3}
    assert {j.status for j in pg_store.get_jobs(ids[:3])} == {"internal_error"}
    done = client.post("/jobs/retry", json=failed)
    assert done.json() == {"dry_run": False, "jobs": 3}
    assert {j.status for j in pg_store.get_jobs(ids[:3])} == {"ready"}
    refused = client.post("/jobs/cancel", json={"dry_run": True})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "filter"
    cancelled = client.post("/jobs/cancel", json={"status": ["initialized"]})
    assert cancelled.json()["jobs"] == 1
    assert pg_store.get_job(ids[3]).status == "cancelled"


def test_notes_show_in_the_history(client: httpx.Client, pg_store: JobStore) -> None:
    [job_id] = _jobs(pg_store, 1)
    answer = client.post(
        f"/jobs/{job_id}/notes", json={"note": "waiting for L1C v2", "author": "ops"}
    )
    assert answer.status_code == 201, answer.text
    history = client.get(f"/jobs/{job_id}/history").json()
    assert [(h["kind"], h["to_status"]) for h in history] == [
        ("status", "initialized"),
        ("note", "initialized"),
    ]
    assert history[-1]["message"] == "waiting for L1C v2"
    assert client.post(f"/jobs/{job_id}/notes", json={"note": ""}).status_code == 422
    assert client.post("/jobs/999999/notes", json={"note": "x"}).status_code == 404
    assert pg_store.get_job(job_id).status == "initialized"


def test_pausing_a_job_type_and_a_queue(client: httpx.Client, pg_store: JobStore) -> None:
    ids = _jobs(pg_store, 1)
    pg_store.transition_many(ids, Status.CONFIGURED, expected_from=Status.INITIALIZED)
    pg_store.transition_many(ids, Status.READY, expected_from=Status.CONFIGURED)
    paused = client.put("/pauses/job_type/snow_cover", json={"reason": "bad auxiliary data"})
    assert paused.status_code == 200 and paused.json()["name"] == JOB_TYPE
    assert pg_store.claim("snow", 5, "w") == []
    [snow] = client.get("/stats").json()["job_types"]
    assert snow["paused"]
    assert client.delete("/pauses/job_type/snow_cover").status_code == 204
    assert client.delete("/pauses/job_type/snow_cover").status_code == 404
    assert client.put("/pauses/queue/snow").status_code == 200
    assert [p["kind"] for p in client.get("/pauses").json()] == ["queue"]
    assert pg_store.claim("snow", 5, "w") == []
    assert client.put("/pauses/tile/T1").status_code == 422
    assert client.delete("/pauses/queue/snow").status_code == 204
    assert [job.id for job in pg_store.claim("snow", 5, "w")] == ids
