"""P3: an authenticated request forwarded to one backend gRPC method vs a bare gRPC echo.

Target (shared/PERFORMANCE.md): >= 0.8 of the echo's throughput, driven the same way.

Design: a bench-only echo service (bench/protos/bench_echo.proto, stubs generated at start)
runs in its own process, bare (no interceptors), and is reached two ways at the same
concurrency, in alternating trials:

- directly: bench/echo_backend.py `drive`, a grpc.aio client process with one channel
  configured like the gateway's upstream channels (the baseline);
- through the gateway: bench/http_load.py (its own process, keep-alive connections) sends
  `POST /v1/bench/echo {"message": "hello"}` with a bearer token. That is the whole gateway
  path: route match, token-cache hit (checked in the gateway's metrics), JSON -> proto, a
  signed caller assertion, the gRPC call, proto -> JSON.

The gateway learns the echo service through its `extra_upstreams` setting (proto module,
service name, target), the hook through which later services are added too; its routes come
from the proto's annotations like auth's. A real auth RPC would not do: every cheap one touches
the database, and the benchmark would measure that instead of the forwarding. The best trial
of each side counts (the least disturbed), the median is shown too.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import echo_backend
from bench.common import ROOT, free_port, print_table, wait_until_serving
from bench.http_bench import (
    CONNECTIONS,
    SECONDS,
    TRIALS,
    WARMUP_SECONDS,
    GatewayProcess,
    cache_lookups,
    cpu_seconds,
    http_load,
    requests_answered,
    signed_in_token,
    suite_behind_gateway,
    wait_until_cached,
)

BODY = json.dumps({"message": "hello"})


@contextmanager
def _echo_service(stubs: Path) -> Iterator[int]:
    port = free_port()
    argv = ["-m", "bench.echo_backend", "serve", f"--stubs={stubs}", f"--port={port}"]
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT)
    try:
        wait_until_serving(port, process, within_seconds=30)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def _direct(stubs: Path, port: int) -> dict[str, float]:
    argv = [
        sys.executable,
        "-m",
        "bench.echo_backend",
        "drive",
        f"--stubs={stubs}",
        f"--port={port}",
        f"--concurrency={CONNECTIONS}",
        f"--warmup={WARMUP_SECONDS}",
        f"--seconds={SECONDS}",
    ]
    done = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _check_echo(http_port: int, token: str) -> None:
    """One request by hand: the route exists and answers what the backend echoed."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/bench/echo",
        data=BODY.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read()) == {"message": "hello"}


def main() -> dict[str, float]:
    direct: list[dict[str, float]] = []
    forwarded: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp) / "stubs"
        stubs.mkdir()
        echo_backend.generate_stubs(stubs)
        with _echo_service(stubs) as echo_port:
            upstream = {
                "proto_module": echo_backend.MODULE,
                "service": echo_backend.SERVICE,
                "target": f"127.0.0.1:{echo_port}",
            }
            gateway_env = {
                "PALISADE_GATEWAY_EXTRA_UPSTREAMS": json.dumps({"echo": upstream}),
                "PYTHONPATH": os.pathsep.join([str(stubs), os.environ.get("PYTHONPATH", "")]),
            }
            with suite_behind_gateway(Path(tmp) / "data", gateway_env) as gateway:
                token = signed_in_token(gateway.http_port)
                wait_until_cached(gateway.http_port, gateway.metrics_port, token)
                _check_echo(gateway.http_port, token)
                misses = cache_lookups(gateway.metrics_port)["miss"]
                for _ in range(TRIALS):
                    direct.append(_direct(stubs, echo_port))
                    forwarded.append(_forwarded(gateway, token))
                new_misses = cache_lookups(gateway.metrics_port)["miss"] - misses
    direct_rates = [trial["rate"] for trial in direct]
    gateway_rates = [trial["rate"] for trial in forwarded]
    ratio = max(gateway_rates) / max(direct_rates)
    # Where the difference goes: CPU per request of the gateway process vs of the direct client
    # (both make the same gRPC call; the gateway also serves HTTP and does its own work).
    client_cpu = statistics.median(t["cpu_share"] / t["rate"] for t in direct) * 1e6
    gateway_cpu = [t["gateway_cpu_per_request"] for t in forwarded if t["gateway_cpu_per_request"]]
    print_table(
        f"P3  POST /v1/bench/echo through the gateway vs bare gRPC echo ({CONNECTIONS} in "
        f"flight, best of {TRIALS})",
        [
            ("gRPC echo, direct", _rates(direct_rates)),
            ("HTTP -> gateway -> gRPC echo, bearer token", _rates(gateway_rates)),
            ("ratio", f"{ratio:.2f}   target >= 0.8"),
            ("token-cache misses while measuring", f"{new_misses:.0f}   (every request a hit)"),
            ("direct client CPU per call (median)", f"{client_cpu:.0f} us"),
            (
                "gateway process CPU per request (median)",
                f"{statistics.median(gateway_cpu) * 1e6:.0f} us" if gateway_cpu else "n/a",
            ),
            (
                "HTTP load generator CPU, at most",
                f"{max(t['cpu_share'] for t in forwarded):.0%} of one core",
            ),
        ],
    )
    return {"p3_ratio": ratio}


def _forwarded(gateway: GatewayProcess, token: str) -> dict[str, float]:
    """One trial through the gateway, with the gateway's own CPU per request over it."""
    route = "/v1/bench/echo"
    answered, cpu = requests_answered(gateway.metrics_port, route), cpu_seconds(gateway.pid)
    result = http_load(
        gateway.http_port,
        route,
        method="POST",
        headers=[f"Authorization: Bearer {token}"],
        body=BODY,
    )
    answered = requests_answered(gateway.metrics_port, route) - answered
    cpu_after = cpu_seconds(gateway.pid)
    per_request = (cpu_after - cpu) / answered if cpu is not None and cpu_after else 0.0
    return {**result, "gateway_cpu_per_request": per_request}


def _rates(rates: list[float]) -> str:
    return f"{max(rates):,.0f} requests/s   (median {statistics.median(rates):,.0f})"


if __name__ == "__main__":
    main()
