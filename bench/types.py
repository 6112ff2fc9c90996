"""The job type of the pipeline benchmarks: a product is a folder holding one small file, and the
processing is ``true`` on the local runner (no output, so the job ends ``processed -> done``)."""

from __future__ import annotations

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
