"""The stream holder of the streams benchmark, in its own process (``python -m bench.streams_child
URL TOKEN SSE_STREAMS JOB_ID...``): opens the event streams and one wait per job id, prints
``ready`` once every stream answered, counts the status events each stream receives, and on a
line ``stop`` on stdin prints a JSON summary and exits.

It speaks HTTP/1.1 over plain asyncio sockets and counts events in the raw bytes: it shares the
machine's cores with the server it measures, and an HTTP client library's per-chunk work for
a hundred streams would cost more CPU than the server spends on them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import urlsplit

MARKER = b"\nevent: status\n"


async def request(
    host: str, port: int, token: str, target: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a GET; the connection's reader and writer (the writer must be kept: dropping it
    closes the connection)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def stream(host: str, port: int, token: str, counts: list[int], index: int,
                 opened: asyncio.Event) -> None:  # fmt: skip
    reader, writer = await request(host, port, token, "/events")
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"the event stream answered {head[:40]!r}")
    opened.set()
    tail = b""
    while chunk := await reader.read(65536):
        data = tail + chunk
        counts[index] += data.count(MARKER)
        tail = data[-len(MARKER) + 1 :]
    writer.close()


async def wait(host: str, port: int, token: str, job_id: int) -> bytes:
    reader, writer = await request(host, port, token, f"/jobs/{job_id}/wait?timeout=3600")
    try:
        return await reader.readuntil(b"\r\n\r\n")  # the answer comes when the wait ends
    finally:
        writer.close()


async def hold(url: str, token: str, sse_streams: int, wait_ids: list[int]) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counts = [0] * sse_streams
    opened = [asyncio.Event() for _ in range(sse_streams)]
    streams = [
        asyncio.create_task(stream(host, port, token, counts, i, opened[i]))
        for i in range(sse_streams)
    ]
    waits = [asyncio.create_task(wait(host, port, token, job_id)) for job_id in wait_ids]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in opened)), 60)
    await asyncio.sleep(1.0)  # the waits' requests reach the server
    finished_early = sum(task.done() for task in waits)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    pending = sum(not task.done() for task in waits)
    failed = [str(task.exception()) for task in streams if task.done() and task.exception()]
    for task in [*streams, *waits]:
        task.cancel()
    await asyncio.gather(*streams, *waits, return_exceptions=True)
    return {
        "events_per_stream": counts,
        "waits_pending": pending,
        "finished_early": finished_early,
        "stream_errors": failed,
    }


def main() -> None:
    url, token, sse_streams, *ids = sys.argv[1:]
    summary = asyncio.run(hold(url, token, int(sse_streams), [int(job) for job in ids]))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
