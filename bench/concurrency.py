"""concurrency: N jobs whose processing sleeps S seconds, at concurrency N, take about S.

For each runner (local, and docker when an engine answers) and N in (4, 8): the wall time of a
``run-pipeline`` call over N products that sleep S seconds each, at ``concurrency`` N. Baseline,
measured in the same run: the same flow over ONE product that sleeps 0 s, i.e. the fixed
overhead of a run with one job (discovery, the job's steps and task runs, the summary), best
of two after a first run that is not measured.
Target: wall time <= 1.2 x S + that overhead, i.e. the N jobs' processing overlapped. Before
the current processing loop a pool of ``concurrency`` threads ran about one job at a time
(wall time about N x S).

Every flow runs in a fresh process (``python -m bench.concurrency_child``) on its own scratch
database and data dir, against one Prefect server (as :mod:`bench.pipeline`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.prefect_server import prefect_api
from bench.report import Measurement
from bench.scratch import run_child_process, scratch_database
from bench.types import SLEEPER_IMAGE, child_env, write_sleepers

CHILD_TIMEOUT = 900
#: The benchmark's allowance for jobs that should overlap: wall <= SLACK x S + overhead.
SLACK = 1.2


@dataclass
class ConcurrencySizes:
    sleep_seconds: float
    jobs: tuple[int, ...] = (4, 8)
    runners: tuple[str, ...] = ("local", "docker")


def run_child(
    runner: str, jobs: int, seconds: float, api_url: str, server_url: str
) -> dict[str, Any]:
    """One flow run over ``jobs`` sleepers at concurrency ``jobs``, in a fresh process."""
    with (
        scratch_database(server_url) as database_url,
        tempfile.TemporaryDirectory(prefix="jobline-bench-concurrency-") as scratch,
    ):
        data_dir = Path(scratch) / "data"
        write_sleepers(data_dir / "input", jobs, seconds)
        report = run_child_process(
            "bench.concurrency_child",
            [runner, str(jobs)],
            env=child_env(database_url, data_dir, api_url),
            scratch=Path(scratch),
            timeout=CHILD_TIMEOUT,
            what=f"{runner} x {jobs}",
        )
    if report["done"] != jobs:
        raise RuntimeError(f"{runner} x {jobs}: {report['done']} of {jobs} jobs done: {report}")
    return report


def docker_available(log: Any) -> bool:
    """Whether an engine answers; builds the sleeper's busybox image (no registry) if so."""
    try:
        import docker

        from tasks.runners.images import build_busybox_image

        client = docker.from_env(timeout=10)
        client.ping()
        build_busybox_image(client, SLEEPER_IMAGE)
        client.close()
    except Exception as error:  # noqa: BLE001 - any failure means: no docker figures this run
        log(f"  no docker runner figures: {error}")
        return False
    return True


def run(database_url: str, server_url: str, sizes: ConcurrencySizes, log: Any) -> list[Measurement]:
    """The concurrency benchmark (``database_url`` is unused: each run gets its own)."""
    seconds = sizes.sleep_seconds
    runners = [r for r in sizes.runners if r != "docker" or docker_available(log)]
    measurements = []
    with prefect_api(server_url) as api_url:
        log(f"  Prefect API at {api_url}")
        for runner in runners:
            # The first flow run on a server registers the flow and its tasks: not measured.
            run_child(runner, 1, 0, api_url, server_url)
            overhead = min(run_child(runner, 1, 0, api_url, server_url)["seconds"] for _ in "ab")
            log(f"  {runner}: one job sleeping 0 s: {overhead:.1f} s (best of 2)")
            for jobs in sizes.jobs:
                wall = run_child(runner, jobs, seconds, api_url, server_url)["seconds"]
                log(f"  {runner}: {jobs} jobs sleeping {seconds:g} s at concurrency {jobs}: "
                    f"{wall:.1f} s")  # fmt: skip
                measurements.append(
                    Measurement(
                        name=f"concurrency ({runner}, {jobs} jobs of {seconds:g} s at {jobs})",
                        value=wall,
                        unit="s",
                        baseline=overhead,
                        baseline_unit="s for one job of 0 s",
                        ratio=(wall - overhead) / seconds,
                        ratio_note="(wall time - one job's overhead) / S",
                        target=f"≤ {SLACK:g} x S + one job's overhead",
                        passed=wall <= SLACK * seconds + overhead,
                        details={
                            "runner": runner,
                            "jobs": jobs,
                            "concurrency": jobs,
                            "sleep_seconds": seconds,
                            "one_job_overhead_seconds": overhead,
                            "serial_would_take_seconds": jobs * seconds + overhead,
                        },
                    )
                )
    return measurements
