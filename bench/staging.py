"""Staging 200 small objects from S3: ``stage_inputs`` (concurrent) vs a sequential loop of gets.

Run with ``python -m bench.staging``. moto's S3 server runs in a child process on loopback;
between it and the client sits a small TCP proxy that holds every request for 20 ms, as the
round trip to real object storage does (on loopback moto would answer in a few ms of CPU, which
measures moto, not staging). Prints both times and the ratio; the target is at least 5x.

It also prints the CPU floor: ``stage_inputs`` straight to moto with no added latency. When the
concurrent time is close to it, the machine (moto's CPU per request), not latency, is the limit,
and the speed-up is at most (latency + per-request cost) / (floor / objects).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
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


def wait_for_port(port: int, alive: Callable[[], bool], seconds: float = 30) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; fail if the server died or is slow."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def start_moto() -> tuple[subprocess.Popen[bytes], int]:
    """moto's S3 server in a child process (its CPU does not compete with the client's GIL)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, lambda: process.poll() is None)
    except RuntimeError:
        process.kill()
        raise
    return process, port


class LatencyProxy:
    """A TCP proxy on loopback that delays each request by ``delay`` seconds, in a child process
    (so that its work does not compete with the client for the GIL).

    A request is the first read from the client after the previous response began (HTTP/1.1
    keep-alive: one request at a time per connection), so every request pays the delay once.
    """

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        context = multiprocessing.get_context("fork")
        self._requests = context.Value("i", 0)
        self._process = context.Process(target=self._serve, daemon=True)
        self.port = free_port()

    @property
    def requests(self) -> int:
        return int(self._requests.value)

    def start(self) -> int:
        self._process.start()
        wait_for_port(self.port, self._process.is_alive)
        return self.port

    def stop(self) -> None:
        self._process.kill()
        self._process.join(timeout=10)

    def _serve(self) -> None:
        async def serve() -> None:
            server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
            await server.serve_forever()

        asyncio.run(serve())

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
                    with self._requests.get_lock():
                        self._requests.value += 1
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
    proxy.start()  # forked before this process starts any thread of its own
    try:
        direct = Settings(s3_endpoint_url=f"http://127.0.0.1:{moto_port}")
        fs, _ = storage.filesystem(f"s3://{BUCKET}", direct)
        fs.mkdir(BUCKET)
        payload = os.urandom(OBJECT_SIZE)
        names = [f"granule/band_{n:03d}.bin" for n in range(args.objects)]
        fs.pipe({f"{BUCKET}/{PREFIX}/{name}": payload for name in names})

        settings = Settings(s3_endpoint_url=f"http://127.0.0.1:{proxy.port}")
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

            def floor() -> None:
                dest = root / f"floor-{time.monotonic_ns()}"
                storage.stage_inputs(product_url, files, dest, direct, args.concurrency)

            before = proxy.requests
            concurrent_s = timed(concurrent, args.repeats)
            per_run = (proxy.requests - before) / args.repeats
            sequential_s = timed(sequential, args.repeats)
            floor_s = timed(floor, args.repeats)
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
    # With no added latency, what is left is CPU (moto's and the client's): no amount of
    # concurrency stages faster than this on this machine, which bounds the speed-up.
    print(f"  CPU floor           : {floor_s:7.3f} s (stage_inputs straight to moto, no latency)")


if __name__ == "__main__":
    main()
