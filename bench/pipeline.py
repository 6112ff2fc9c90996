"""pipeline and memory: ``run-pipeline`` under Prefect, on the no-op job type of :mod:`bench.types`.

* pipeline: N jobs (200 in a full run) through ``run-pipeline`` with the local runner running
  ``true``; per-job overhead = wall time of the flow call / N. Baseline: a flow of the same shape
  (:mod:`bench.pipeline_child`) with empty tasks and no database, on the same Prefect server.
* memory: peak resident memory of the process running ``run-pipeline`` over a small and a large
  number of jobs (500 and 2,000 in a full run); the large run must stay within 1.2x the small.

Every flow runs in a fresh process (``python -m bench.pipeline_child``) on its own scratch
database and data dir, against one Prefect server: a temporary one on its own database of the
same PostgreSQL server, or the one ``PREFECT_API_URL`` names.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.prefect_server import prefect_api
from bench.report import Measurement
from bench.scratch import run_child_process, scratch_database
from bench.types import child_env, write_products

#: Seconds one child flow run may take before it is killed.
CHILD_TIMEOUT = 1_800


@dataclass
class PipelineSizes:
    jobs: int
    memory_small: int
    memory_large: int
    concurrency: int
    repeats: int


def run_child(
    mode: str, jobs: int, concurrency: int, api_url: str, server_url: str
) -> dict[str, Any]:
    """One flow run in a fresh process, on a fresh database and data dir; its JSON report."""
    with (
        scratch_database(server_url) as database_url,
        tempfile.TemporaryDirectory(prefix="jobline-bench-pipeline-") as scratch,
    ):
        data_dir = Path(scratch) / "data"
        write_products(data_dir / "input", jobs if mode == "jobline" else 0)
        report = run_child_process(
            "bench.pipeline_child",
            [mode, str(jobs), str(concurrency)],
            env=child_env(database_url, data_dir, api_url),
            scratch=Path(scratch),
            timeout=CHILD_TIMEOUT,
            what=f"{mode} flow over {jobs} jobs",
        )
    if report["processed"] != jobs:
        raise RuntimeError(f"{mode}: {report['processed']} of {jobs} jobs succeeded: {report}")
    return report


def run(database_url: str, server_url: str, sizes: PipelineSizes, log: Any) -> list[Measurement]:
    """The pipeline and memory benchmarks (``database_url`` is unused: each run gets its own)."""
    with prefect_api(server_url) as api_url:
        log(f"  Prefect API at {api_url}")

        def child(mode: str, jobs: int) -> dict[str, Any]:
            report = run_child(mode, jobs, sizes.concurrency, api_url, server_url)
            log(f"  {mode} flow, {jobs} jobs: {report['seconds']:.1f} s, "
                f"peak RSS {report['peak_rss_mb']:.0f} MB")  # fmt: skip
            return report

        # Interleaved, best of the repeats: the Prefect server gets slower as its database fills.
        baselines, pipelines = [], []
        for _ in range(sizes.repeats):
            baselines.append(child("baseline", sizes.jobs))
            pipelines.append(child("jobline", sizes.jobs))
        baseline = min(baselines, key=lambda report: report["seconds"])
        pipeline = min(pipelines, key=lambda report: report["seconds"])
        small = child("jobline", sizes.memory_small)
        large = child("jobline", sizes.memory_large)
    per_job = pipeline["seconds"] / sizes.jobs * 1000
    baseline_per_job = baseline["seconds"] / sizes.jobs * 1000
    growth = large["peak_rss_mb"] / small["peak_rss_mb"]
    return [
        Measurement(
            name="pipeline",
            value=per_job,
            unit="ms/job",
            baseline=baseline_per_job,
            ratio=per_job / baseline_per_job,
            ratio_note="run-pipeline per job / same-shape empty flow per job",
            target="≤ 1.5x baseline",
            passed=per_job <= 1.5 * baseline_per_job,
            details={
                "jobs": sizes.jobs,
                "concurrency": sizes.concurrency,
                "seconds": [report["seconds"] for report in pipelines],
                "baseline_seconds": [report["seconds"] for report in baselines],
                "summary": pipeline["summary"],
            },
        ),
        Measurement(
            name=f"memory ({sizes.memory_large} jobs)",
            value=large["peak_rss_mb"],
            unit="MB",
            baseline=small["peak_rss_mb"],
            baseline_unit=f"MB at {sizes.memory_small} jobs",
            ratio=growth,
            ratio_note=f"peak RSS at {sizes.memory_large} jobs / at {sizes.memory_small} jobs",
            target="≤ 500 MB and ≤ 1.2x the small run",
            passed=large["peak_rss_mb"] <= 500 and growth <= 1.2,
            details={
                "small_jobs": sizes.memory_small,
                "large_jobs": sizes.memory_large,
                "small_seconds": small["seconds"],
                "large_seconds": large["seconds"],
                "measured_as": "VmHWM of the process running the flow",
            },
        ),
    ]
