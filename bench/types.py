"""The job types of the pipeline benchmarks, and the environment of the flow runs that run them.

``Noop``: a product is a folder holding one small file, and the processing is ``true`` on the
local runner (no output, so the job ends ``processed -> done``). ``Sleeper``: the processing
sleeps, in a container or a local process."""

from __future__ import annotations

import os
from pathlib import Path

from jobtypes.base import JobType

IMPORT_PATH = "bench.types:Noop"


class Noop(JobType):
    name = "bench_noop"
    queue = "bench"
    command = ["true"]
    local_command = ["true"]
    runner = "local"
    max_attempts = 1
    timeout = 60.0


def write_products(input_root: Path, count: int) -> None:
    """``count`` products under the job type's input folder (``data_dir/input/bench_noop``)."""
    folder = input_root / Noop.name
    for index in range(count):
        product = folder / f"P{index:06d}"
        product.mkdir(parents=True, exist_ok=True)
        (product / "data.bin").write_bytes(b"x" * 64)


SLEEPER_PATH = "bench.types:Sleeper"
SLEEPER_IMAGE = "jobline-bench/sleep:1"


class Sleeper(JobType):
    """The concurrency benchmark's job type: product ``sleep-<seconds>-<n>`` sleeps that long,
    in a busybox container (docker runner) or a host shell (local runner); no output."""

    name = "bench_sleeper"
    queue = "bench_sleeper"
    image = SLEEPER_IMAGE
    command = ["/bin/sh", "-c", 'p="${JOBLINE_PRODUCT_ID#sleep-}"; sleep "${p%-*}"']
    worker_flavor = "extra_small"
    max_attempts = 1
    timeout = 600.0


def write_sleepers(input_root: Path, count: int, seconds: float) -> None:
    """``count`` products that sleep ``seconds`` each, under the sleeper's input folder."""
    folder = input_root / Sleeper.name
    for index in range(count):
        product = folder / f"sleep-{seconds:g}-{index:03d}"
        product.mkdir(parents=True, exist_ok=True)
        (product / "data.bin").write_bytes(b"x")


#: Every job type above: a flow run's settings must register them (the registry refuses others).
JOB_TYPES = (IMPORT_PATH, SLEEPER_PATH)


def child_env(database_url: str, data_dir: Path, api_url: str) -> dict[str, str]:
    """The environment of a benchmark's flow run process: its store, its data dir, its Prefect
    API, the benchmark job types registered, and images never pulled (there is no registry)."""
    return {
        **os.environ,
        "JOBLINE_DATABASE_URL": database_url,
        "JOBLINE_DATA_DIR": str(data_dir),
        "JOBLINE_IMAGE_PULL_POLICY": "never",
        "JOBLINE_JOB_TYPES": ",".join(JOB_TYPES),
        "PREFECT_API_URL": api_url,
    }
