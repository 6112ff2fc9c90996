"""``python -m bench``: the benchmark suite against the PostgreSQL in ``JOBLINE_DATABASE_URL``.

Creates a scratch database on that server (and a second one for the Prefect server it starts
unless ``PREFECT_API_URL`` is set), runs the benchmarks, drops what it created, prints the table
and writes it as JSON to ``bench/results/latest.json``. ``--quick`` runs smaller sizes (under
3 minutes); the default is the full run whose table the README shows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import concurrency, console, insert, launcher, lifecycle, pipeline, query, streams
from bench.report import LATEST, Measurement, markdown_table, text_table, write_json
from bench.scratch import admin_url, machine_facts, scratch_database
from jobline.exceptions import ConfigurationError
from jobline.settings import Settings

BENCHMARKS = (
    "insert",
    "lifecycle",
    "query",
    "pipeline",
    "concurrency",
    "streams",
    "console",
    "launcher",
)
#: Jobs a lifecycle worker claims at a time (and moves through each status in one statement).
BATCH = 100


def sizes(quick: bool) -> dict[str, object]:
    """The size of every benchmark: the issue's for a full run, smaller ones for ``--quick``."""
    if quick:
        return {
            "insert": insert.InsertSizes(jobs=20_000, naive_jobs=1_000, repeats=1),
            "lifecycle": lifecycle.LifecycleSizes(
                jobs=4_000, workers=8, batch=BATCH, latency_jobs=100, repeats=1
            ),
            "query": query.QuerySizes(jobs=200_000, repeats=20),
            "pipeline": pipeline.PipelineSizes(
                jobs=20, memory_small=40, memory_large=160, concurrency=4, repeats=1
            ),
            "streams": streams.StreamSizes(sse=100, waits=100, posts=60),
            "concurrency": concurrency.ConcurrencySizes(sleep_seconds=3.0, jobs=(4,)),
            "console": console.ConsoleSizes(jobs=200_000, repeats=10),
            "launcher": launcher.LauncherSizes(jobs=60, single_jobs=20, pass_jobs=10_000),
        }
    return {
        "insert": insert.InsertSizes(jobs=100_000, naive_jobs=5_000, repeats=3),
        "lifecycle": lifecycle.LifecycleSizes(
            jobs=20_000, workers=8, batch=BATCH, latency_jobs=300, repeats=2
        ),
        "query": query.QuerySizes(jobs=1_000_000, repeats=50),
        "pipeline": pipeline.PipelineSizes(
            jobs=200, memory_small=500, memory_large=2_000, concurrency=4, repeats=2
        ),
        "streams": streams.StreamSizes(sse=100, waits=100, posts=300),
        "concurrency": concurrency.ConcurrencySizes(sleep_seconds=20.0),
        "console": console.ConsoleSizes(jobs=1_000_000, repeats=30),
        "launcher": launcher.LauncherSizes(jobs=200, single_jobs=200, pass_jobs=10_000),
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(server_url: str, chosen: list[str], quick: bool) -> list[Measurement]:
    """Each chosen benchmark on its own scratch database."""
    size = sizes(quick)
    runners: dict[str, Callable[[str], list[Measurement]]] = {
        "insert": lambda url: insert.run(url, size["insert"], log),  # type: ignore[arg-type]
        "lifecycle": lambda url: lifecycle.run(url, size["lifecycle"], log),  # type: ignore[arg-type]
        "query": lambda url: query.run(url, size["query"], log),  # type: ignore[arg-type]
        "pipeline": lambda url: pipeline.run(url, server_url, size["pipeline"], log),  # type: ignore[arg-type]
        "streams": lambda url: streams.run(url, size["streams"], log),  # type: ignore[arg-type]
        "concurrency": lambda url: concurrency.run(url, server_url, size["concurrency"], log),  # type: ignore[arg-type]
        "console": lambda url: console.run(url, size["console"], log),  # type: ignore[arg-type]
        "launcher": lambda url: launcher.run(url, server_url, size["launcher"], log),  # type: ignore[arg-type]
    }  # fmt: skip
    measurements: list[Measurement] = []
    for name in chosen:
        log(f"{name} …")
        started = time.perf_counter()
        with scratch_database(server_url) as url:
            measurements += runners[name](url)
        log(f"{name}: {time.perf_counter() - started:.0f} s")
    return measurements


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 3 minutes")
    parser.add_argument(
        "--only", action="append", choices=BENCHMARKS, help="run only these (repeatable)"
    )
    parser.add_argument("--output", type=Path, default=LATEST, help="where the JSON goes")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    try:
        server_url = admin_url(Settings())
    except ConfigurationError as error:
        print(error, file=sys.stderr)
        return 2
    started = time.perf_counter()
    load_before = [round(load, 2) for load in os.getloadavg()]
    measurements = run(server_url, args.only or list(BENCHMARKS), args.quick)
    seconds = time.perf_counter() - started
    mode = "quick" if args.quick else "full"
    machine = {**machine_facts(server_url), "load_average_1_5_15_min_before": load_before}
    write_json(args.output, measurements, machine, mode, seconds)
    print(text_table(measurements))
    if args.markdown:
        print()
        print(markdown_table(measurements))
    print(f"\n{mode} run in {seconds:.0f} s; written to {args.output}")
    return 0 if all(m.passed for m in measurements) else 1


if __name__ == "__main__":
    sys.exit(main())
