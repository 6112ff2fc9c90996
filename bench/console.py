"""console: the operator's pages and ``GET /stats`` on a large store, in server time.

N jobs (1,000,000 in a full run) of five job types, spread over the statuses (:data:`SHARES`:
mostly done or expired, 2.5 % unfinished: failed, waiting or in flight) and over the last 7
days, each with
a latency of 1 minute to 3 hours and a due time 2 hours after its input's publication, are
written by one ``INSERT … SELECT FROM generate_series`` (the status guard and the history
triggers are off for it; ``job_counts`` and ``job_stats`` are kept by their triggers as in
production). A real ``jobline api`` process serves them; each answer's ``Server-Timing`` header
gives the server's own time. Measured (medians of the repeats; p95 in the details):

* the console's overview ``GET /ui`` (counts, late, stuck, throughput, 24 h timeliness and the
  7-day series of every job type);
* ``GET /stats``;
* a filtered table page ``GET /ui/jobs?status=ready&job_type=…`` (50 jobs);
* the baseline: ``GET /health`` on the same server, in the same run.
"""

from __future__ import annotations

import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench.data import QUEUE, open_store, status_case
from bench.prefect_server import stop_process
from bench.query import JOB_TYPES
from bench.report import Measurement, timed
from bench.streams import start_server
from db.models import sql_list
from db.statuses import TERMINAL, Status
from db.store import JobStore

#: Triggers off while the jobs are written: the status guard (jobs start in any status here) and
#: the history (not read here). The counts' and the statistics' triggers stay on.
SETUP_WITHOUT = ("jobs_guard_insert", "jobs_record_insert")
#: Per ten thousand of the jobs in each status (the rest is done): a store that has run for a
#: while, 2.5 % of it unfinished (failed, waiting or in flight), most of those late or stuck.
SHARES = {
    Status.EXPIRED: 500,
    Status.CANCELLED: 200,
    Status.INTERNAL_ERROR: 100,
    Status.EXTERNAL_ERROR: 20,
    Status.ERROR_CHECKED: 20,
    Status.INITIALIZED: 10,
    Status.CONFIGURED: 20,
    Status.READY: 50,
    Status.QUEUED: 10,
    Status.STARTED: 5,
    Status.PRE_PROCESSING: 5,
    Status.PROCESSING: 20,
    Status.POST_PROCESSING: 5,
    Status.PROCESSED: 5,
    Status.START_PUBLICATION: 5,
    Status.PUBLISHED: 5,
}
TABLE_TYPE = "bench.types:Type1"
TABLE_PAGE = f"/ui/jobs?status=ready&job_type={TABLE_TYPE}"
TARGET_MS = 200.0


@dataclass
class ConsoleSizes:
    jobs: int
    repeats: int


def populate(store: JobStore, jobs: int) -> None:
    """``jobs`` jobs in one statement: finished over the last 7 days, latencies 1 min to 3 h."""
    changed = "now() - ((i::bigint * 7919) % 604800) * interval '1 second'"
    published = f"({changed}) - (60 + (i::bigint * 7907) % 10740) * interval '1 second'"
    statuses = status_case(SHARES, 10000)
    statement = f"""
    INSERT INTO jobs (job_key, job_type, queue, priority, product_id, tile_id, input_path,
        input_publication_date, output_publication_date, config, input_files, output_files,
        status, status_seq, status_changed_at, attempts, max_attempts, created_at,
        last_accessed_at, finished_at, due_at)
    SELECT decode(md5(i::text), 'hex'), 'bench.types:Type' || (i % {JOB_TYPES}), '{QUEUE}',
        i % 3, 'S2A_MSIL1C_' || lpad(i::text, 9, '0'), 'T' || (i % 500),
        's3://bench-input/S2A_MSIL1C_' || i || '.SAFE', {published},
        CASE WHEN s.status = 'done' THEN {changed} END, '{{}}', '[]', '[]', s.status, 1,
        {changed}, 1, 3, {published}, now(),
        CASE WHEN s.status IN ({sql_list(TERMINAL)}) THEN {changed} END,
        {published} + interval '2 hours'
    FROM generate_series(1, :jobs) AS i, LATERAL (SELECT {statuses} AS status) AS s
    """
    with store.engine.begin() as connection:
        for trigger in SETUP_WITHOUT:
            connection.execute(text(f"ALTER TABLE jobs DISABLE TRIGGER {trigger}"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        connection.execute(text(statement), {"jobs": jobs})
        for trigger in SETUP_WITHOUT:
            connection.execute(text(f"ALTER TABLE jobs ENABLE TRIGGER {trigger}"))
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE jobs"))
        connection.execute(text("VACUUM ANALYZE job_stats"))


def server_ms(client: httpx.Client, path: str, repeats: int) -> list[float]:
    """The server's time (its Server-Timing header) for ``repeats`` GETs of ``path``."""
    samples = []
    for attempt in range(repeats + 1):
        response = client.get(path)
        response.raise_for_status()
        timing = re.search(r"app;dur=([0-9.]+)", response.headers.get("server-timing", ""))
        if timing is None:
            raise RuntimeError(f"console: {path} answered without a Server-Timing header")
        if attempt:  # the first is a warm-up
            samples.append(float(timing[1]))
    return samples


def signed_in(url: str, token: str) -> httpx.Client:
    """A client with the API's token and a console session."""
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0)
    login = client.get("/ui/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
    if csrf is None:
        raise RuntimeError("console: no login form")
    answer = client.post("/ui/login", data={"csrf_token": csrf[1], "token": token})
    if answer.status_code != 303:
        raise RuntimeError(f"console: login answered {answer.status_code}")
    return client


def run(database_url: str, sizes: ConsoleSizes, log: Any) -> list[Measurement]:
    store = open_store(database_url)
    try:
        setup = timed(lambda: populate(store, sizes.jobs))
        log(f"  console: {sizes.jobs} jobs written (with their statistics) in {setup:.1f} s")
    finally:
        store.engine.dispose()
    with tempfile.TemporaryDirectory(prefix="jobline-bench-console-") as directory:
        server = start_server(database_url, Path(directory))
        try:
            client = signed_in(server.url, server.token)
            try:
                return _measure(client, sizes, log)
            finally:
                client.close()
        finally:
            stop_process(server.process, 10)


def _measure(client: httpx.Client, sizes: ConsoleSizes, log: Any) -> list[Measurement]:
    stats = client.get("/stats").json()
    total = sum(t["total"] for t in stats["job_types"])
    if total != sizes.jobs:
        raise RuntimeError(f"console: /stats counts {total} jobs, not {sizes.jobs}")
    table = client.get(TABLE_PAGE)
    if table.text.count("data-job-id=") != 50:
        raise RuntimeError("console: the filtered table page does not show 50 jobs")
    health = server_ms(client, "/health", sizes.repeats)
    pages = {
        "console: overview (GET /ui)": "/ui",
        "console: GET /stats": "/stats",
        "console: filtered table page (GET /ui/jobs)": TABLE_PAGE,
    }
    baseline = statistics.median(health)
    measurements = []
    for name, path in pages.items():
        samples = server_ms(client, path, sizes.repeats)
        median = statistics.median(samples)
        p95 = statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else median
        log(f"  {name}: {median:.1f} ms median, {p95:.1f} ms p95 (server time)")
        measurements.append(
            Measurement(
                name=name,
                value=median,
                unit="ms",
                target=f"≤ {TARGET_MS:.0f} ms (server time)",
                passed=median <= TARGET_MS,
                baseline=baseline,
                baseline_unit="ms (GET /health, same server)",
                ratio=median / baseline if baseline else None,
                ratio_note="times /health",
                details={
                    "jobs": sizes.jobs,
                    "path": path,
                    "p95_ms": p95,
                    "samples_ms": samples,
                    "late": sum(t["late"] for t in stats["job_types"]),
                    "stuck": sum(s["jobs"] for t in stats["job_types"] for s in t["stuck"]),
                },
            )
        )
    return measurements


def main() -> None:
    """``python -m bench.console``: this benchmark alone, on a scratch database."""
    from bench.scratch import admin_url, scratch_database
    from jobline.settings import Settings

    with scratch_database(admin_url(Settings())) as url:
        for measurement in run(url, ConsoleSizes(jobs=1_000_000, repeats=20), print):
            print(measurement.name, f"{measurement.value:.1f} ms", measurement.details["p95_ms"])


if __name__ == "__main__":
    main()
