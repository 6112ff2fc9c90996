"""How :meth:`db.store.JobStore.insert_jobs` writes new jobs on PostgreSQL, fast.

The store calls :func:`insert_new_jobs` inside its transaction. In order:

1. the keys already stored are looked up with one array parameter per ``ARRAY_CHUNK`` keys, so
   re-discovering known products costs an index probe each and writes nothing;
2. a batch of at least ``COPY_MIN_ROWS`` new jobs takes its ids from the jobs' sequence (one
   statement) and goes in by binary ``COPY``, ``ARRAY_CHUNK`` rows per COPY: psycopg formats COPY
   rows in C, while array parameters are dumped value by value in Python (100,000 jobs: 2.25-2.45 s
   by COPY against 2.7 s by ``INSERT … SELECT FROM unnest``, see the README's "Performance"). COPY
   fires the same triggers as an INSERT: the guard, the history rows, the job counts;
3. a smaller batch, or one in which another transaction inserted a key since the look-up (COPY has
   no ``ON CONFLICT``), goes in as ``INSERT … SELECT FROM unnest(arrays)``, one statement per
   chunk, skipping such keys.

Ids follow the order of the jobs given, whichever way they went in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from db.models import require_aware, sql_list
from db.records import NewJob, RunIds
from db.statuses import TERMINAL

#: Rows per statement where each column goes as one array parameter, and rows per COPY: large
#: enough that the round trips vanish, small enough to keep one statement's transition tables
#: (the history trigger reads them) within the batch's working memory.
ARRAY_CHUNK = 25_000
#: From this many new jobs on, COPY: below, its extra round trips (ids, COPY start and end) cost
#: more than the rows it saves.
COPY_MIN_ROWS = 500
#: Above this many rows, the transaction gets more working memory.
BIG_BATCH = 5_000
#: The unique constraint a concurrent insert of the same product violates.
KEY_CONSTRAINT = "uq_jobs_job_key"

#: The keys of ``keys`` (a bytea[]) that jobs already have. A join, not ``= ANY(keys)``: without
#: fresh statistics the planner may filter a sequential scan of jobs through the whole array for
#: each row.
STORED_KEYS = (
    "SELECT jobs.job_key FROM unnest(CAST(%(keys)b AS bytea[])) AS k(job_key) "
    "JOIN jobs ON jobs.job_key = k.job_key"
)

#: ``%s`` new ids from the jobs' own sequence, in increasing order.
NEXT_IDS = (
    "SELECT nextval(seq) FROM CAST(pg_get_serial_sequence('jobs', 'id') AS regclass) AS seq, "
    "generate_series(1, %s) ORDER BY 1"
)

#: Columns of a COPY row, in order, with their PostgreSQL types (binary COPY needs them).
COPY_COLUMNS = (
    ("id", "int8"),
    ("job_key", "bytea"),
    ("job_type", "text"),
    ("queue", "text"),
    ("priority", "int4"),
    ("product_id", "text"),
    ("tile_id", "text"),
    ("input_path", "text"),
    ("input_publication_date", "timestamptz"),
    ("config", "jsonb"),
    ("input_files", "jsonb"),
    ("output_files", "jsonb"),
    ("status", "text"),
    ("status_seq", "int4"),
    ("status_changed_at", "timestamptz"),
    ("status_message", "text"),
    ("flow_run_id", "text"),
    ("task_run_id", "text"),
    ("attempts", "int4"),
    ("max_attempts", "int4"),
    ("created_at", "timestamptz"),
    ("last_accessed_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("due_at", "timestamptz"),
    ("sensing_time", "timestamptz"),
)


def copy_statement(table: str = "jobs") -> str:
    """The binary COPY of ``COPY_COLUMNS`` into ``table``."""
    columns = ", ".join(name for name, _ in COPY_COLUMNS)
    return f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)"


COPY_JOBS = copy_statement()

#: New jobs from one array per column, zipped by ``ROWS FROM``; the JSON columns come as one
#: JSON array each (one ``json.dumps`` per column instead of one per row). The batch's constants
#: are plain parameters. Ids follow the order of the arrays: an INSERT … SELECT runs serially and
#: a function scan returns its rows in order (an ORDER BY on an ordinality column would sort
#: every row again: 18% of the statement's time). Parameters are bound in binary
#: (``%(name)b``): psycopg dumps a list of 100,000 values in binary in a few ms, in text (with
#: escaping) far slower.
INSERT_ARRAYS = f"""
INSERT INTO jobs (
    job_key, job_type, queue, priority, product_id, tile_id, input_path,
    input_publication_date, config, input_files, status, status_message, max_attempts,
    output_files, status_seq, status_changed_at, flow_run_id, task_run_id, attempts,
    created_at, last_accessed_at, finished_at, due_at, sensing_time)
SELECT
    r.job_key, r.job_type, r.queue, r.priority, r.product_id, r.tile_id, r.input_path,
    r.input_publication_date, r.config::jsonb, r.input_files::jsonb, r.status, r.status_message,
    r.max_attempts, '[]'::jsonb, 1, %(now)b, %(flow_run_id)b, %(task_run_id)b, 0, %(now)b,
    %(now)b,
    CASE WHEN r.status IN ({sql_list(TERMINAL)}) THEN CAST(%(now)b AS timestamptz) END,
    r.due_at, r.sensing_time
FROM ROWS FROM (
    unnest(CAST(%(job_key)b AS bytea[])), unnest(CAST(%(job_type)b AS text[])),
    unnest(CAST(%(queue)b AS text[])), unnest(CAST(%(priority)b AS integer[])),
    unnest(CAST(%(product_id)b AS text[])), unnest(CAST(%(tile_id)b AS text[])),
    unnest(CAST(%(input_path)b AS text[])),
    unnest(CAST(%(input_publication_date)b AS timestamptz[])),
    json_array_elements(CAST(%(config)b AS json)),
    json_array_elements(CAST(%(input_files)b AS json)),
    unnest(CAST(%(status)b AS text[])), unnest(CAST(%(status_message)b AS text[])),
    unnest(CAST(%(max_attempts)b AS integer[])),
    unnest(CAST(%(due_at)b AS timestamptz[])), unnest(CAST(%(sensing_time)b AS timestamptz[]))
) AS r(
    job_key, job_type, queue, priority, product_id, tile_id, input_path,
    input_publication_date, config, input_files, status, status_message, max_attempts,
    due_at, sensing_time)
ON CONFLICT (job_key) DO NOTHING
RETURNING id, job_key
"""


def insert_new_jobs(
    connection: Connection, new: Mapping[bytes, NewJob], now: datetime, run: RunIds
) -> dict[bytes, int]:
    """Insert the jobs of ``new`` (by key) whose key no job has yet; returns their ids by key."""
    stored = stored_keys(connection, list(new))
    fresh = [(key, job) for key, job in new.items() if key not in stored]
    for _, job in fresh:
        if job.input_publication_date is not None:
            # UtcDateTime's check: these rows bypass SQLAlchemy's bind processing.
            require_aware(job.input_publication_date, "input_publication_date")
        for name in ("due_at", "sensing_time"):
            if getattr(job, name) is not None:
                require_aware(getattr(job, name), name)
    if len(fresh) > BIG_BATCH:
        # The history trigger's transition tables stay in memory.
        connection.exec_driver_sql("SET LOCAL work_mem = '64MB'")
    if len(fresh) >= COPY_MIN_ROWS:
        try:
            with connection.begin_nested():
                return _copy(connection, fresh, now, run)
        except IntegrityError as error:
            if KEY_CONSTRAINT not in str(error.orig):
                raise
            # Another transaction inserted some of these products since the look-up.
    return _insert_skipping(connection, fresh, now, run)


def stored_keys(connection: Connection, keys: Sequence[bytes]) -> set[bytes]:
    """The keys of ``keys`` that jobs already have."""
    stored: set[bytes] = set()
    for start in range(0, len(keys), ARRAY_CHUNK):
        rows = _fetch_all(
            connection.exec_driver_sql(STORED_KEYS, {"keys": keys[start : start + ARRAY_CHUNK]})
        )
        stored.update(key for (key,) in rows)
    return stored


def _copy(
    connection: Connection, fresh: Sequence[tuple[bytes, NewJob]], now: datetime, run: RunIds
) -> dict[bytes, int]:
    """COPY ``fresh`` into jobs with ids taken from the jobs' sequence first."""
    with _driver(connection, NEXT_IDS) as driver, driver.cursor() as cursor:
        ids = [job_id for (job_id,) in cursor.execute(NEXT_IDS, (len(fresh),))]
    rows = list(zip(ids, fresh, strict=True))
    for start in range(0, len(rows), ARRAY_CHUNK):
        with (
            _driver(connection, COPY_JOBS) as driver,
            driver.cursor() as cursor,
            cursor.copy(COPY_JOBS) as copy,
        ):
            copy.set_types([kind for _, kind in COPY_COLUMNS])
            write = copy.write_row
            for job_id, (key, job) in rows[start : start + ARRAY_CHUNK]:
                write(copy_row(job_id, key, job, now, run))
    return {key: job_id for job_id, (key, _) in rows}


def copy_row(job_id: int, key: bytes, job: NewJob, now: datetime, run: RunIds) -> tuple[Any, ...]:
    """One job as a row of ``COPY_COLUMNS``."""
    return (
        job_id, key, job.job_type, job.queue, job.priority, job.product_id, job.tile_id,
        job.input_path, job.input_publication_date, job.config, job.input_files, [],
        job.status.value, 1, now, job.message, run.flow_run_id, run.task_run_id, 0,
        job.max_attempts, now, now, now if job.status in TERMINAL else None, job.due_at,
        job.sensing_time,
    )  # fmt: skip


def _insert_skipping(
    connection: Connection, fresh: Sequence[tuple[bytes, NewJob]], now: datetime, run: RunIds
) -> dict[bytes, int]:
    """``INSERT_ARRAYS`` per chunk: keys inserted meanwhile by others are skipped."""
    constants = {"now": now, "flow_run_id": run.flow_run_id, "task_run_id": run.task_run_id}
    inserted: dict[bytes, int] = {}
    for start in range(0, len(fresh), ARRAY_CHUNK):
        params = {**_insert_arrays(fresh[start : start + ARRAY_CHUNK]), **constants}
        rows = _fetch_all(connection.exec_driver_sql(INSERT_ARRAYS, params))
        inserted.update((key, job_id) for job_id, key in rows)
    return inserted


def _insert_arrays(chunk: Sequence[tuple[bytes, NewJob]]) -> dict[str, Any]:
    """The per-job columns of ``INSERT_ARRAYS``: a list each, JSON columns as JSON text."""
    jobs = [job for _, job in chunk]
    return {
        "job_key": [key for key, _ in chunk],
        "job_type": [job.job_type for job in jobs],
        "queue": [job.queue for job in jobs],
        "priority": [job.priority for job in jobs],
        "product_id": [job.product_id for job in jobs],
        "tile_id": [job.tile_id for job in jobs],
        "input_path": [job.input_path for job in jobs],
        "input_publication_date": [job.input_publication_date for job in jobs],
        "config": json.dumps([job.config for job in jobs]),
        "input_files": json.dumps([job.input_files for job in jobs]),
        "status": [job.status.value for job in jobs],
        "status_message": [job.message for job in jobs],
        "max_attempts": [job.max_attempts for job in jobs],
        "due_at": [job.due_at for job in jobs],
        "sensing_time": [job.sensing_time for job in jobs],
    }


def _fetch_all(result: Any) -> list[tuple[Any, ...]]:
    """The rows of a driver-level statement as psycopg returns them: for 100,000 rows a third of
    the time of SQLAlchemy's Row objects."""
    try:
        return result.cursor.fetchall()
    finally:
        result.close()


@contextmanager
def _driver(connection: Connection, statement: str) -> Iterator[psycopg.Connection[Any]]:
    """The psycopg connection under ``connection``, in its transaction; psycopg's errors come out
    as SQLAlchemy's (an ``IntegrityError``, an ``OperationalError`` when the connection was lost),
    as from any statement the store runs through SQLAlchemy."""
    driver = connection.connection.driver_connection
    try:
        yield driver
    except psycopg.Error as error:
        raise DBAPIError.instance(
            statement, None, error, psycopg.Error, connection_invalidated=driver.broken
        ) from error
