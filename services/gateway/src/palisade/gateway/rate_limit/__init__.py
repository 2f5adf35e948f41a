"""Rate limits for every authenticated request: GCRA per subject (the key, the user), checked and
spent for all of a request's subjects at once or for none.

- model: Limit, Subject, Decision, RateLimiter (the Protocol), RateLimiterUnavailable.
- gcra: the algorithm, shared by both limiters so they decide identically.
- redis_limiter: RedisRateLimiter, production (one EVALSHA per check, shared by replicas),
  over resp_client (a minimal pipelining Redis client) and scripts (EVALSHA, reload on NOSCRIPT).
- local_limiter: LocalRateLimiter, the embedded default (in process, bounded memory).
- headers: rate_limit_headers, the draft-ietf-httpapi-ratelimit-headers-11 fields.
"""

from palisade.gateway.rate_limit.headers import rate_limit_headers
from palisade.gateway.rate_limit.local_limiter import LocalRateLimiter
from palisade.gateway.rate_limit.model import (
    Decision,
    Limit,
    RateLimiter,
    RateLimiterUnavailable,
    Subject,
)
from palisade.gateway.rate_limit.redis_limiter import RedisRateLimiter

__all__ = [
    "Decision",
    "Limit",
    "LocalRateLimiter",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RedisRateLimiter",
    "Subject",
    "rate_limit_headers",
]
