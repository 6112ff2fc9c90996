"""launcher: no-op jobs through the launcher and two process workers, against ``process-jobs``
in one flow run on the same machine.

* launcher, batch 1 and batch 20: ready jobs of :mod:`bench.types`' no-op job type, launched by
  passes of the launcher (every 0.5 s, in this process) as ``process-job`` / ``process-batch``
  flow runs on a process work pool served by two ``prefect worker start`` processes.
* baseline: the same number of jobs through one ``process-jobs`` flow run (concurrency 4) that
  one of those workers runs: the in-process path, paying one worker start like the others.
* jobs/s is jobs / (time from the first launch, or from asking for the flow run, until the last
  job is done), once the mode's workers poll the pool; ready -> started latency is per job,
  from its history.
* launcher pass: one pass (admission over 10,000 ready jobs, claims, flow runs created on a pool
  no worker serves) and the admission and claim alone.

Every mode runs on its own scratch database with its own workers, against one Prefect server
(a temporary one unless ``PREFECT_API_URL`` is set); prefect.yaml's ``process-jobs``,
``process-job`` and ``process-batch`` are deployed to it from the repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.prefect_server import prefect_api, stop_process
from bench.report import Measurement, percentile
from bench.scratch import scratch_database
from bench.types import IMPORT_PATH, Noop, write_products
from db.records import NewJob
from db.store import JobStore
from jobline.settings import FlavorPool, Settings

REPO = Path(__file__).resolve().parents[1]
#: The pool prefect.yaml deploys on; both workers serve it.
POOL = "jobline"
IDLE_POOL = "bench-idle"
PREFECT = (sys.executable, "-m", "prefect", "--no-prompt")
#: The longest one mode may take (seconds).
MODE_TIMEOUT = 1_800


@dataclass
class LauncherSizes:
    jobs: int
    #: Jobs of the batch-1 mode (each is a flow run, i.e. a process start of seconds).
    single_jobs: int
    pass_jobs: int
    workers: int = 2
    worker_limit: int = 2
    modes: tuple[str, ...] = ("single", "batched")


@dataclass
class Mode:
    """What one mode measured."""

    jobs: int
    seconds: float
    latencies: list[float]
    flow_runs: int

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.5)

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 0.95)


def prefect(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)}: {done.stdout}\n{done.stderr}")
    return done.stdout


def base_env(api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLINE_")}
    env.update(
        PREFECT_API_URL=api_url,
        PWD=str(REPO),
        PYTHONPATH=str(REPO),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def settings_for(database_url: str, data_dir: Path, batch: int) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        job_types=[batch_type(batch)],
        flavor_pools={"small": FlavorPool(pool=POOL)},
        # Not binding: the benchmark measures dispatch, the workers' --limit bounds what runs.
        launcher_max_running_weight=1000,
        launcher_max_launches_per_pass=200,
    )


def batch_type(batch: int) -> str:
    return IMPORT_PATH if batch <= 1 else f"bench.launcher:Noop{batch}"


class Noop20(Noop):
    """The no-op job type, 20 jobs per flow run."""

    name = "bench_noop"
    batch_size = 20


def worker_env(env: dict[str, str], settings: Settings) -> dict[str, str]:
    return {
        **env,
        "JOBLINE_DATABASE_URL": settings.resolved_database_url,
        "JOBLINE_DATA_DIR": str(settings.data_dir),
        "JOBLINE_JOB_TYPES": ",".join(settings.job_types),
        "JOBLINE_RUNNER": "local",
    }


@contextmanager
def workers(env: dict[str, str], count: int, limit: int, log_dir: Path) -> Iterator[None]:
    before = online_workers(env["PREFECT_API_URL"])
    started = []
    for index in range(count):
        log = (log_dir / f"worker-{index}.log").open("ab")
        command = [*PREFECT[:3], "worker", "start", "--pool", POOL, "--type", "process"]
        started.append(
            subprocess.Popen(
                [*command, "--limit", str(limit)], cwd=REPO, env=env, stdout=log, stderr=log
            )
        )
    try:
        wait_online(env["PREFECT_API_URL"], count, before)
        yield
    finally:
        for process in started:  # all at once, then each waited for
            process.terminate()
        for process in started:
            stop_process(process)


def online_workers(api_url: str) -> set[str]:
    with httpx.Client(base_url=api_url, timeout=30) as api:
        found = api.post(f"/work_pools/{POOL}/workers/filter", json={})
        found.raise_for_status()
        return {worker["name"] for worker in found.json() if worker.get("status") == "ONLINE"}


def wait_online(api_url: str, count: int, before: set[str]) -> None:
    """Wait until ``count`` new workers poll the pool: a worker takes seconds to start on a
    loaded machine, and a launch before that would time the worker's start, not the launcher
    (the previous mode's workers may still count as online for a while)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(online_workers(api_url) - before) >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{count} workers not online on {POOL} after 120 s")


def ready_products(settings: Settings, count: int) -> list[int]:
    """``count`` no-op products and their jobs, ready, through the plain steps."""
    from jobtypes.base import load_job_type
    from tasks import steps

    write_products(settings.data_dir / "input", count)
    store = JobStore.from_settings(settings)
    kind = load_job_type(settings.job_types[0], settings)
    ctx = steps.StepContext(settings=settings, store=store)
    now = datetime.now(UTC)
    discovery = steps.discover_inputs(ctx, kind, now - timedelta(days=1), now + timedelta(1))
    inserted = steps.insert_jobs(ctx, kind, discovery).inserted
    ready = steps.configure_jobs(ctx, kind, inserted).ready
    store.engine.dispose()
    if len(ready) != count:
        raise RuntimeError(f"{len(ready)} of {count} jobs ready")
    return ready


def wait_done(store: JobStore, job_ids: list[int], step: Callable[[], object]) -> float:
    """Call ``step`` every 0.5 s until every job is done; the time it took."""
    started = time.perf_counter()
    deadline = time.monotonic() + MODE_TIMEOUT
    while True:
        statuses = store.count_statuses(job_ids)
        if statuses.get("done", 0) == len(job_ids):
            return time.perf_counter() - started
        failed = sum(n for s, n in statuses.items() if s in ("cancelled", "internal_error"))
        if failed or time.monotonic() > deadline:
            raise RuntimeError(f"jobs not done: {statuses}")
        step()
        time.sleep(0.5)


def latencies(store: JobStore, job_ids: list[int]) -> list[float]:
    """Per job: seconds from its (last) ``ready`` to its ``started``."""
    found = []
    for job_id in job_ids:
        history = store.history(job_id)
        ready = max(c.changed_at for c in history if c.to_status == "ready")
        started = min(c.changed_at for c in history if c.to_status == "started")
        found.append((started - ready).total_seconds())
    return found


def launcher_mode(
    api_url: str, server_url: str, jobs: int, batch: int, sizes: LauncherSizes, log: Any
) -> Mode:
    from prefect import get_client

    from tasks.launcher import launch_pass

    with (
        scratch_database(server_url) as database_url,
        tempfile.TemporaryDirectory(prefix="jobline-bench-launcher-") as scratch,
    ):
        settings = settings_for(database_url, Path(scratch) / "data", batch)
        env = worker_env(base_env(api_url), settings)
        job_ids = ready_products(settings, jobs)
        store = JobStore.from_settings(settings)
        flow_runs: set[str] = set()
        with (
            workers(env, sizes.workers, sizes.worker_limit, Path(scratch)),
            get_client(sync_client=True) as client,
        ):

            def one_pass() -> None:
                report = launch_pass(settings, store, client, log=lambda _: None)
                flow_runs.update(report.flow_run_ids.values())

            seconds = wait_done(store, job_ids, one_pass)
        measured = Mode(jobs, seconds, latencies(store, job_ids), len(flow_runs))
        store.engine.dispose()
    log(f"  launcher, batch {batch}: {jobs} jobs in {seconds:.1f} s, {measured.flow_runs} runs")
    return measured


def in_process_mode(
    api_url: str, server_url: str, jobs: int, sizes: LauncherSizes, log: Any
) -> Mode:
    with (
        scratch_database(server_url) as database_url,
        tempfile.TemporaryDirectory(prefix="jobline-bench-launcher-") as scratch,
    ):
        settings = settings_for(database_url, Path(scratch) / "data", 1)
        env = worker_env(base_env(api_url), settings)
        job_ids = ready_products(settings, jobs)
        store = JobStore.from_settings(settings)
        with workers(env, sizes.workers, sizes.worker_limit, Path(scratch)):
            asked = []

            def ask_once() -> None:
                if not asked:
                    asked.append(
                        run_deployment(
                            api_url,
                            "process-jobs/process",
                            {"job_type": IMPORT_PATH, "max_jobs": jobs, "concurrency": 4},
                        )
                    )

            seconds = wait_done(store, job_ids, ask_once)
        measured = Mode(jobs, seconds, latencies(store, job_ids), 1)
        store.engine.dispose()
    log(f"  in-process process-jobs: {jobs} jobs in {seconds:.1f} s")
    return measured


def run_deployment(api_url: str, name: str, parameters: dict[str, Any]) -> str:
    """Ask for a flow run of the deployment ``name``."""
    with httpx.Client(base_url=api_url, timeout=30) as api:
        found = api.get(f"/deployments/name/{name}")
        found.raise_for_status()
        deployment = found.json()
        created = api.post(
            f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters}
        )
        created.raise_for_status()
        return created.json()["id"]


def pass_over(
    api_url: str, server_url: str, ready: int, batch: int, log: Any
) -> tuple[float, float, int, int]:
    """One launcher pass over ``ready`` ready jobs of a job type batching ``batch`` jobs per
    flow run (the runs go to a pool nobody serves), and the admission and claim alone over the
    same number: (pass s, admission s, jobs launched, flow runs created)."""
    from prefect import get_client

    from db.launcher import Limits, TypePolicy, admit_and_claim
    from tasks.launcher import launch_pass

    with (
        scratch_database(server_url) as database_url,
        tempfile.TemporaryDirectory(prefix="jobline-bench-launcher-") as scratch,
    ):
        settings = settings_for(database_url, Path(scratch) / "data", batch).model_copy(
            update={
                "flavor_pools": {"small": FlavorPool(pool=IDLE_POOL)},
                "launcher_max_running_weight": 10.0**9,  # the first pass's launches stay queued
            }
        )
        store = JobStore.from_settings(settings)

        def insert_ready(prefix: str) -> None:
            kind = batch_type(batch)
            new = [NewJob(kind, f"{prefix}{n:06d}", queue="bench") for n in range(ready)]
            ids = store.insert_jobs(new).inserted_ids
            store.transition_many(ids, "configured", expected_from="initialized")
            store.transition_many(ids, "ready", expected_from="configured")

        insert_ready("A")
        with get_client(sync_client=True) as client:
            launch_pass(settings, store, client, log=lambda _: None)  # copies the deployment
            insert_ready("B")
            started = time.perf_counter()
            report = launch_pass(settings, store, client, log=log)
            whole = time.perf_counter() - started
        limits = Limits(
            10**9,
            settings.launcher_max_launches_per_pass,
            max_flow_runs=settings.launcher_max_flow_runs_per_pass,
        )
        started = time.perf_counter()
        kind = batch_type(batch)
        admit_and_claim(store, {kind: TypePolicy(kind, batch_size=batch)}, limits, "bench")
        admission = time.perf_counter() - started
        store.engine.dispose()
    log(
        f"  one pass over {ready} ready jobs, batch {batch}: {whole:.2f} s ({report.launched} "
        f"launched in {report.flow_runs} flow runs)"
    )
    return whole, admission, report.launched, report.flow_runs


def run(database_url: str, server_url: str, sizes: LauncherSizes, log: Any) -> list[Measurement]:
    """The launcher benchmark (``database_url`` is unused: each mode gets its own)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with prefect_api(server_url) as api_url, temporary_settings({PREFECT_API_URL: api_url}):
        log(f"  Prefect API at {api_url}")
        env = base_env(api_url)
        for pool in (POOL, IDLE_POOL):
            prefect(env, "work-pool", "create", pool, "--type", "process", "--overwrite")
        prefect(
            env, "deploy", "--name", "process", "--name", "process-job", "--name", "process-batch"
        )
        modes = sizes.modes
        baseline = in_process_mode(api_url, server_url, sizes.jobs, sizes, log)
        measured = [_mode("in-process process-jobs (1 flow run)", baseline, None, "baseline")]
        if "single" in modes:
            single = launcher_mode(api_url, server_url, sizes.single_jobs, 1, sizes, log)
            measured.append(_mode("launcher, batch 1", single, baseline, "reported"))
        if "batched" in modes:
            batched = launcher_mode(api_url, server_url, sizes.jobs, 20, sizes, log)
            measured.append(_mode("launcher, batch 20", batched, baseline, "≥ 0.5x"))
        for batch in (1, 20):
            whole, admission, launched, runs = pass_over(
                api_url, server_url, sizes.pass_jobs, batch, log
            )
            measured.append(
                Measurement(
                    name=f"launcher pass over {sizes.pass_jobs:,} ready jobs, batch {batch}",
                    value=whole,
                    unit="s",
                    baseline=admission,
                    baseline_unit="s for admission + claim alone",
                    target="< 2 s",
                    passed=whole < 2.0,
                    details={"launched": launched, "flow_runs": runs, "admission_s": admission},
                )
            )
    return measured


def _mode(name: str, mode: Mode, baseline: Mode | None, target: str) -> Measurement:
    ratio = mode.jobs_per_second / baseline.jobs_per_second if baseline else None
    passed = True
    if target == "≥ 0.5x" and ratio is not None:
        passed = ratio >= 0.5
    return Measurement(
        name=f"{name}, {mode.jobs} jobs",
        value=mode.jobs_per_second,
        unit="jobs/s",
        baseline=baseline.jobs_per_second if baseline else None,
        baseline_unit="jobs/s in-process" if baseline else None,
        ratio=ratio,
        ratio_note="jobs/s / in-process jobs/s",
        target=target,
        passed=passed,
        details={
            "seconds": mode.seconds,
            "flow_runs": mode.flow_runs,
            "ready_to_started_p50_s": mode.p50,
            "ready_to_started_p95_s": mode.p95,
        },
    )


def main() -> int:
    """``python -m bench.launcher [jobs] [single_jobs] [single,batched]``: this benchmark
    alone, printed (the in-process baseline and the passes always run)."""
    from bench.scratch import admin_url

    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    single = int(sys.argv[2]) if len(sys.argv) > 2 else jobs
    modes = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("single", "batched")
    sizes = LauncherSizes(jobs=jobs, single_jobs=single, pass_jobs=10_000, modes=modes)
    for m in run("", admin_url(Settings()), sizes, lambda line: print(line, file=sys.stderr)):
        d = m.details
        line = f"{m.name}: {m.value:.2f} {m.unit}"
        if "ready_to_started_p50_s" in d:
            line += f", ready->started p50 {d['ready_to_started_p50_s']:.2f} s"
            line += f" p95 {d['ready_to_started_p95_s']:.2f} s"
        if m.ratio is not None:
            line += f", ratio {m.ratio:.2f}"
        if "admission_s" in d:
            line += f" ({d['launched']} jobs in {d['flow_runs']} flow runs; admission + claim"
            line += f" alone {d['admission_s']:.3f} s)"
        print(line + f" [target {m.target}: {'pass' if m.passed else 'FAIL'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
