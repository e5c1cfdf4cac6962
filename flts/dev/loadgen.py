"""A small closed-loop HTTP/1.1 load generator (asyncio + uvloop, keep-alive, pre-encoded
requests) that keeps the latency of every answer by status code: wrk reports one latency
distribution for all answers, and the 429 target needs the rejected ones on their own.

Each of `connections` loops sends a request, reads the whole answer, records
(status, seconds), and sends the next. A request not answered within `timeout` counts
as a timeout and its connection is reopened.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    seconds: float
    latencies: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    timeouts: int = 0
    errors: int = 0

    def count(self, status: int | None = None) -> int:
        if status is None:
            return sum(len(v) for v in self.latencies.values())
        return len(self.latencies.get(status, []))

    def rate(self, status: int | None = None) -> float:
        return self.count(status) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float, status: int | None = None) -> float | None:
        values = self.latencies.get(status, []) if status is not None else [v for vs in self.latencies.values() for v in vs]
        return float(np.percentile(values, q) * 1000) if values else None

    def server_errors(self) -> int:
        return sum(len(v) for s, v in self.latencies.items() if s >= 500)


def build_request(host: str, port: int, path: str, body: bytes | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    start = head.lower().find(b"content-length:")
    if start < 0:
        raise ConnectionError("answer without Content-Length")
    end = head.find(b"\r\n", start)
    length = int(head[start + 15:end])
    if length:
        await reader.readexactly(length)
    return status


async def _connection(host, port, requests: list[bytes], offset: int, deadline: float, timeout: float,
                      result: LoadResult) -> None:
    reader = writer = None
    i = offset
    while time.perf_counter() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            request = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            writer.write(request)
            async with asyncio.timeout(timeout):
                status = await _read_response(reader)
            result.latencies[status].append(time.perf_counter() - started)
        except TimeoutError:
            result.timeouts += 1
            writer.close()
            writer = None
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def run_load(host: str, port: int, path: str, bodies: list[bytes], connections: int, duration: float,
                   timeout: float = 2.0) -> LoadResult:
    requests = [build_request(host, port, path, body) for body in bodies]
    result = LoadResult(seconds=duration)
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*(_connection(host, port, requests, n, deadline, timeout, result) for n in range(connections)))
    result.seconds = time.perf_counter() - started
    return result


def load(host: str, port: int, path: str, bodies: list[bytes], connections: int, duration: float,
         timeout: float = 2.0) -> LoadResult:
    """Run a load in a fresh uvloop event loop (blocking)."""
    import uvloop

    return uvloop.run(run_load(host, port, path, bodies, connections, duration, timeout))
