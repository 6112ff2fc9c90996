"""The docker runner's own overhead: N trivial jobs through :class:`DockerRunner` against the same
containers started by a bare loop (``docker run --rm --network none`` with the same mounts), both at
the same concurrency.

    python -m bench.docker_runner [--jobs 20] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

from jobline.settings import Settings
from tasks.runners.base import RunRequest
from tasks.runners.docker import DockerRunner, docker_available
from tasks.runners.images import build_busybox_image, ensure_image

IMAGE = "jobline/bench-busybox:0.1"
SCRIPT = "echo ok > output/x"


def _work_dir(root: Path, index: int) -> Path:
    work = root / f"job-{index}"
    (work / "input").mkdir(parents=True)
    (work / "output").mkdir()
    (work / "output").chmod(0o777)  # the same rights the runner gives the container's user
    return work


def _check(work: Path) -> None:
    if (work / "output" / "x").read_text() != "ok\n":
        raise RuntimeError(f"{work}: the job did not write output/x")


def run_with_runner(runner: DockerRunner, root: Path, index: int) -> None:
    """One job through the docker runner."""
    work = _work_dir(root, index)
    request = RunRequest(
        job_id=900_000_000 + index,
        job_key=f"bench-{index}",
        attempt=1,
        image=IMAGE,
        command=["sh", "-c", SCRIPT],
        work_dir=work,
        flavor="extra_small",
        timeout=60,
    )
    result = runner.run(request)
    if not result.succeeded:
        raise RuntimeError(f"job {index} failed: {result.log_tail}")
    _check(work)


def run_with_cli(docker_cli: str, runner: DockerRunner, root: Path, index: int) -> None:
    """The same container (mounts, user, limits, hardening) with the docker command line."""
    work = _work_dir(root, index)
    flavor = runner.flavor("extra_small")
    subprocess.run(
        [
            docker_cli, "run", "--rm", "--network", "none", "--user", runner.user, "-w", "/work",
            "-v", f"{work / 'input'}:/work/input:ro", "-v", f"{work / 'output'}:/work/output",
            "--cpus", str(flavor.cpus), "--memory", str(flavor.memory_bytes),
            "--memory-swap", str(flavor.memory_bytes), "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            IMAGE, "sh", "-c", SCRIPT,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    _check(work)


def timed(label: str, jobs: int, concurrency: int, job: Callable[[Path, int], None]) -> float:
    """Wall time of ``jobs`` calls of ``job`` on a pool of ``concurrency`` threads."""
    with tempfile.TemporaryDirectory(prefix=f"jobline-bench-{label}-") as root:
        job(Path(root), -1)  # warm-up, not timed
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(lambda index: job(Path(root), index), range(jobs)))
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docker_runner", description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    docker_cli = shutil.which("docker")
    if not docker_available(timeout=5) or docker_cli is None:
        print("no Docker engine answers (or no docker command): nothing to measure")
        return 1
    client = docker.from_env()
    ensure_image(client, IMAGE, build_busybox_image)
    runner = DockerRunner(Settings(image_pull_policy="never"), client=client)

    runner_seconds = timed(
        "runner", args.jobs, args.concurrency, lambda root, i: run_with_runner(runner, root, i)
    )
    cli_seconds = timed(
        "cli",
        args.jobs,
        args.concurrency,
        lambda root, i: run_with_cli(docker_cli, runner, root, i),
    )
    print(f"{args.jobs} trivial jobs at concurrency {args.concurrency} (image {IMAGE})")
    print(f"  DockerRunner:              {runner_seconds:6.2f} s  "
          f"({runner_seconds / args.jobs * 1000:.0f} ms/job)")  # fmt: skip
    print(f"  docker run --rm (CLI loop): {cli_seconds:6.2f} s  "
          f"({cli_seconds / args.jobs * 1000:.0f} ms/job)")  # fmt: skip
    print(f"  ratio runner / CLI:        {runner_seconds / cli_seconds:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
