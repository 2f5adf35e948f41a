"""P1: access-token validation on a cache hit, inside the gateway process.

Target (shared/PERFORMANCE.md): p99 <= 50 us. Measured on EdgeAuthenticator.grant_for with the
token already validated (SHA-256 of the token + an LRU lookup + the expiry checks), against a
cache holding 100,000 other tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import statistics
import time

from bench.common import percentile, print_table
from palisade.common.caller import AssertionSigner
from palisade.common.clock import SystemClock
from palisade.common.edge_keys import KeySource, ServiceKeys
from palisade.gateway.edge_auth import EdgeAuthenticator
from palisade.gateway.token_cache import Grant, TokenCache
from palisade_api.auth.v1 import auth_pb2

CALLS = 200_000


class _NoAuth:
    """Stands for auth's stub: a cache hit must never reach it."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"cache hit reached auth ({name})")


async def _measure() -> list[float]:
    clock = SystemClock()
    cache = TokenCache(max_entries=200_000, max_age_seconds=3600, clock=clock)
    grant = Grant("usr_1", "ws_1", "owner", "ses_1", clock.timestamp() + 3600)
    keys = KeySource.fixed(ServiceKeys.generate("gateway"))
    signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=60)
    # The cache answers only while the revocation feed is caught up and heard from within the
    # heartbeat deadline: one heartbeat, and a deadline longer than the measurement.
    edge = EdgeAuthenticator(
        stub=_NoAuth(), signer=signer, cache=cache, timeout=1, heartbeat_deadline_seconds=3600
    )
    edge._receive(auth_pb2.Revocation(heartbeat=True))  # catching up empties the cache: fill after
    for _ in range(100_000):
        cache.put(secrets.token_bytes(32), grant)
    token = "plsd_at_" + secrets.token_urlsafe(32)
    cache.put(hashlib.sha256(token.encode()).digest(), grant)
    samples = []
    for _ in range(CALLS):
        start = time.perf_counter_ns()
        await edge.grant_for(token)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def main() -> dict[str, float]:
    samples = asyncio.run(_measure())
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    print_table(
        f"P1  access-token validation, cache hit ({CALLS:,} calls, 100k cached tokens)",
        [
            ("p50", f"{p50:.1f} us"),
            ("p99", f"{p99:.1f} us   target <= 50 us"),
            ("mean", f"{statistics.fmean(samples):.1f} us"),
        ],
    )
    return {"p1_p99_us": p99}


if __name__ == "__main__":
    main()
