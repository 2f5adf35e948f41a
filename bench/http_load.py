"""A small HTTP/1.1 load generator for the benchmarks, run as its own process.

    python -m bench.http_load --port 8080 --path /v1/whoami --header "Authorization: Bearer …"

Prints one JSON object: requests/s over the measured window, non-2xx answers, and the share of
one core the generator itself used (so a table can show it was not the bottleneck).

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
from dataclasses import dataclass
from functools import partial


@dataclass
class _Tally:
    ok: int = 0
    failed: int = 0
    sending: bool = True


class _Connection(asyncio.Protocol):
    def __init__(self, request: bytes, tally: _Tally, closed: asyncio.Future[None]) -> None:
        self._request = request
        self._tally = tally
        self._closed = closed
        self._buffer = bytearray()
        self._expected = -1  # bytes of the answer being read (head + body), once the head is in
        self._status = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
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
            if 200 <= self._status < 300:
                self._tally.ok += 1
            else:
                self._tally.failed += 1
            assert self._transport is not None
            if not self._tally.sending:
                self._transport.close()
                return
            self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tally.sending:  # the server (or a parse error) ended it mid-run
            self._tally.failed += 1
        if not self._closed.done():
            self._closed.set_result(None)


def build_request(
    method: str, path: str, port: int, headers: list[str], body: bytes | None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def measure(
    port: int, request: bytes, connections: int, warmup: float, seconds: float
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    tally = _Tally()
    closed = [loop.create_future() for _ in range(connections)]
    for done in closed:
        await loop.create_connection(partial(_Connection, request, tally, done), "127.0.0.1", port)
    await asyncio.sleep(warmup)
    ok, failed = tally.ok, tally.failed
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    result = {
        "rate": (tally.ok - ok) / elapsed,
        "failed": tally.failed - failed,
        "cpu_share": (time.process_time() - cpu) / elapsed,
    }
    tally.sending = False
    await asyncio.wait_for(asyncio.gather(*closed), 10)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--body", default=None, help="a JSON body (sent as application/json)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    body = args.body.encode() if args.body is not None else None
    request = build_request(args.method, args.path, args.port, args.header, body)
    result = asyncio.run(measure(args.port, request, args.connections, args.warmup, args.seconds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
