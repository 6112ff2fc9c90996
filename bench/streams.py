"""streams: what open event streams and waits cost the API's writes.

A real ``jobline api`` process on the scratch database. Measured: the latency of ``POST /jobs``
(each a new job: one history row, one notification), one request at a time, with nothing else
open before and after (together the baseline), and in between with ``sse`` Server-Sent Event
streams (``GET /events``, every change) and ``waits`` long-polls (``GET /jobs/{id}/wait`` on jobs
that stay unfinished) held open by another process (:mod:`bench.streams_child`). The target: the
median with the streams open within 2x the idle median. The holder reports what each stream
received, so the run also checks that every stream was delivered every change and that every
wait was still waiting.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.prefect_server import free_port, stop_process
from bench.report import Measurement, percentile

JOB_TYPE = "jobtypes.demo:SnowCover"
STARTUP_SECONDS = 60.0


@dataclass
class StreamSizes:
    sse: int
    waits: int
    posts: int
    warmup: int = 20


@dataclass
class Server:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path


def start_server(database_url: str, data_dir: Path) -> Server:
    """``jobline api`` on a free loopback port, once /health answers."""
    port, token = free_port(), secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "JOBLINE_DATABASE_URL": database_url,
        "JOBLINE_DATA_DIR": str(data_dir),
        "JOBLINE_API_TOKEN": token,
    }
    log = data_dir / "api.log"
    command = [sys.executable, "-c", "from cli.main import main; main()", "api"]
    command += ["--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--log-level", "warning"], env=env, stdout=output, stderr=output
        )
    server = Server(f"http://127.0.0.1:{port}", token, process, log)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streams: the API server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_process(server.process, 10)
    raise RuntimeError(f"streams: the API server did not start:\n{log.read_text()}")


def post_latencies(client: httpx.Client, prefix: str, count: int) -> list[float]:
    """Milliseconds of ``count`` POSTs of new jobs, one after the other."""
    samples = []
    for index in range(count):
        body = {"job_type": JOB_TYPE, "product_id": f"{prefix}-{index}"}
        started = time.perf_counter()
        response = client.post("/jobs", json=body)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 201:
            raise RuntimeError(f"streams: POST answered {response.status_code}: {response.text}")
    return samples


def open_streams(server: Server, sse: int, wait_ids: list[int]) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-m", "bench.streams_child", server.url, server.token, str(sse)]
        + [str(job_id) for job_id in wait_ids],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    line = holder.stdout.readline().strip()
    if line != "ready":
        stop_process(holder, 10)
        raise RuntimeError(f"streams: the stream holder did not get ready: {line!r}")
    return holder


def close_streams(holder: subprocess.Popen[str]) -> dict[str, Any]:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("stop\n")
    holder.stdin.flush()
    summary = json.loads(holder.stdout.readline())
    holder.wait(timeout=30)
    return summary


def run(database_url: str, sizes: StreamSizes, log: Any) -> list[Measurement]:
    with tempfile.TemporaryDirectory(prefix="jobline-bench-streams-") as directory:
        server = start_server(database_url, Path(directory))
        try:
            return _run(server, sizes, log)
        finally:
            stop_process(server.process, 10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(server: Server, sizes: StreamSizes, log: Any) -> list[Measurement]:
    headers = {"Authorization": f"Bearer {server.token}"}
    pid = server.process.pid
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        waited = [
            client.post("/jobs", json={"job_type": JOB_TYPE, "product_id": f"W{n}"}).json()["id"]
            for n in range(sizes.waits)
        ]
        post_latencies(client, "warm", sizes.warmup)
        cpu_before = cpu_seconds(pid)
        idle = post_latencies(client, "idle", sizes.posts)
        server_cpu_idle = cpu_seconds(pid) - cpu_before
        holder = open_streams(server, sizes.sse, waited)
        try:
            cpu_before, holder_before = cpu_seconds(pid), cpu_seconds(holder.pid)
            loaded = post_latencies(client, "loaded", sizes.posts)
            time.sleep(1.0)  # the last changes reach every stream
            server_cpu_loaded = cpu_seconds(pid) - cpu_before
            holder_cpu = cpu_seconds(holder.pid) - holder_before
        finally:
            summary = close_streams(holder)
        idle_after = post_latencies(client, "after", sizes.posts)
    # The baseline is the idle POSTs before and after the streams, so that a drift of the
    # machine's load during the run weighs on both sides alike.
    idle_ms, loaded_ms = statistics.median(idle + idle_after), statistics.median(loaded)
    ratio = loaded_ms / idle_ms
    received = summary["events_per_stream"]
    every_change = all(count >= sizes.posts for count in received)
    waits_held = summary["waits_pending"] == sizes.waits and summary["finished_early"] == 0
    per_post = {
        "server_idle": server_cpu_idle * 1000 / sizes.posts,
        "server_loaded": server_cpu_loaded * 1000 / sizes.posts,
        "stream_holder": holder_cpu * 1000 / sizes.posts,
    }
    log(
        f"  streams: POST median {idle_ms:.1f} ms idle, {loaded_ms:.1f} ms with {sizes.sse} "
        f"streams and {sizes.waits} waits open ({ratio:.2f}x); events per stream "
        f"{min(received)}..{max(received)}; waits still waiting {summary['waits_pending']}; "
        "CPU ms per POST: " + ", ".join(f"{name} {value:.1f}" for name, value in per_post.items())
    )
    return [
        Measurement(
            name=f"POST latency, {sizes.sse} SSE + {sizes.waits} waits open",
            value=loaded_ms,
            unit="ms",
            target="≤ 2x idle; every stream gets every change",
            passed=ratio <= 2 and every_change and waits_held,
            baseline=idle_ms,
            baseline_unit="ms idle",
            ratio=ratio,
            ratio_note="median with streams open / idle median",
            details={
                "posts": sizes.posts,
                "idle_before_ms": {
                    "p50": statistics.median(idle),
                    "p95": percentile(idle, 0.95),
                },
                "loaded_ms": {"p50": loaded_ms, "p95": percentile(loaded, 0.95)},
                "idle_after_ms": {
                    "p50": statistics.median(idle_after),
                    "p95": percentile(idle_after, 0.95),
                },
                "cpu_ms_per_post": per_post,
                "events_per_stream_min_max": [min(received), max(received)],
                "changes_per_stream_expected_at_least": sizes.posts,
                "waits_still_waiting": summary["waits_pending"],
            },
        )
    ]


def main() -> None:
    """``python -m bench.streams``: this benchmark alone, on a scratch database."""
    from bench.scratch import admin_url, scratch_database
    from jobline.settings import Settings

    with scratch_database(admin_url(Settings())) as url:
        for measurement in run(url, StreamSizes(sse=100, waits=100, posts=200), print):
            print(measurement)


if __name__ == "__main__":
    main()
