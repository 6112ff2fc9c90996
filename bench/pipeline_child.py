"""One measured flow run in a fresh process, for :mod:`bench.pipeline`; prints one JSON line.

    python -m bench.pipeline_child {jobline|baseline} JOBS CONCURRENCY

``jobline`` runs ``run-pipeline`` on the job type :mod:`bench.types` (the store, the data dir and
the Prefect server come from the environment the parent sets); ``baseline`` runs a flow of the
same shape (the same Prefect tasks per job, thread pool and concurrency) whose tasks do nothing
and touch no database. Reported: wall time of the flow call, the jobs it processed, the process's
peak resident memory.
"""

from __future__ import annotations

import contextvars
import json
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, tags, task
from prefect.cache_policies import NO_CACHE

from bench.types import IMPORT_PATH
from tasks.results import ClaimedJob, ConfigureSummary, Discovery, InsertSummary, StepOutcome


@task(name="discover-inputs", cache_policy=NO_CACHE)
def discover_inputs(job_type: str) -> Discovery:
    now = datetime.now(UTC)
    return Discovery(job_type=job_type, since=now, until=now)


@task(name="insert-jobs", cache_policy=NO_CACHE)
def insert_jobs(job_type: str, discovery: Discovery) -> InsertSummary:
    return InsertSummary()


@task(name="configure-batch", cache_policy=NO_CACHE)
def configure_batch(job_type: str, job_ids: list[int]) -> ConfigureSummary:
    return ConfigureSummary()


@task(name="claim-jobs", cache_policy=NO_CACHE)
def claim_jobs(job_type: str, first: int, limit: int) -> list[ClaimedJob]:
    return [ClaimedJob(job_id=first + n, lease_token="") for n in range(limit)]


@task(name="pre-process", task_run_name="pre-process {claimed.label}", cache_policy=NO_CACHE)
def pre_process(job_type: str, claimed: ClaimedJob) -> StepOutcome:
    return StepOutcome(job_id=claimed.job_id, lease_token=claimed.lease_token)


@task(name="run-container", task_run_name="run-container {outcome.label}", cache_policy=NO_CACHE)
def run_container(job_type: str, outcome: StepOutcome, runner: str | None = None) -> StepOutcome:
    return outcome


@task(name="post-process", task_run_name="post-process {outcome.label}", cache_policy=NO_CACHE)
def post_process(job_type: str, outcome: StepOutcome) -> StepOutcome:
    return outcome


@task(name="publish", task_run_name="publish {outcome.label}", cache_policy=NO_CACHE)
def publish(job_type: str, outcome: StepOutcome) -> StepOutcome:
    return outcome


@task(name="summarize", cache_policy=NO_CACHE)
def summarize(job_type: str) -> dict[str, int]:
    return {}


@flow(name="baseline-pipeline")
def baseline_pipeline(job_type: str, max_jobs: int, concurrency: int) -> int:
    """run-pipeline's shape (:func:`flows.common.process_ready_jobs`): discover, insert,
    configure, a count, then jobs claimed ahead (at least 16, more whenever no more than
    ``concurrency`` are left, with a configure before each claim), each job's four tasks one
    after the other in a pool thread of ``concurrency``, under the job's tags; a summary."""
    inserted = insert_jobs(job_type, discover_inputs(job_type))
    configure_batch(job_type, inserted.inserted)
    summarize(job_type)
    ahead, started, processed = max(2 * concurrency, 16), 0, 0
    in_flight: set[Future[StepOutcome]] = set()
    with ThreadPoolExecutor(concurrency) as pool:
        while started < max_jobs or in_flight:
            if len(in_flight) <= concurrency and started < max_jobs:
                if started:
                    configure_batch(job_type, [])
                claimed = claim_jobs(
                    job_type, started, min(ahead - len(in_flight), max_jobs - started)
                )
                for job in claimed:
                    context = contextvars.copy_context()
                    in_flight.add(pool.submit(context.run, run_job, job_type, job))
                started += len(claimed)
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            processed += sum(1 for future in done if future.result().ok)
    summarize(job_type)  # the run's jobs by status
    summarize(job_type)  # the job type's jobs by status
    return processed


def run_job(job_type: str, claimed: ClaimedJob) -> StepOutcome:
    with tags("job_type:bench_noop"):
        staged = pre_process(job_type, claimed)
        ran = run_container(job_type, staged)
        posted = post_process(job_type, ran)
        return publish(job_type, posted)


def peak_rss_mb() -> float:
    """Peak resident memory of this process: ``VmHWM`` (getrusage's ``ru_maxrss`` would keep
    the parent's peak across the fork and exec that started this process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory is measured on Linux only")


def main(argv: list[str]) -> int:
    mode, jobs, concurrency = argv[0], int(argv[1]), int(argv[2])
    started = time.perf_counter()
    if mode == "jobline":
        from flows.pipeline import run_pipeline

        summary = run_pipeline(
            job_type=IMPORT_PATH, max_jobs=jobs, concurrency=concurrency, runner="local"
        )
        processed, detail = summary.succeeded, summary.model_dump()
    else:
        processed, detail = baseline_pipeline(IMPORT_PATH, jobs, concurrency), {}
    seconds = time.perf_counter() - started
    report = {"seconds": seconds, "processed": processed, "peak_rss_mb": peak_rss_mb()}
    print(json.dumps({**report, "summary": detail}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
