"""One measured ``run-pipeline`` of the sleeper job type in a fresh process, for
:mod:`bench.concurrency`; prints one JSON line.

    python -m bench.concurrency_child RUNNER CONCURRENCY

The store, the data dir (holding the products) and the Prefect server come from the environment
the parent sets. Reported: wall time of the flow call and the jobs it finished done.
"""

from __future__ import annotations

import json
import sys
import time

from bench.types import SLEEPER_PATH


def main(argv: list[str]) -> int:
    runner, concurrency = argv[0], int(argv[1])
    from flows.pipeline import run_pipeline

    started = time.perf_counter()
    summary = run_pipeline(job_type=SLEEPER_PATH, concurrency=concurrency, runner=runner)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "done": summary.succeeded, "jobs": summary.jobs}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
