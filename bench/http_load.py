"""A small HTTP/1.1 load generator for the benchmarks, run as its own process.

    python -m bench.http_load --port 8080 --path /v1/whoami --header "Authorization: Bearer …"

Prints one JSON object: requests/s over the measured window, non-2xx answers, and the share of
one core the generator itself used (so a table can show it was not the bottleneck); with
--latencies also the p50/p99/max latency (ms) of the answers completed in the window.

--body may be given several times: connection i sends body i mod n (e.g. one account per
connection for logins); --content-type sets their type (a form body for a form login).

No wrk/oha on the target machines, and a Python HTTP client (aiohttp's) costs about as much CPU
per request as the server under test. This one keeps N keep-alive connections, each with one
request in flight (no pipelining), sends pre-built bytes and reads only the status line and
Content-Length of each answer, all in asyncio Protocol callbacks: a few microseconds per
request, a small fraction of what the server spends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from functools import partial


@dataclass
class _Tally:
    ok: int = 0
    failed: int = 0
    sending: bool = True
    # Latencies (s) of answers completed while recording (None: not measured).
    latencies: list[float] | None = None
    recording: bool = False
    connections: list[_Connection] = field(default_factory=list)


class _Connection(asyncio.Protocol):
    def __init__(self, request: bytes, tally: _Tally, closed: asyncio.Future[None]) -> None:
        self._request = request
        self._tally = tally
        self._closed = closed
        self._buffer = bytearray()
        self._expected = -1  # bytes of the answer being read (head + body), once the head is in
        self._status = 0
        self._transport: asyncio.Transport | None = None
        self._sent = 0.0  # perf_counter() when the request in flight was written
        tally.connections.append(self)

    def waiting_since(self) -> float:
        return self._sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._sent = time.perf_counter()
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._expected < 0:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self._buffer[:end]).lower()
                self._status = int(head[9:12])
                start = head.find(b"\r\ncontent-length:")
                if start < 0:
                    raise RuntimeError("the server answered without Content-Length")
                stop = head.find(b"\r\n", start + 2)
                length = int(head[start + 17 : stop if stop > 0 else len(head)])
                self._expected = end + 4 + length
            if len(self._buffer) < self._expected:
                return
            del self._buffer[: self._expected]
            self._expected = -1
            tally = self._tally
            if 200 <= self._status < 300:
                tally.ok += 1
                if tally.recording and tally.latencies is not None:
                    tally.latencies.append(time.perf_counter() - self._sent)
            else:
                tally.failed += 1
            assert self._transport is not None
            if not tally.sending:
                self._transport.close()
                return
            self._sent = time.perf_counter()
            self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tally.sending:  # the server (or a parse error) ended it mid-run
            self._tally.failed += 1
        if not self._closed.done():
            self._closed.set_result(None)


def build_request(
    method: str,
    path: str,
    port: int,
    headers: list[str],
    body: bytes | None,
    content_type: str = "application/json",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def measure(
    port: int,
    requests: bytes | list[bytes],
    connections: int,
    warmup: float,
    seconds: float,
    *,
    latencies: bool = False,
) -> dict[str, float]:
    """Connection i sends requests[i mod n] over and over (one in flight per connection)."""
    loop = asyncio.get_running_loop()
    if isinstance(requests, bytes):
        requests = [requests]
    tally = _Tally(latencies=[] if latencies else None)
    closed = [loop.create_future() for _ in range(connections)]
    for i, done in enumerate(closed):
        request = requests[i % len(requests)]
        await loop.create_connection(partial(_Connection, request, tally, done), "127.0.0.1", port)
    await asyncio.sleep(warmup)
    ok, failed = tally.ok, tally.failed
    tally.recording = True
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    now = time.perf_counter()
    elapsed = now - started
    tally.recording = False
    if tally.latencies is not None:
        # Requests still unanswered count with their age so far (a lower bound), so a stalled
        # server's worst waits are not left out.
        tally.latencies += [now - c.waiting_since() for c in tally.connections]
    result = {
        "rate": (tally.ok - ok) / elapsed,
        "failed": tally.failed - failed,
        "cpu_share": (time.process_time() - cpu) / elapsed,
    }
    if tally.latencies is not None:
        result.update(_latency_figures(tally.latencies))
    tally.sending = False
    await asyncio.wait_for(asyncio.gather(*closed), 30)
    return result


def _latency_figures(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max (ms) of the recorded latencies."""
    if not samples:
        return {"latency_count": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1e3

    return {
        "latency_count": len(ordered),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": ordered[-1] * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument(
        "--body",
        action="append",
        default=[],
        help="a request body; several: connection i sends body i mod n",
    )
    parser.add_argument("--content-type", default="application/json", help="of the bodies")
    parser.add_argument("--latencies", action="store_true", help="report p50/p99/max (ms)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    bodies: list[bytes | None] = [body.encode() for body in args.body] or [None]
    requests = [
        build_request(args.method, args.path, args.port, args.header, body, args.content_type)
        for body in bodies
    ]
    result = asyncio.run(
        measure(
            args.port,
            requests,
            args.connections,
            args.warmup,
            args.seconds,
            latencies=args.latencies,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
