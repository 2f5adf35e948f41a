"""What a rate-limit check takes and gives: limits, subjects, decisions, and the one error."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol

# Bounds that keep every GCRA quantity an exact integer number of microseconds below 2**53, so
# the Lua script (whose numbers are doubles) and Python compute bit-for-bit the same answers:
# the emission interval is at least 1 us, the tolerance at most ~2 years past a 2026 clock.
MAX_REQUESTS_PER_MINUTE = 60_000_000
MAX_BURST = 1_000_000

# Policy names go into response headers as Structured Field strings; keeping them to a short
# lowercase token means no escaping question and no room to smuggle an id into a header.
_POLICY_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def _positive_int(name: str, value: object, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int")
    if not 1 <= value <= maximum:
        raise ValueError(f"{name} must be between 1 and {maximum}, not {value}")


@dataclass(frozen=True)
class Limit:
    """A sustained rate and how many requests may arrive at once (the bucket size)."""

    requests_per_minute: int
    burst: int

    def __post_init__(self) -> None:
        _positive_int("requests_per_minute", self.requests_per_minute, MAX_REQUESTS_PER_MINUTE)
        _positive_int("burst", self.burst, MAX_BURST)

    # Cached: read on every check. (cached_property writes the instance's __dict__ directly,
    # which a frozen dataclass allows; the value depends only on the frozen fields.)
    @cached_property
    def interval_us(self) -> int:
        """The GCRA emission interval T = 60 s / rpm, rounded UP to whole microseconds, so the
        enforced rate is never above the configured one (off by < 1 us per request)."""
        return -(-60_000_000 // self.requests_per_minute)

    @cached_property
    def tolerance_us(self) -> int:
        """The GCRA delay tolerance tau = T * (burst - 1): how far ahead of now the theoretical
        arrival time may run and still admit a request."""
        return self.interval_us * (self.burst - 1)


@dataclass(frozen=True)
class Subject:
    """Who a request counts against: a policy name for the headers, an opaque id for the state."""

    name: str  # policy name for the headers: "key" or "user"
    id: str  # e.g. "key:<key_id>" or "user:<user_id>" (opaque ids, no secrets); never in headers
    limit: Limit

    def __post_init__(self) -> None:
        if not _POLICY_NAME.fullmatch(self.name):
            raise ValueError("a policy name is a lowercase token ([a-z][a-z0-9_.-]*, <= 64)")
        if not self.id:
            raise ValueError("a subject needs an id")


class Decision(NamedTuple):
    """The answer to one check. (A NamedTuple: made on every request, at half the cost of a
    frozen dataclass.)"""

    allowed: bool
    # The subject whose state the headers describe: the one that refused (the longest wait if
    # several did), else the most constrained (fewest remaining; then the longest reset).
    policy: Subject
    remaining: int  # requests still admitted right now for that subject
    reset_seconds: int  # seconds until that subject's bucket is full again (>= 0, rounded up)
    # When refused: seconds until one request would be admitted (>= 1, rounded up); 0 if allowed.
    retry_after_seconds: int
    # Every subject the check covered, in the order given (for the RateLimit-Policy field).
    subjects: tuple[Subject, ...] = ()


class RateLimiterUnavailable(Exception):
    """The shared store (Redis) could not answer; the gateway decides fail-open or fail-closed."""


class RateLimiter(Protocol):
    async def check(self, subjects: Sequence[Subject]) -> Decision:
        """Admits one request for every subject or for none: atomic, all-or-nothing.

        Raises ValueError for an empty list or a repeated subject id, RateLimiterUnavailable
        when the store cannot answer.
        """
        ...
