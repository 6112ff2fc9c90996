"""The demo pipeline between S3 buckets on moto's real server, with the storage failing once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from db import outbox
from db.store import JobStore
from jobline.settings import Settings
from jobtypes.demo import write_sample_products
from tasks import storage
from tests.acceptance.test_lifecycle import HAPPY_PATH, jobs_by_product, statuses
from tests.integration.s3 import S3Server
from tests.integration.s3 import s3_server as s3_server  # the session fixture
from tests.support.jobtypes import write_snow_cover_on


def upload_samples(server: S3Server, bucket: str, local: Path, count: int) -> None:
    write_sample_products(local, count=count)
    server.filesystem().put(str(local) + "/", f"{bucket}/l1c/", recursive=True)


@pytest.fixture
def s3_settings(
    pg_settings: Settings,
    prefect_api_url: str,
    s3_server: S3Server,
    jobline_env: Callable[[Settings], Settings],
) -> Settings:
    return jobline_env(
        pg_settings.model_copy(
            update={
                "s3_endpoint_url": s3_server.endpoint_url,
                "runner": "local",
                "retry_base_seconds": 1.0,
            }
        )
    )


@pytest.mark.slow
def test_demo_from_s3_to_s3_then_nothing_new(
    s3_settings: Settings, s3_server: S3Server, tmp_path: Path
) -> None:
    from flows.pipeline import run_pipeline

    inputs, outputs = s3_server.create_bucket(), s3_server.create_bucket()
    upload_samples(s3_server, inputs, tmp_path / "samples", 4)
    fs = s3_server.filesystem()
    fs.s3  # noqa: B018 - connect before writing the hostile key raw
    fs.call_s3(
        "put_object",
        Bucket=inputs,
        Key="l1c/" + hostile_product() + "/../../etc/passwd",
        Body=b"pwn",
    )
    job_type = write_snow_cover_on(
        tmp_path / "src", f"s3://{inputs}/l1c", f"s3://{outputs}/fsc", "snow_s3"
    )

    first = run_pipeline(job_type=job_type)

    store = JobStore.from_settings(s3_settings)
    jobs = jobs_by_product(store, job_type)
    hostile = jobs.pop(hostile_product().removesuffix(".SAFE"))
    assert hostile.status == "internal_error"
    assert "etc/passwd" in (hostile.last_error or "") and "outside" in (hostile.last_error or "")
    assert not list(Path(s3_settings.data_dir).rglob("passwd")), "nothing written outside"
    assert len(jobs) == 4
    for job in jobs.values():
        assert statuses(store, job.id) == HAPPY_PATH
        assert job.output_path and job.output_path.startswith(f"s3://{outputs}/fsc/snow_s3/")
        manifest = storage.read_manifest(job.output_path, s3_settings)
        assert sorted(f.path for f in manifest.files) == sorted(f["path"] for f in job.output_files)
    assert store.get_meta("watermark:snow_s3") is not None

    second = run_pipeline(job_type=job_type)
    assert first.inserted == 5 and second.inserted == 0 and second.jobs == second.attempts == 0


def hostile_product() -> str:
    return "S2A_MSIL1C_20260301T103421_N0510_R108_T32TLR_20260301T123456.SAFE"


@pytest.mark.slow
def test_an_output_store_that_fails_once_is_retried(
    s3_settings: Settings, s3_server: S3Server, tmp_path: Path
) -> None:
    """The output bucket is missing at first (a storage outage): the upload fails, leaves no
    manifest and no publication row, and the retry after the backoff completes the job."""
    from flows.pipeline import run_pipeline

    inputs, outputs = s3_server.create_bucket(), f"jobline-late-{time.monotonic_ns()}"
    upload_samples(s3_server, inputs, tmp_path / "samples", 1)
    job_type = write_snow_cover_on(
        tmp_path / "src", f"s3://{inputs}/l1c", f"s3://{outputs}/fsc", "snow_late"
    )
    store = JobStore.from_settings(s3_settings)
    seen_failure = threading.Event()
    rows_after_failure: list[object] = []

    def bring_storage_back() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            failed = [j for j in store.list_jobs().jobs if j.attempts == 1 and j.last_error]
            if failed:
                rows_after_failure.extend(outbox.publications_of(store, failed[0].id))
                seen_failure.set()
                s3_server.filesystem().mkdir(outputs)
                return
            time.sleep(0.05)

    helper = threading.Thread(target=bring_storage_back)
    helper.start()
    run_pipeline(job_type=job_type)
    helper.join()

    assert seen_failure.is_set()
    assert rows_after_failure == [], "a failed upload announces nothing"
    (job,) = jobs_by_product(store, job_type).values()
    assert job.status == "done" and job.attempts == 2
    history = statuses(store, job.id)
    assert history[history.index("post_processing") + 1] == "external_error"
    assert len(outbox.publications_of(store, job.id)) == 1
