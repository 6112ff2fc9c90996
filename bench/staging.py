"""Staging 200 small objects from S3: ``stage_inputs`` (concurrent) vs a sequential loop of gets.

Run with ``python -m bench.staging``. moto's S3 server runs in a child process on loopback;
between it and the client sits a small TCP proxy that holds every request for 20 ms, as the
round trip to real object storage does (on loopback moto would answer in a few ms of CPU, which
measures moto, not staging). Prints both times and the ratio; the target is at least 5x.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from jobline.settings import Settings
from jobtypes.base import InputFile
from tasks import storage

OBJECTS = 200
OBJECT_SIZE = 2_048
LATENCY = 0.020
BUCKET = "bench-staging"
PREFIX = "input/S2A_BENCH.SAFE"
#: What botocore needs to sign requests; moto accepts anything. Nothing leaves loopback.
AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen[bytes], int]:
    """moto's S3 server in a child process (its CPU does not compete with the client's GIL)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"moto did not listen on 127.0.0.1:{port} within 30 s")


class LatencyProxy:
    """A TCP proxy on loopback that delays each request by ``delay`` seconds.

    A request is the first read from the client after the previous response began (HTTP/1.1
    keep-alive: one request at a time per connection), so every request pays the delay once.
    """

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> int:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self.loop
        )
        self._server = future.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.upstream_port
        )
        waiting_for_request = [True]

        async def requests() -> None:
            while data := await client_reader.read(65_536):
                if waiting_for_request[0]:
                    waiting_for_request[0] = False
                    self.requests += 1
                    await asyncio.sleep(self.delay)
                upstream_writer.write(data)
                await upstream_writer.drain()
            upstream_writer.close()

        async def responses() -> None:
            while data := await upstream_reader.read(65_536):
                waiting_for_request[0] = True
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        await asyncio.gather(requests(), responses(), return_exceptions=True)


def timed(action: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=OBJECTS)
    parser.add_argument("--latency-ms", type=float, default=LATENCY * 1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(AWS_ENVIRONMENT)

    moto_process, moto_port = start_moto()
    proxy = LatencyProxy(moto_port, args.latency_ms / 1000)
    try:
        direct = Settings(s3_endpoint_url=f"http://127.0.0.1:{moto_port}")
        fs, _ = storage.filesystem(f"s3://{BUCKET}", direct)
        fs.mkdir(BUCKET)
        payload = os.urandom(OBJECT_SIZE)
        names = [f"granule/band_{n:03d}.bin" for n in range(args.objects)]
        fs.pipe({f"{BUCKET}/{PREFIX}/{name}": payload for name in names})

        settings = Settings(s3_endpoint_url=f"http://127.0.0.1:{proxy.start()}")
        slow_fs, _ = storage.filesystem(f"s3://{BUCKET}", settings)
        slow_fs.info(f"{BUCKET}/{PREFIX}/{names[0]}")  # warm the client (credentials, a socket)
        files = [InputFile(path=name, size=OBJECT_SIZE) for name in names]
        product_url = f"s3://{BUCKET}/{PREFIX}"

        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)

            def sequential() -> None:
                dest = root / f"seq-{time.monotonic_ns()}"
                for name in names:
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    slow_fs.get_file(f"{BUCKET}/{PREFIX}/{name}", str(target))
                    storage._sha256(target)

            def concurrent() -> None:
                dest = root / f"stage-{time.monotonic_ns()}"
                storage.stage_inputs(product_url, files, dest, settings, args.concurrency)

            before = proxy.requests
            concurrent_s = timed(concurrent, args.repeats)
            per_run = (proxy.requests - before) / args.repeats
            sequential_s = timed(sequential, args.repeats)
    finally:
        proxy.stop()
        moto_process.kill()
        moto_process.wait(timeout=10)

    print(
        f"staging {args.objects} objects of {OBJECT_SIZE} B, {args.latency_ms:.0f} ms per "
        f"request, median of {args.repeats} runs"
    )
    print(f"  sequential get loop : {sequential_s:7.3f} s")
    print(
        f"  stage_inputs        : {concurrent_s:7.3f} s "
        f"(concurrency {args.concurrency}, {per_run:.0f} requests per run)"
    )
    print(f"  speed-up            : {sequential_s / concurrent_s:7.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
