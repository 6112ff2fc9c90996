"""The REST API against a real ``jobline api`` process on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from db.migrate import head_revision
from db.records import config_key, product_key
from db.statuses import Status
from db.store import JobStore
from jobtypes.base import Configuration
from jobtypes.demo import SnowCover
from tests.integration import api_server as server_support
from tests.integration.api_server import (
    HAPPY_PATH,
    JOB_TYPE,
    ApiServer,
)

pytestmark = pytest.mark.slow
api_server = server_support.api_server  # the fixture


@pytest.fixture
def client(api_server: ApiServer, pg_store: JobStore) -> Iterator[httpx.Client]:
    """A client with the token, on an emptied database."""
    with api_server.client() as http:
        yield http


def submit(client: httpx.Client, product_id: str = "P1", **fields: object) -> httpx.Response:
    return client.post("/jobs", json={"job_type": JOB_TYPE, "product_id": product_id, **fields})


def job_count(store: JobStore) -> int:
    return len(store.list_jobs(limit=10_000).jobs)


def drive(store: JobStore, job_id: int, path: tuple[str, ...], pause: float = 0.0) -> None:
    """Move a job along ``path`` with the store, as a worker would."""
    current = store.get_job(job_id, touch=False).status
    for status in path:
        time.sleep(pause)
        store.transition(job_id, status, expected_from=current)
        current = status


def error_fields(response: httpx.Response) -> list[str]:
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    return [error["field"] for error in body["errors"]]


# ------------------------------------------------------------------------ health, auth


def test_health_needs_no_token_and_reports_the_revision(api_server: ApiServer) -> None:
    response = httpx.get(f"{api_server.url}/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "reachable",
        "revision": head_revision(),
    }


@pytest.mark.parametrize("token", [None, "wrong-token"])
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/1"), ("GET", "/events")],
)
def test_requests_without_the_right_token_get_401(
    api_server: ApiServer, pg_store: JobStore, token: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.request(
        method,
        f"{api_server.url}{path}",
        headers=headers,
        json={"job_type": JOB_TYPE, "product_id": "P1"} if method == "POST" else None,
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert error_fields(response) == ["authorization"]
    assert job_count(pg_store) == 0


# ----------------------------------------------------------------------------- create


def test_create_answers_201_then_200_for_the_identical_job(
    client: httpx.Client, pg_store: JobStore
) -> None:
    first = submit(client, priority=5, tile_id="T32TLR")
    assert first.status_code == 201
    job = first.json()
    assert first.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "initialized"
    assert job["queue"] == "snow"  # the job type's
    assert job["key"] == product_key(SnowCover.name, "P1").hex()

    again = submit(client, priority=9)  # other fields do not make another job
    assert again.status_code == 200
    assert again.json()["id"] == job["id"]
    assert again.json()["priority"] == 5
    assert job_count(pg_store) == 1


def test_a_config_only_job_is_keyed_by_its_config(client: httpx.Client) -> None:
    body = {"job_type": JOB_TYPE, "config": {"b": 2, "a": [1, 2]}}
    first = client.post("/jobs", json=body)
    assert first.status_code == 201
    reordered = client.post("/jobs", json={"job_type": JOB_TYPE, "config": {"a": [1, 2], "b": 2}})
    assert reordered.status_code == 200
    assert reordered.json()["id"] == first.json()["id"]
    assert first.json()["key"] == config_key(SnowCover.name, {"a": [1, 2], "b": 2}).hex()
    assert client.post("/jobs", json={**body, "config": {"b": 3}}).status_code == 201


def test_requesting_an_expired_job_again_reinitializes_it(
    client: httpx.Client, pg_store: JobStore
) -> None:
    job_id = submit(client).json()["id"]
    drive(pg_store, job_id, (*HAPPY_PATH, "expired"))
    again = submit(client)
    assert again.status_code == 200
    assert again.json()["status"] == "initialized"


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"job_type": "no_such_module:Type", "product_id": "P"}, "job_type", 422),
        ({"job_type": "jobtypes.base:Product", "product_id": "P"}, "job_type", 422),
        ({"job_type": "not an import path", "product_id": "P"}, "job_type", 422),
        ({"job_type": JOB_TYPE}, "product_id", 422),
        ({"job_type": JOB_TYPE, "product_id": "P", "status": "done"}, "status", 422),
        ({"job_type": JOB_TYPE, "product_id": "P", "priority": "high"}, "priority", 422),
        ({"job_type": JOB_TYPE, "product_id": "P", "priority": 2**40}, "priority", 422),
        ({"job_type": JOB_TYPE, "product_id": "P\x00"}, "product_id", 422),
        ({"job_type": JOB_TYPE, "product_id": "P", "tile_id": "T" * 65}, "tile_id", 422),
        ({"job_type": JOB_TYPE, "product_id": "P", "config": {"k": "\x00"}}, "config", 422),
    ],
)
def test_bad_submissions_name_the_field_and_change_nothing(
    client: httpx.Client, pg_store: JobStore, body: dict[str, object], field: str, status: int
) -> None:
    response = client.post("/jobs", json=body)
    assert response.status_code == status, response.text
    assert field in error_fields(response)
    assert response.json()["detail"]
    assert job_count(pg_store) == 0


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'{"job_type": "jobtypes.demo:SnowCover", "product_id": ', 400),
        (b'{"job_type": "jobtypes.demo:SnowCover", "product_id": "P", "config": {"x": NaN}}', 422),
        (b"[1, 2, 3]", 422),
        (
            b'{"job_type": "jobtypes.demo:SnowCover", "product_id": "' + b"x" * 2_000_000 + b'"}',
            413,
        ),
    ],
)
def test_malformed_or_oversized_bodies_are_refused(
    client: httpx.Client, pg_store: JobStore, content: bytes, status: int
) -> None:
    response = client.post("/jobs", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert error_fields(response)
    assert job_count(pg_store) == 0


def test_two_hundred_concurrent_identical_posts_create_one_job(
    client: httpx.Client, api_server: ApiServer, pg_store: JobStore
) -> None:
    start = threading.Barrier(200, timeout=30)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)

    with api_server.client(limits=limits, timeout=60.0) as shared:

        def post(_: int) -> tuple[int, int]:
            start.wait()
            response = submit(shared, "CONCURRENT")
            return response.status_code, response.json()["id"]

        with ThreadPoolExecutor(max_workers=200) as pool:
            results = list(pool.map(post, range(200)))

    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 199 + [201]
    assert len({job_id for _, job_id in results}) == 1
    assert job_count(pg_store) == 1
    assert len(pg_store.history(results[0][1])) == 1


# ------------------------------------------------------------------------------- read


def test_list_filters_and_pages(client: httpx.Client, pg_store: JobStore) -> None:
    ids = [submit(client, f"P{n}", tile_id="T1" if n % 2 else "T2").json()["id"] for n in range(5)]
    drive(pg_store, ids[0], ("configured", "ready"))

    seen, cursor = [], None
    while True:
        page = client.get("/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200
        seen += [job["id"] for job in page.json()["jobs"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == ids

    ready = client.get("/jobs", params={"status": "ready"}).json()["jobs"]
    assert [job["id"] for job in ready] == [ids[0]]
    queued = client.get("/jobs", params={"phase": "queued", "tile_id": "T1"}).json()["jobs"]
    assert [job["id"] for job in queued] == [ids[1], ids[3]]
    assert client.get("/jobs", params={"phase": "complete", "status": "ready"}).json() == {
        "jobs": [],
        "next_cursor": None,
    }
    bad = client.get("/jobs", params={"status": "finished", "limit": 0})
    assert bad.status_code == 422
    assert set(error_fields(bad)) == {"status.0", "limit"}


def test_get_job_and_its_history(client: httpx.Client, pg_store: JobStore) -> None:
    job_id = submit(client).json()["id"]
    drive(pg_store, job_id, ("configured", "ready"))
    job = client.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["phase"], job["status_id"]) == ("ready", "queued", 3)
    history = client.get(f"/jobs/{job_id}/history").json()
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        (None, "initialized"),
        ("initialized", "configured"),
        ("configured", "ready"),
    ]
    missing = client.get("/jobs/999999")
    assert missing.status_code == 404
    assert error_fields(missing) == ["job_id"]


# ------------------------------------------------------------------------------ patch


def test_patch_changes_documented_fields(
    client: httpx.Client, api_server: ApiServer, pg_store: JobStore
) -> None:
    job_id = submit(client).json()["id"]
    folder = f"file://{api_server.data_dir}/output/snow_cover/no-tile/snow_cover_P1/"
    response = client.patch(f"/jobs/{job_id}", json={"priority": 7, "output_path": folder})
    assert response.status_code == 200
    assert (response.json()["priority"], response.json()["output_path"]) == (7, folder)
    assert len(pg_store.history(job_id)) == 1  # no status change, no history row

    moved = client.patch(
        f"/jobs/{job_id}", json={"status": "configured", "message": "by a partner", "priority": 1}
    )
    assert moved.status_code == 200
    assert (moved.json()["status"], moved.json()["priority"]) == ("configured", 1)
    assert pg_store.history(job_id)[-1].message == "by a partner"


def test_an_illegal_status_patch_is_409_and_changes_nothing(
    client: httpx.Client, pg_store: JobStore
) -> None:
    job_id = submit(client).json()["id"]
    response = client.patch(f"/jobs/{job_id}", json={"status": "done", "priority": 3})
    assert response.status_code == 409
    assert "initialized -> done" in response.json()["detail"]
    assert error_fields(response) == ["status"]
    job = pg_store.get_job(job_id, touch=False)
    assert (job.status, job.priority) == ("initialized", 0)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"job_type": "x:Y"}, "job_type"),
        ({"attempts": 0}, "attempts"),
        ({"status": "sleeping"}, "status"),
        ({"status": None}, "status"),
        ({"message": "no status change"}, "message"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_patches_name_the_field(
    client: httpx.Client, pg_store: JobStore, patch: dict[str, object], field: str
) -> None:
    job_id = submit(client).json()["id"]
    response = client.patch(f"/jobs/{job_id}", json=patch)
    assert response.status_code == 422, response.text
    assert field in error_fields(response)
    assert pg_store.get_job(job_id, touch=False).status == "initialized"


# ------------------------------------------------------------------- retry and cancel


def test_retry_a_failed_job_and_cancel_it(client: httpx.Client, pg_store: JobStore) -> None:
    job_id = submit(client).json()["id"]
    not_failed = client.post(f"/jobs/{job_id}/retry")
    assert not_failed.status_code == 409
    assert "only a failed job" in not_failed.json()["detail"]

    drive(pg_store, job_id, ("configured", "ready", "queued", "started", "external_error"))
    retried = client.post(f"/jobs/{job_id}/retry", json={"message": "storage is back"})
    assert retried.status_code == 200
    assert retried.json()["status"] == "ready"
    assert [c.to_status for c in pg_store.history(job_id)][-2:] == ["error_checked", "ready"]

    cancelled = client.post(f"/jobs/{job_id}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200  # idempotent
    assert client.post("/jobs/424242/cancel").status_code == 404


def test_cancel_is_refused_where_the_state_machine_says_so(
    client: httpx.Client, pg_store: JobStore
) -> None:
    job_id = submit(client).json()["id"]
    drive(pg_store, job_id, HAPPY_PATH)
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert "done -> cancelled" in response.json()["detail"]


# --------------------------------------------------------------------------- metadata


def test_metadata_round_trip(client: httpx.Client, pg_store: JobStore) -> None:
    job_id = submit(client).json()["id"]
    document = {"checked_by": "qa", "scores": [0.5, 1], "nested": {"ok": True, "none": None}}
    put = client.put(f"/jobs/{job_id}/metadata/review", json=document)
    assert put.status_code == 200
    assert put.json()["model"] == "api.schemas.ApiMetadata"

    got = client.get(f"/jobs/{job_id}/metadata/review")
    assert got.json()["document"] == document
    replaced = client.put(f"/jobs/{job_id}/metadata/review", json={"checked_by": "ops"})
    assert replaced.json()["document"] == {"checked_by": "ops"}
    listed = client.get(f"/jobs/{job_id}/metadata").json()
    assert [row["key"] for row in listed["items"]] == ["review"]
    assert listed["next_after"] is None

    assert client.delete(f"/jobs/{job_id}/metadata/review").status_code == 204
    gone = client.get(f"/jobs/{job_id}/metadata/review")
    assert gone.status_code == 404
    assert error_fields(gone) == ["key"]
    assert client.delete(f"/jobs/{job_id}/metadata/review").status_code == 404
    assert client.get("/jobs/999999/metadata").status_code == 404


def test_metadata_a_task_wrote_is_not_overwritten(client: httpx.Client, pg_store: JobStore) -> None:
    job_id = submit(client).json()["id"]
    pg_store.set_metadata(job_id, "configure", Configuration(ready=False, reason="waits"))
    response = client.put(f"/jobs/{job_id}/metadata/configure", json={"ready": True})
    assert response.status_code == 409
    assert error_fields(response) == ["key"]
    stored = pg_store.get_metadata(job_id, "configure", Configuration)
    assert stored.ready is False
    listed = client.get(f"/jobs/{job_id}/metadata").json()["items"]
    assert listed[0]["model"] == "jobtypes.base.Configuration"


@pytest.mark.parametrize(
    ("content", "field"),
    [(b"[1]", "body"), (b'{"a": Infinity}', "body"), (b'{"a": "\\u0000"}', "body")],
)
def test_metadata_must_be_a_plain_json_object(
    client: httpx.Client, pg_store: JobStore, content: bytes, field: str
) -> None:
    job_id = submit(client).json()["id"]
    response = client.put(
        f"/jobs/{job_id}/metadata/x", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert field in error_fields(response)
    assert pg_store.list_metadata(job_id) == {}


# ------------------------------------------------------------------------------- wait


def test_wait_returns_when_another_thread_finishes_the_job(
    client: httpx.Client, pg_store: JobStore
) -> None:
    job_id = submit(client).json()["id"]
    worker = threading.Thread(target=drive, args=(pg_store, job_id, HAPPY_PATH, 0.05))
    started = time.monotonic()
    worker.start()
    response = client.get(f"/jobs/{job_id}/wait", params={"timeout": 30})
    elapsed = time.monotonic() - started
    worker.join(10)
    assert response.status_code == 200
    body = response.json()
    assert (body["terminal"], body["timed_out"], body["job"]["status"]) == (True, False, "done")
    assert elapsed < 10


def test_wait_times_out_with_the_current_job(client: httpx.Client) -> None:
    job_id = submit(client).json()["id"]
    started = time.monotonic()
    body = client.get(f"/jobs/{job_id}/wait", params={"timeout": 0.5}).json()
    assert 0.4 < time.monotonic() - started < 5
    assert (body["terminal"], body["timed_out"]) == (False, True)
    assert body["job"]["status"] == Status.INITIALIZED
