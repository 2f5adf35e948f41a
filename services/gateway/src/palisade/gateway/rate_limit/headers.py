"""The IETF rate-limit response fields for a Decision.

Syntax of draft-ietf-httpapi-ratelimit-headers-11 (23 May 2026), sections 3 and 4: each field is
a Structured Field List (RFC 9651) of Items whose value is a String naming the policy.

    RateLimit-Policy: "key";q=100;w=60, "user";q=600;w=60
    RateLimit: "key";r=42;t=17
    Retry-After: 3                          (refusals only)

RateLimit-Policy lists every policy the request counted against: q is the sustained quota in
requests (the default quota unit, so no qu) per window w = 60 seconds, i.e. the configured
requests per minute; the burst is the bucket size behind it. RateLimit describes the one policy
the Decision is about (the refusing one, else the most constrained; the draft lets a server
report only the closest limit, B.1.2): r = requests admitted right now. Its t is the window
within which the client can use no more than r: when allowed, the time until the bucket is full
again (spreading r requests over t seconds never gets refused); when refused (r=0), the time
until one request is admitted, so that Retry-After, which carries the same number, is not
earlier than the end of the effective window (section 6) and both name the same moment (B.1.4).

Only policy names appear: never a subject id, so no key or user id leaks into a response, and no
partition key (pk) is sent.
"""

from __future__ import annotations

from functools import lru_cache

from palisade.gateway.rate_limit.model import Decision, Subject

WINDOW_SECONDS = 60


def _sf_string(value: str) -> str:
    # RFC 9651 3.3.3. Policy names are already a lowercase token (model.Subject), so the
    # escapes never fire; they keep the serialization correct on its own.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """RateLimit-Policy and RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-11,
    Structured Field syntax), plus Retry-After when refused."""
    window = decision.reset_seconds if decision.allowed else decision.retry_after_seconds
    headers = {
        "RateLimit-Policy": _policy_field(decision.subjects or (decision.policy,)),
        "RateLimit": f"{_sf_string(decision.policy.name)};r={decision.remaining};t={window}",
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_seconds)
    return headers


# The same few subject tuples answer most requests (they are cached where they are made, see
# limits.py), and this field depends on nothing else.
@lru_cache(maxsize=4096)
def _policy_field(subjects: tuple[Subject, ...]) -> str:
    policies: list[str] = []
    seen: set[str] = set()
    for subject in subjects:
        if subject.name not in seen:
            seen.add(subject.name)
            rpm = subject.limit.requests_per_minute
            policies.append(f"{_sf_string(subject.name)};q={rpm};w={WINDOW_SECONDS}")
    return ", ".join(policies)
