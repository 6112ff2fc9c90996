"""What the benchmarks feed the store: products as discovery would report them, and a store on
the scratch database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from db.records import NewJob
from db.statuses import Status
from db.store import JobStore
from jobline.settings import Settings

JOB_TYPE = "bench.types:Bench"
QUEUE = "bench"
TILES = 500
START = datetime(2026, 1, 1, tzinfo=UTC)
#: Every table the benchmarks write; emptied between repeats.
TABLES = ("jobs", "job_status_changes", "job_metadata", "meta")


def status_case(shares: dict[Status, int], modulus: int) -> str:
    """A SQL CASE giving row ``i`` its status by ``i % modulus``: each status its share of the
    ``modulus`` (parts per ``modulus``), the rest ``done``."""
    branches, upper = [], 0
    for status, share in shares.items():
        upper += share
        branches.append(f"WHEN i % {modulus} < {upper} THEN '{status.value}'")
    return f"CASE {' '.join(branches)} ELSE 'done' END"


def products(count: int, *, offset: int = 0, job_type: str = JOB_TYPE) -> list[NewJob]:
    """``count`` new jobs shaped like discovered Sentinel-2 products (two input files each)."""
    return [
        NewJob(
            job_type=job_type,
            product_id=f"S2A_MSIL1C_{index:09d}_N0510_R108_T{index % TILES:05d}",
            queue=QUEUE,
            tile_id=f"T{index % TILES:05d}",
            input_path=f"s3://bench-input/S2A_MSIL1C_{index:09d}.SAFE",
            input_publication_date=START + timedelta(seconds=index),
            input_files=[{"path": "B03.txt", "size": 2048}, {"path": "B11.txt", "size": 2048}],
        )
        for index in range(offset, offset + count)
    ]


def open_store(database_url: str) -> JobStore:
    """A store on the scratch database, with a pool large enough for the concurrent workers."""
    return JobStore.from_settings(Settings(database_url=database_url))


def empty(store: JobStore) -> None:
    """Remove every job, history row and metadata document; ids start again at 1."""
    with store.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


def ready_jobs(store: JobStore, count: int, *, offset: int = 0) -> list[int]:
    """``count`` jobs moved through the store to ``ready`` (inserted, configured, ready)."""
    job_ids = store.insert_jobs(products(count, offset=offset)).inserted_ids
    store.transition_many(job_ids, Status.CONFIGURED, expected_from=Status.INITIALIZED)
    store.transition_many(job_ids, Status.READY, expected_from=Status.CONFIGURED)
    return job_ids
