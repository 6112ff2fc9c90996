"""The API probed as an attacker would: each finding of the hardening review is refused, with its
status code, and nothing changes.

1. client-chosen imports; 2. the empty token; 3. lifecycle bypass and expiry deleting what a
client points at; 4. lone surrogates; 5. unbounded metadata and dot keys; 6. leaks and loose
ends (health, Host under --no-auth, ``status: null`` in the schema, the ``Allow`` header); 7.
streams holding the database. Most tests use a real ``jobline api`` process on PostgreSQL; the
import checks also run an app in this process, to look into its ``sys.modules``.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import create_engine, text, update

from api.app import create_app
from api.auth import MIN_TOKEN_LENGTH, check_serving, token_matches
from db.models import Job
from db.records import NewJob
from db.store import JobStore
from jobline.exceptions import ConfigurationError, JobTypeError
from jobline.settings import Settings
from tests.conftest import scratch_database
from tests.integration import api_server as server_support
from tests.integration.api_server import (
    JOB_TYPE,
    TOKEN,
    ApiServer,
    EventReader,
    free_port,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow
api_server = server_support.api_server  # the fixture

#: Modules whose import has effects: the Zen of Python, CPython's test runner, IDLE.
HOSTILE_MODULES = ("this", "test.autotest", "idlelib.idle")
SURROGATE = "\\ud800"  # as JSON spells it: a lone UTF-16 surrogate
JOBLINE_API = (sys.executable, "-c", "from cli.main import main; main()", "api")


@pytest.fixture
def client(api_server: ApiServer, pg_store: JobStore) -> Iterator[httpx.Client]:
    """A client with the token, on an emptied database."""
    with api_server.client() as http:
        yield http


def submit(client: httpx.Client, product_id: str = "P1", **fields: object) -> httpx.Response:
    return client.post("/jobs", json={"job_type": JOB_TYPE, "product_id": product_id, **fields})


def raw_json(client: httpx.Client, method: str, path: str, body: str) -> httpx.Response:
    """A request whose JSON body is sent exactly as written (escapes included)."""
    return client.request(
        method, path, content=body.encode(), headers={"content-type": "application/json"}
    )


def error_fields(response: httpx.Response) -> list[str]:
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    return [error["field"] for error in body["errors"]]


def snapshot(store: JobStore) -> list[tuple[Any, ...]]:
    """Every job's state and its history length: what "nothing changed" compares."""
    jobs = store.list_jobs(limit=10_000).jobs
    return [
        (
            job.id,
            job.status,
            job.attempts,
            job.priority,
            job.output_path,
            job.tile_id,
            job.queue,
            len(store.history(job.id)),
            sorted(store.list_metadata(job.id)),
        )
        for job in jobs
    ]


def drive(store: JobStore, job_id: int, path: tuple[str, ...]) -> None:
    current = store.get_job(job_id, touch=False).status
    for status in path:
        store.transition(job_id, status, expected_from=current)
        current = status


# -------------------------------------------------------- 1. no client-chosen imports


@pytest.fixture
def in_process(pg_settings: Settings) -> Iterator[TestClient]:
    """The app in this process (its lifespan on the test database), with the token."""
    settings = pg_settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as app:
        yield app


@pytest.mark.parametrize("module", HOSTILE_MODULES)
def test_a_job_type_naming_any_module_is_refused_without_importing_it(
    in_process: TestClient, pg_store: JobStore, module: str
) -> None:
    assert module not in sys.modules, "precondition: nothing imported it before"
    response = in_process.post("/jobs", json={"job_type": f"{module}:x", "product_id": "P"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["job_type"]
    assert module not in sys.modules, f"{module} was imported by the server"
    assert snapshot(pg_store) == []


def test_the_refusal_does_not_tell_whether_a_module_exists(in_process: TestClient) -> None:
    def refusal(job_type: str) -> str:
        response = in_process.post("/jobs", json={"job_type": job_type, "product_id": "P"})
        assert response.status_code == 422
        return response.json()["detail"].replace(repr(job_type), "<job type>")

    # A module that exists and is imported, one that exists and is not, one that does not.
    assert refusal("os:path") == refusal("this:x") == refusal("no_such_module_4711:X")


def test_cli_and_flow_parameters_resolve_job_types_only_through_the_registry(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main
    from jobline.settings import get_settings
    from tasks.lifecycle import job_type_for

    monkeypatch.setenv("JOBLINE_DATABASE_URL", pg_settings.database_url)
    monkeypatch.setenv("JOBLINE_DATA_DIR", str(pg_settings.data_dir))
    get_settings.cache_clear()
    try:
        monkeypatch.setattr(sys, "argv", ["jobline", "run", "this:x"])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 2
        assert "not a registered job type" in capsys.readouterr().err
        with pytest.raises(JobTypeError, match="not a registered job type"):
            job_type_for("this:x")  # what every flow's job_type parameter goes through
    finally:
        get_settings.cache_clear()
    assert "this" not in sys.modules


def test_registered_job_types_are_accepted_by_path_and_by_name(
    client: httpx.Client, pg_store: JobStore
) -> None:
    by_name = submit(client, job_type="snow_cover")
    assert by_name.status_code == 201
    assert by_name.json()["job_type"] == JOB_TYPE  # stored as its import path
    by_path = submit(client)
    assert (by_path.status_code, by_path.json()["id"]) == (200, by_name.json()["id"])
    listed = client.get("/jobs", params={"job_type": "snow_cover"}).json()["jobs"]
    assert [job["id"] for job in listed] == [by_name.json()["id"]]


# ------------------------------------------------------------------- 2. token rules


@pytest.mark.parametrize(("token", "host"), [("", "0.0.0.0"), ("   ", "127.0.0.1")])
def test_an_empty_or_blank_token_is_refused_at_start_up(
    pg_database_url: str, tmp_path: Path, token: str, host: str
) -> None:
    port = free_port()
    env = {**os.environ, "JOBLINE_DATABASE_URL": pg_database_url, "JOBLINE_API_TOKEN": token}
    done = subprocess.run(
        [*JOBLINE_API, "--host", host, "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "JOBLINE_API_TOKEN" in done.stderr and "counts as none" in done.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)


def test_a_short_token_is_refused_on_an_address_that_is_not_loopback(
    pg_database_url: str,
) -> None:
    short = Settings(database_url=pg_database_url, api_token="x" * (MIN_TOKEN_LENGTH - 1))
    with pytest.raises(ConfigurationError, match=f"at least {MIN_TOKEN_LENGTH} characters"):
        check_serving(short, "0.0.0.0", require_auth=True)
    with pytest.raises(ConfigurationError, match=f"at least {MIN_TOKEN_LENGTH}"):
        check_serving(short, None, require_auth=True)  # uvicorn --factory: address unknown
    check_serving(short, "127.0.0.1", require_auth=True)  # loopback: allowed
    long_enough = short.model_copy(update={"api_token": SecretStr("x" * MIN_TOKEN_LENGTH)})
    check_serving(long_enough, "0.0.0.0", require_auth=True)
    with pytest.raises(ConfigurationError, match="not a loopback address"):
        check_serving(short, "0.0.0.0", require_auth=False)
    done = subprocess.run(
        [*JOBLINE_API, "--host", "0.0.0.0"],
        env={**os.environ, "JOBLINE_API_TOKEN": "short-token", "JOBLINE_DATABASE_URL": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and f"at least {MIN_TOKEN_LENGTH}" in done.stderr


def test_tokens_are_compared_as_digests() -> None:
    expected = Settings(api_token="s" * 40).api_token
    assert expected is not None
    assert token_matches("s" * 40, expected)
    assert not token_matches("s" * 39, expected)
    assert not token_matches("s" * 40 + "x", expected)
    assert not token_matches("\ud800", expected)  # no UnicodeEncodeError on odd input


@pytest.fixture(scope="module")
def no_auth_server(
    pg_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    server = start_server(
        pg_database_url, tmp_path_factory.mktemp("no-auth"), token=None, extra_args=("--no-auth",)
    )
    yield server
    stop_server(server)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io"])
def test_without_a_token_a_host_that_is_not_loopback_is_refused(
    no_auth_server: ApiServer, pg_store: JobStore, host: str
) -> None:
    # What a page re-bound to 127.0.0.1 by DNS would send: its own name as the Host.
    port = int(no_auth_server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"job_type": JOB_TYPE, "product_id": "REBOUND"})
    connection.putrequest("POST", "/jobs", skip_host=True)
    connection.putheader("Host", host)
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body.encode())
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == 400
    assert [error["field"] for error in answer["errors"]] == ["host"]
    assert snapshot(pg_store) == []


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_without_a_token_loopback_hosts_are_served(
    no_auth_server: ApiServer, pg_store: JobStore, host: str
) -> None:
    port = int(no_auth_server.url.rsplit(":", 1)[1])
    response = httpx.get(
        f"{no_auth_server.url}/jobs", headers={"Host": f"{host}:{port}"}, timeout=10
    )
    assert response.status_code == 200


# ------------------------------------------------------------ 3. the lifecycle is workers'


def claimed_job(store: JobStore) -> tuple[int, str]:
    """A job claimed by a worker: queued, with a lease."""
    (job_id,) = store.insert_jobs([NewJob(JOB_TYPE, "LEASED", queue="snow")]).inserted_ids
    drive(store, job_id, ("configured", "ready"))
    (job,) = store.claim("snow", 1, "worker-1", job_ids=[job_id])
    assert job.lease_token
    return job_id, job.lease_token


def test_a_lease_less_patch_into_a_workers_status_is_409_and_changes_nothing(
    client: httpx.Client, pg_store: JobStore
) -> None:
    job_id, _ = claimed_job(pg_store)
    before = snapshot(pg_store)
    response = client.patch(f"/jobs/{job_id}", json={"status": "started"})
    assert response.status_code == 409
    assert error_fields(response) == ["lease_token"]
    assert snapshot(pg_store) == before
    job = pg_store.get_job(job_id, touch=False)
    assert (job.status, job.attempts, job.worker) == ("queued", 0, "worker-1")


@pytest.mark.parametrize(
    "status",
    ["queued", "pre_processing", "processing", "post_processing", "processed", "published"],
)
def test_every_workers_status_needs_the_lease(
    client: httpx.Client, pg_store: JobStore, status: str
) -> None:
    job_id = submit(client).json()["id"]
    drive(pg_store, job_id, ("configured", "ready", "queued", "internal_error", "error_checked"))
    before = snapshot(pg_store)  # error_checked may legally go anywhere: only the lease stops it
    response = client.patch(f"/jobs/{job_id}", json={"status": status})
    assert response.status_code == 409
    assert error_fields(response) == ["lease_token"]
    assert snapshot(pg_store) == before


def test_a_wrong_lease_is_409_and_changes_nothing(client: httpx.Client, pg_store: JobStore) -> None:
    job_id, _ = claimed_job(pg_store)
    before = snapshot(pg_store)
    response = client.patch(f"/jobs/{job_id}", json={"status": "started", "lease_token": "0" * 32})
    assert response.status_code == 409
    assert error_fields(response) == ["lease_token"]
    assert snapshot(pg_store) == before


def test_an_external_processor_claims_then_walks_the_job_with_its_lease(
    client: httpx.Client, api_server: ApiServer, pg_store: JobStore
) -> None:
    job_id = submit(client, tile_id="T32TLR").json()["id"]
    drive(pg_store, job_id, ("configured", "ready"))
    claim = client.post(f"/jobs/{job_id}/claim", json={"worker": "partner-hpc"})
    assert claim.status_code == 200, claim.text
    lease = claim.json()["lease"]["lease_token"]
    assert claim.json()["job"]["status"] == "queued"
    assert client.post(f"/jobs/{job_id}/claim", json={"worker": "other"}).status_code == 409
    beat = client.post(f"/jobs/{job_id}/heartbeat", json={"lease_token": lease})
    assert beat.status_code == 200
    folder = f"file://{api_server.data_dir}/output/snow_cover/T32TLR/snow_cover_P1/"
    for status in ("started", "pre_processing", "processing", "post_processing"):
        moved = client.patch(f"/jobs/{job_id}", json={"status": status, "lease_token": lease})
        assert moved.status_code == 200, moved.text
    done = client.patch(
        f"/jobs/{job_id}",
        json={"status": "processed", "lease_token": lease, "output_path": folder},
    )
    assert done.status_code == 200, done.text
    finished = client.patch(f"/jobs/{job_id}", json={"status": "done"})  # no lease after processed
    assert finished.status_code == 200
    job = pg_store.get_job(job_id, touch=False)
    assert (job.status, job.attempts, job.output_path) == ("done", 1, folder)
    assert [c.to_status for c in pg_store.history(job_id)][-7:] == [
        "queued",
        "started",
        "pre_processing",
        "processing",
        "post_processing",
        "processed",
        "done",
    ]
    lost = client.post(f"/jobs/{job_id}/heartbeat", json={"lease_token": lease})
    assert lost.status_code == 409 and error_fields(lost) == ["lease_token"]


def test_operator_transitions_stay_open_to_the_token_holder(
    client: httpx.Client, pg_store: JobStore
) -> None:
    job_id, _ = claimed_job(pg_store)
    drive(pg_store, job_id, ("started", "external_error"))
    checked = client.patch(f"/jobs/{job_id}", json={"status": "error_checked"})
    assert checked.status_code == 200
    assert client.post(f"/jobs/{job_id}/retry").json()["status"] == "ready"
    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"


@pytest.mark.parametrize(
    "output_path",
    [
        "file:///",
        "file:///etc",
        "OUTPUT/../../victim",
        "OUTPUT/%2e%2e/victim",
        "OUTPUT",  # the root itself: never a job's folder
        "OUTPUT//x",
        "OUTPUT/x?y",
        "s3://x/y",
        "/tmp/victim",
    ],
)
def test_an_output_path_outside_the_output_storage_is_refused(
    client: httpx.Client, api_server: ApiServer, pg_store: JobStore, output_path: str
) -> None:
    job_id = submit(client).json()["id"]
    before = snapshot(pg_store)
    path = output_path.replace("OUTPUT", f"file://{api_server.data_dir}/output")
    response = client.patch(f"/jobs/{job_id}", json={"output_path": path})
    assert response.status_code == 422, response.text
    assert error_fields(response) == ["output_path"]
    assert snapshot(pg_store) == before


def test_expiry_deletes_only_a_jobs_own_product_folder_whatever_the_database_says(
    pg_settings: Settings, pg_store: JobStore, tmp_path: Path
) -> None:
    """Outputs of expired jobs: only each job's own product folder under the output storage is
    removed, checked at deletion time; paths the database points elsewhere are kept."""
    from tasks.maintenance import run_maintenance

    settings = pg_settings.model_copy(
        update={"expire_deletes_outputs": True, "remove_orphan_containers": False}
    )
    root = settings.data_dir / "output"
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    (victim / "keep" / "precious.txt").write_text("not jobline's")
    outside_link_target = tmp_path / "linked-victim"
    outside_link_target.mkdir()
    (outside_link_target / "precious.txt").write_text("not jobline's either")

    def folder(tile: str) -> Path:
        """The demo job type's product folder of a job of that tile (no sensing date)."""
        return root / "snow_cover" / tile / f"FSC_unknown_{tile}"

    for tile in ("T1", "T6"):
        folder(tile).mkdir(parents=True)
        (folder(tile) / "fsc.asc").write_text(f"output of {tile}")
    folder("T7").parent.mkdir(parents=True)
    folder("T7").symlink_to(outside_link_target)
    cases = {  # product: (tile, what the database says the output path is)
        "OWN": ("T1", f"file://{folder('T1')}/"),  # its own folder: deleted
        "VICTIM": ("T2", f"file://{victim}"),  # outside the storage
        "ROOT": ("T3", f"file://{root}"),  # the storage root
        "FILE_ROOT": ("T4", "file:///"),
        "NOT_MINE": ("T5", f"file://{folder('T6')}/"),  # another folder of the storage
        "DOTS": ("..", f"file://{root}/snow_cover/../FSC_unknown_../"),  # a hostile tile
        "LINK": ("T7", f"file://{folder('T7')}/"),  # its folder links out of the storage
    }
    pg_store.insert_jobs(
        NewJob(JOB_TYPE, product, tile_id=tile, queue="snow")
        for product, (tile, _) in cases.items()
    )
    ids = {job.product_id: job.id for job in pg_store.list_jobs(limit=100).jobs}
    for product, (_, output_path) in cases.items():
        drive(pg_store, ids[product], HAPPY)
        with pg_store.session() as session:  # what the database says, however it got there
            session.execute(
                update(Job).where(Job.id == ids[product]).values(output_path=output_path)
            )

    report = run_maintenance(settings, pg_store, now=pg_store.clock() + timedelta(days=400))

    assert sorted(report.expired) == sorted(ids.values())
    assert report.outputs_deleted == 1
    assert not folder("T1").exists()
    assert (victim / "keep" / "precious.txt").read_text() == "not jobline's"
    assert (outside_link_target / "precious.txt").exists()
    assert (folder("T6") / "fsc.asc").exists()
    assert root.is_dir()
    statuses = {job.status for job in pg_store.list_jobs(limit=100).jobs}
    assert statuses == {"expired"}


HAPPY = (
    "configured",
    "ready",
    "queued",
    "started",
    "pre_processing",
    "processing",
    "post_processing",
    "processed",
    "done",
)


# --------------------------------------------------------------------- 4. odd input


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (f'{{"job_type": "{JOB_TYPE}", "product_id": "P{SURROGATE}"}}', "product_id"),
        (f'{{"job_type": "{JOB_TYPE}", "product_id": "P", "tile_id": "{SURROGATE}"}}', "tile_id"),
        (f'{{"job_type": "{JOB_TYPE}", "product_id": "P", "queue": "q{SURROGATE}"}}', "queue"),
        (f'{{"job_type": "{JOB_TYPE}", "config": {{"k": "{SURROGATE}"}}}}', "config"),
        (f'{{"job_type": "{JOB_TYPE}", "config": {{"{SURROGATE}": 1}}}}', "config"),
        (
            f'{{"job_type": "{JOB_TYPE}", "product_id": "P", "input_files": ["{SURROGATE}"]}}',
            "input_files",
        ),
        (f'{{"job_type": "{SURROGATE}", "product_id": "P"}}', "job_type"),
        (f'{{"job_type": "{JOB_TYPE}", "product_id": "P", "tile_id": "T\\u0001"}}', "tile_id"),
        (f'{{"job_type": "{JOB_TYPE}", "product_id": "a/b"}}', "product_id"),
        (f'{{"job_type": "{JOB_TYPE}", "product_id": ".."}}', "product_id"),
        (
            f'{{"job_type": "{JOB_TYPE}", "product_id": "P", "input_path": "file:///etc"}}',
            "input_path",
        ),
    ],
)
def test_odd_characters_in_a_submission_are_422_naming_the_field(
    client: httpx.Client, pg_store: JobStore, body: str, field: str
) -> None:
    response = raw_json(client, "POST", "/jobs", body)
    assert response.status_code == 422, response.text
    assert field in error_fields(response)
    assert snapshot(pg_store) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (f'{{"status": "configured", "message": "m{SURROGATE}"}}', "message"),
        ('{"status": "configured", "message": "bell\\u0007"}', "message"),
        (f'{{"status": "configured", "error_class": "E{SURROGATE}"}}', "error_class"),
        (f'{{"output_path": "file:///x{SURROGATE}"}}', "output_path"),
        (f'{{"output_files": [{{"path": "{SURROGATE}"}}]}}', "output_files"),
        ('{"status": null}', "status"),
        ('{"priority": null}', "priority"),
    ],
)
def test_odd_characters_in_a_patch_are_422_naming_the_field(
    client: httpx.Client, pg_store: JobStore, body: str, field: str
) -> None:
    job_id = submit(client).json()["id"]
    before = snapshot(pg_store)
    response = raw_json(client, "PATCH", f"/jobs/{job_id}", body)
    assert response.status_code == 422, response.text
    assert field in error_fields(response)
    assert snapshot(pg_store) == before


def test_a_message_may_have_lines_and_tabs(client: httpx.Client, pg_store: JobStore) -> None:
    job_id = submit(client).json()["id"]
    body = {"status": "configured", "message": "line one\n\tline two"}
    assert client.patch(f"/jobs/{job_id}", json=body).status_code == 200
    assert pg_store.history(job_id)[-1].message == "line one\n\tline two"


@pytest.mark.parametrize(
    "body",
    [f'{{"a": "{SURROGATE}"}}', f'{{"{SURROGATE}": 1}}', f'{{"a": [{{"b": "{SURROGATE}"}}]}}'],
)
def test_surrogates_in_a_metadata_document_are_422(
    client: httpx.Client, pg_store: JobStore, body: str
) -> None:
    job_id = submit(client).json()["id"]
    response = raw_json(client, "PUT", f"/jobs/{job_id}/metadata/review", body)
    assert response.status_code == 422, response.text
    assert error_fields(response)
    assert pg_store.list_metadata(job_id) == {}


# --------------------------------------------------------------------- 5. metadata bounds


@pytest.mark.parametrize("key", ["%2E", "%2E%2E", ".hidden", "-x", ":x", "a%20b", "%F0%9F%98%80"])
def test_metadata_keys_outside_the_pattern_are_refused(
    client: httpx.Client, pg_store: JobStore, key: str
) -> None:
    job_id = submit(client).json()["id"]
    response = client.put(f"/jobs/{job_id}/metadata/{key}", json={"a": 1})
    assert response.status_code == 422, response.text
    assert error_fields(response) == ["key"]
    assert pg_store.list_metadata(job_id) == {}


@pytest.mark.parametrize("key", [".", ".."])
def test_dot_segment_keys_sent_as_is_are_refused(
    api_server: ApiServer, client: httpx.Client, pg_store: JobStore, key: str
) -> None:
    job_id = submit(client).json()["id"]
    port = int(api_server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(  # http.client sends the path as written, like curl --path-as-is
        "PUT",
        f"/jobs/{job_id}/metadata/{key}",
        body=b'{"a": 1}',
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status in (404, 422)
    assert pg_store.list_metadata(job_id) == {}


def test_metadata_documents_keys_and_jobs_are_bounded(
    client: httpx.Client, pg_store: JobStore
) -> None:
    settings = Settings()  # the server runs on the defaults
    job_id = submit(client).json()["id"]
    too_big = {"blob": "x" * settings.api_metadata_max_document_bytes}
    response = client.put(f"/jobs/{job_id}/metadata/big", json=too_big)
    assert response.status_code == 413 and error_fields(response) == ["body"]
    assert pg_store.list_metadata(job_id) == {}

    piece = {"blob": "x" * (settings.api_metadata_max_document_bytes - 100)}
    stored = len(json.dumps(piece))  # PostgreSQL's text of the jsonb document
    fits = settings.api_metadata_max_job_bytes // stored
    for n in range(fits):
        assert client.put(f"/jobs/{job_id}/metadata/doc-{n}", json=piece).status_code == 200
    over = client.put(f"/jobs/{job_id}/metadata/doc-over", json=piece)
    assert over.status_code == 413, over.text[:300]
    assert error_fields(over) == ["body"]
    assert "doc-over" not in pg_store.list_metadata(job_id)
    replaced = client.put(f"/jobs/{job_id}/metadata/doc-0", json={"small": True})
    assert replaced.status_code == 200  # replacing a document within the limits is fine

    listed = client.get(f"/jobs/{job_id}/metadata", params={"limit": 5})
    assert listed.status_code == 200
    assert len(listed.content) < 5_000, "summaries, not documents"
    page = listed.json()
    assert [item["key"] for item in page["items"]] == sorted(page_keys(pg_store, job_id))[:5]
    assert page["next_after"] == page["items"][-1]["key"]
    assert all(item["size_bytes"] > 0 for item in page["items"])


def page_keys(store: JobStore, job_id: int) -> list[str]:
    return list(store.list_metadata(job_id))


def test_a_job_holds_a_bounded_number_of_metadata_keys(
    client: httpx.Client, pg_store: JobStore
) -> None:
    limit = Settings().api_metadata_max_keys
    job_id = submit(client).json()["id"]
    for n in range(limit):
        assert client.put(f"/jobs/{job_id}/metadata/k{n:03d}", json={"n": n}).status_code == 200
    response = client.put(f"/jobs/{job_id}/metadata/one-more", json={"n": 0})
    assert response.status_code == 422 and error_fields(response) == ["key"]
    assert len(pg_store.list_metadata(job_id)) == limit
    assert client.put(f"/jobs/{job_id}/metadata/k000", json={"n": -1}).status_code == 200


# ------------------------------------------------------------------ 6. leaks, loose ends


def test_health_of_an_unreachable_database_says_only_that(tmp_path: Path) -> None:
    port = free_port()
    nowhere = f"postgresql://jobline:secret-password@127.0.0.1:{port}/private_db_name"
    server = start_unhealthy_server(nowhere, tmp_path)
    try:
        response = httpx.get(f"{server.url}/health", timeout=30)
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "database": "unreachable",
            "revision": None,
        }
        for secret in (str(port), "private_db_name", "jobline", "secret-password"):
            assert secret not in response.text
        time.sleep(0.5)
        assert str(port) in server.log(), "the details go to the server's log"
    finally:
        stop_server(server)


def start_unhealthy_server(database_url: str, data_dir: Path) -> ApiServer:
    """A ``jobline api`` on a database that does not answer: up once /health answers at all."""
    port = free_port()
    env = {**os.environ, "JOBLINE_DATABASE_URL": database_url, "JOBLINE_API_TOKEN": TOKEN}
    log_path = data_dir / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*JOBLINE_API, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ApiServer(f"http://127.0.0.1:{port}", TOKEN, process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited:\n{server.log()}")
        try:
            httpx.get(f"{server.url}/health", timeout=30)
            return server
        except httpx.TransportError:
            time.sleep(0.2)
    stop_server(server)
    raise AssertionError(f"the server did not answer:\n{server.log()}")


def test_the_schema_says_what_a_patch_accepts(api_server: ApiServer) -> None:
    document = httpx.get(f"{api_server.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    patch = schemas["JobPatch"]["properties"]
    for field in ("status", "priority", "max_attempts", "output_files", "lease_token"):
        assert "null" not in json.dumps(patch[field]), (field, patch[field])
    assert schemas["JobPatch"]["dependentRequired"]["message"] == ["status"]
    job_type = schemas["JobCreate"]["properties"]["job_type"]
    assert set(job_type["enum"]) >= {JOB_TYPE, "snow_cover"}
    assert "this:x" not in job_type["enum"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/jobs", "GET, POST"),
        ("PUT", "/jobs/1", "GET, PATCH"),
        ("POST", "/jobs/1/metadata/x", "GET, PUT, DELETE"),
        ("POST", "/health", "GET"),
        ("DELETE", "/events", "GET"),
    ],
)
def test_405_answers_carry_the_allowed_methods(
    client: httpx.Client, method: str, path: str, allowed: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert error_fields(response) == ["method"]


# ---------------------------------------------------------- 7. streams hold no connection


def jobline_connections(database_url: str) -> tuple[int, int]:
    """jobline's sessions on the database: all of them, and those running a query."""
    engine = create_engine(Settings(database_url=database_url).resolved_database_url)
    try:
        with engine.connect() as connection:
            total, busy = connection.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE state = 'active') "
                    "FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'jobline'"
                )
            ).one()
            return int(total), int(busy)
    finally:
        engine.dispose()


def test_many_streams_and_waits_share_the_servers_connections(tmp_path: Path) -> None:
    """40 event streams and 40 waits on a server of its own hold no database session each (the
    server has fewer sessions than streams, none busy), and every stream gets every change."""
    with scratch_database("jobline_streams") as database_url:
        from db.migrate import upgrade

        upgrade(Settings(database_url=database_url))
        server = start_server(database_url, tmp_path / "server")
        readers: list[EventReader] = []
        try:
            with server.client() as http:
                waited = [submit(http, f"W{n}").json()["id"] for n in range(40)]
                idle, _ = jobline_connections(database_url)
                readers = [
                    EventReader(server, stop_when=lambda events: len(events) >= 5).start()
                    for _ in range(40)
                ]
                with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as waits:
                    from concurrent.futures import ThreadPoolExecutor

                    with ThreadPoolExecutor(40) as pool:
                        pending = [
                            pool.submit(waits.get, f"/jobs/{job_id}/wait", params={"timeout": 4})
                            for job_id in waited
                        ]
                        time.sleep(1.0)
                        held, busy = jobline_connections(database_url)
                        for n in range(5):
                            assert submit(http, f"LIVE{n}").status_code == 201
                        got = [reader.wait_until_finished(30) for reader in readers]
                        answers = [future.result(timeout=30) for future in pending]
            # Pooled connections, not one per stream or wait: what the first reads of 80
            # requests at once opened (at most the pool's size), and no query running.
            assert held < 20, (idle, held)
            assert busy == 0
            assert all(len(events) == 5 for events in got)
            assert all(answer.json()["timed_out"] for answer in answers)
        finally:
            for reader in readers:
                reader.close()
            stop_server(server)
