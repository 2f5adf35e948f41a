"""P4: an API-key request on a cache hit (verify + per-key and per-user rate limit) vs P2.

Target (PERFORMANCE.md P4): at most one Redis round trip and zero extra gRPC hops on a cache
hit; >= 0.8 of P2's throughput.

- The suite (crypto, auth, apikeys on embedded SQLite: cache hits touch no database) behind a
  gateway whose rate limits live in Redis, as in production. One owner signs in, creates a
  secret key (with a limit far above what is sent, so nothing is refused), and both
  credentials ask `GET /v1/whoami`, which the gateway answers itself.
- Measured in alternating trials by bench/http_load.py (its own process, CONNECTIONS in flight):
  the key; the owner's bearer token on the same gateway (also one limit check in Redis); and,
  for P2 exactly as P2 runs, the bearer token on a second suite whose gateway limits in process.
- Counted while measuring: Redis commands (INFO commandstats, before and after, over the
  requests the gateway answered on the route) and the gateway's key-cache misses (each one
  VerifyApiKey call; an entry ages out after 60 s, so a run of trials sees a few).

Run it alone: it counts every command the Redis server executes.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import REDIS_URL, print_table
from bench.http_bench import (
    CONNECTIONS,
    TRIALS,
    _get,
    _samples,
    http_load,
    requests_answered,
    signed_in_token,
    suite_behind_gateway,
    wait_until_cached,
)

ROUTE = "/v1/whoami"


def _create_key(http_port: int, token: str) -> str:
    body = {
        "name": "bench",
        "type": "secret",
        "scopes": ["team:read"],
        "rateLimit": {"requestsPerMinute": 1_000_000, "burst": 100_000},
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/api-keys",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        key = json.loads(response.read())["key"]
    assert isinstance(key, str)
    return key


def _redis_commands() -> dict[str, float]:
    """Calls per command so far on the Redis server ({"evalsha": n, ...})."""
    from redis import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): float(value["calls"]) for name, value in stats.items()}


def _key_cache(metrics_port: int) -> dict[str, float]:
    counts = {"hit": 0.0, "miss": 0.0}
    for labels, value in _samples(metrics_port, "palisade_gateway_key_cache_lookups_total"):
        counts[labels["result"]] = value
    return counts


def _wait_until_key_cached(http_port: int, metrics_port: int, key: str) -> None:
    """Readiness: keys are cached once the gateway follows the key revocation feed."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        before = _key_cache(metrics_port)["hit"]
        status, _ = _get(f"http://127.0.0.1:{http_port}{ROUTE}", {"Authorization": f"Bearer {key}"})
        assert status == 200, status
        if _key_cache(metrics_port)["hit"] > before:
            return
        time.sleep(0.1)
    raise RuntimeError("the gateway never answered the key from its cache")


def _rates(rates: list[float]) -> str:
    return f"{max(rates):,.0f} requests/s   (median {statistics.median(rates):,.0f})"


def main() -> dict[str, float]:
    key_rates: list[float] = []
    bearer_redis_rates: list[float] = []
    bearer_local_rates: list[float] = []
    commands_per_request: list[float] = []
    evalsha_per_request: list[float] = []
    key_misses = 0.0
    with (
        tempfile.TemporaryDirectory() as tmp_redis,
        tempfile.TemporaryDirectory() as tmp_local,
        # The bench owner never verifies their address: let unverified accounts create keys.
        suite_behind_gateway(
            Path(tmp_redis),
            {"PALISADE_GATEWAY_REDIS_URL": REDIS_URL},
            auth_env={"PALISADE_AUTH_UNVERIFIED_RESTRICTIONS": "[]"},
        ) as gateway,
        suite_behind_gateway(Path(tmp_local)) as p2_gateway,
    ):
        token = signed_in_token(gateway.http_port)
        key = _create_key(gateway.http_port, token)
        wait_until_cached(gateway.http_port, gateway.metrics_port, token)
        _wait_until_key_cached(gateway.http_port, gateway.metrics_port, key)
        p2_token = signed_in_token(p2_gateway.http_port)
        wait_until_cached(p2_gateway.http_port, p2_gateway.metrics_port, p2_token)
        misses_before = _key_cache(gateway.metrics_port)["miss"]
        for _ in range(TRIALS):
            commands = _redis_commands()
            answered = requests_answered(gateway.metrics_port, ROUTE)
            keyed = http_load(gateway.http_port, ROUTE, headers=[f"Authorization: Bearer {key}"])
            spent = requests_answered(gateway.metrics_port, ROUTE) - answered
            after = _redis_commands()
            # Commands clients sent: INFO (one per snapshot) aside, and without the GET and
            # SET the script runs inside Redis (commandstats counts those too; nothing else
            # in this suite sends GET or SET, as auth and apikeys run without Redis here).
            delta = {name: after[name] - commands.get(name, 0) for name in after}
            sent = sum(delta.values()) - 1 - delta.get("get", 0) - delta.get("set", 0)
            commands_per_request.append(sent / spent)
            evalsha_per_request.append((after["evalsha"] - commands.get("evalsha", 0)) / spent)
            key_rates.append(keyed["rate"])
            bearer = http_load(gateway.http_port, ROUTE, headers=[f"Authorization: Bearer {token}"])
            bearer_redis_rates.append(bearer["rate"])
            p2 = http_load(
                p2_gateway.http_port, ROUTE, headers=[f"Authorization: Bearer {p2_token}"]
            )
            bearer_local_rates.append(p2["rate"])
        key_misses = _key_cache(gateway.metrics_port)["miss"] - misses_before
    ratio_p2 = max(key_rates) / max(bearer_local_rates)
    ratio_same = max(key_rates) / max(bearer_redis_rates)
    round_trips = max(commands_per_request)
    print_table(
        f"P4  GET /v1/whoami with a secret API key (cache hit, limits in Redis), "
        f"{CONNECTIONS} connections, best of {TRIALS}",
        [
            ("API key, Redis limits", _rates(key_rates)),
            ("bearer token, same gateway (Redis limits)", _rates(bearer_redis_rates)),
            ("bearer token, P2's setup (in-process limits)", _rates(bearer_local_rates)),
            ("ratio key / P2", f"{ratio_p2:.2f}   target >= 0.8"),
            ("ratio key / bearer on the same gateway", f"{ratio_same:.2f}"),
            (
                "Redis commands sent per key request, at most",
                f"{round_trips:.3f}   (EVALSHA {max(evalsha_per_request):.3f}; target <= 1; "
                "concurrent ones share a pipeline)",
            ),
            (
                "key-cache misses while measuring",
                f"{key_misses:.0f}   (VerifyApiKey calls: entries age out after 60 s)",
            ),
        ],
    )
    return {"p4_ratio_to_p2": ratio_p2, "p4_redis_commands_per_request": round_trips}


if __name__ == "__main__":
    main()
