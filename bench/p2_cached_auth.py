"""P2: an authenticated request the gateway answers from its cache vs a hello-world.

Target (shared/PERFORMANCE.md): `GET /v1/whoami` with a bearer token reaches >= 0.6 of the
throughput of an unauthenticated hello-world on the same HTTP stack, measured in the same run.

- Authenticated side: the real suite (crypto, auth on embedded SQLite, the gateway) as separate
  processes, one user signed in once; `GET /v1/whoami` with that bearer token. Every measured
  request is a token-cache hit (checked from the gateway's own metrics): no gRPC hop, no DB.
- Baseline: bench/hello_http.py, a bare aiohttp app in its own process returning a small JSON
  object: the same aiohttp, event loop and serving setup as the gateway, one process each.
- Both are driven by the same load generator (bench/http_load.py, its own process, keep-alive
  connections, CONNECTIONS in flight), in alternating trials; the best trial of each side counts
  (the least disturbed by anything else on the machine), the median is shown too.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from bench.common import print_table
from bench.http_bench import (
    CONNECTIONS,
    TRIALS,
    cache_lookups,
    hello_world,
    http_load,
    signed_in_token,
    suite_behind_gateway,
    wait_until_cached,
)


def main() -> dict[str, float]:
    hello_rates: list[float] = []
    whoami_rates: list[float] = []
    load_cpu = 0.0
    with (
        tempfile.TemporaryDirectory() as tmp,
        hello_world() as hello_port,
        suite_behind_gateway(Path(tmp)) as gateway,
    ):
        http_port, metrics_port = gateway.http_port, gateway.metrics_port
        token = signed_in_token(http_port)
        wait_until_cached(http_port, metrics_port, token)
        misses = cache_lookups(metrics_port)["miss"]
        for _ in range(TRIALS):
            hello = http_load(hello_port, "/hello")
            whoami = http_load(http_port, "/v1/whoami", headers=[f"Authorization: Bearer {token}"])
            hello_rates.append(hello["rate"])
            whoami_rates.append(whoami["rate"])
            load_cpu = max(load_cpu, hello["cpu_share"], whoami["cpu_share"])
        new_misses = cache_lookups(metrics_port)["miss"] - misses
    ratio = max(whoami_rates) / max(hello_rates)
    print_table(
        f"P2  GET /v1/whoami (cache hit) vs aiohttp hello-world ({CONNECTIONS} connections, "
        f"best of {TRIALS})",
        [
            ("hello-world", _rates(hello_rates)),
            ("GET /v1/whoami, bearer token", _rates(whoami_rates)),
            ("ratio", f"{ratio:.2f}   target >= 0.6"),
            ("token-cache misses while measuring", f"{new_misses:.0f}   (every request a hit)"),
            ("load generator CPU, at most", f"{load_cpu:.0%} of one core"),
        ],
    )
    return {"p2_ratio": ratio}


def _rates(rates: list[float]) -> str:
    return f"{max(rates):,.0f} requests/s   (median {statistics.median(rates):,.0f})"


if __name__ == "__main__":
    main()
