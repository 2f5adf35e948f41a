"""Who the gateway limits, how, and what it does when the counters cannot be reached.

Subjects (one GCRA bucket each, palisade.gateway.rate_limit):
- a person's own requests (bearer tokens): `user:<id>`;
- requests with a key: the key (`key:<id>`, its own limit) and its creator's key traffic,
  shared by all their keys of that type (`user:<id>:secret-keys` or
  `user:<id>:publishable-keys`, the person's limit). Key traffic does not spend the person's
  own bucket: a publishable key is public by design (it lives in a web page, and `Origin` is
  only a header to a script), so anyone could otherwise spend its creator's budget and lock
  them out of the dashboard, including out of revoking that very key (a review finding).
- a client network (`client:<IPv4 or IPv6 /64>`) for work an unverified credential can
  trigger: a key lookup on a cache miss (the checksum is public, so valid-looking made-up keys
  are free to make) and a leak report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from palisade.common.client_text import client_bucket
from palisade.gateway.rate_limit import (
    Decision,
    Limit,
    RateLimiter,
    RateLimiterUnavailable,
    Subject,
)

log = logging.getLogger("palisade.gateway.limits")
DEFAULT_CLIENT_LOOKUP_LIMIT = Limit(600, 100)


class RateLimited(Exception):
    def __init__(self, decision: Decision) -> None:
        super().__init__("rate limited")
        self.decision = decision


class LimiterDown(Exception):
    """The shared rate-limit store is unreachable and the policy is to fail closed."""


@dataclass(frozen=True)
class RateLimitPolicy:
    limiter: RateLimiter
    user_limit: Limit
    # Key lookups that miss the cache, and leak reports, per client network.
    client_lookup_limit: Limit = DEFAULT_CLIENT_LOOKUP_LIMIT
    fail_open: bool = False  # bearer tokens and secret keys
    fail_open_publishable: bool = False

    async def spend(self, subjects: tuple[Subject, ...], *, fail_open: bool) -> Decision | None:
        """Spends one request of every subject's limit, or none; raises RateLimited, or
        LimiterDown when the counters are unreachable and fail_open is false (None then if
        it is true: let through, unlimited)."""
        try:
            decision = await self.limiter.check(subjects)
        except RateLimiterUnavailable:
            if fail_open:
                log.warning("rate limiter unavailable; request let through unlimited")
                return None
            log.warning("rate limiter unavailable; request refused")
            raise LimiterDown() from None
        if not decision.allowed:
            raise RateLimited(decision)
        return decision

    async def spend_client_lookup(self, client_ip: str, *, publishable: bool = False) -> None:
        """One lookup's worth of the client network's budget (RateLimited when spent); with
        the counters unreachable, the policy of the credential being looked up applies."""
        network = client_bucket(client_ip) or "unknown"
        subject = Subject("client", f"client:{network}", self.client_lookup_limit)
        fail_open = self.fail_open_publishable if publishable else self.fail_open
        await self.spend((subject,), fail_open=fail_open)


# Subjects are immutable and checked when made (a policy-name regex): made once per caller and
# limit, not on every request. Bounded; an entry is rebuilt after eviction, never wrong.
_SUBJECTS_CACHED = 65_536


@lru_cache(maxsize=_SUBJECTS_CACHED)
def key_subjects(
    key_id: str, limit: Limit, created_by: str, publishable: bool, user_limit: Limit
) -> tuple[Subject, ...]:
    kind = "publishable-keys" if publishable else "secret-keys"
    return (
        Subject("key", f"key:{key_id}", limit),
        Subject("user", f"user:{created_by}:{kind}", user_limit),
    )


@lru_cache(maxsize=_SUBJECTS_CACHED)
def person_subjects(user_id: str, user_limit: Limit) -> tuple[Subject, ...]:
    return (Subject("user", f"user:{user_id}", user_limit),)
