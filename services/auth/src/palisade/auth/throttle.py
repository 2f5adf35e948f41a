"""Login throttling: failures counted per client IP, per (account, IP) and per account.

A client is an IPv4 address or an IPv6 /64 (client_bucket). A client that has logged in to an
account before is known to it and passes its account-wide cap, so strangers spending that cap
cannot lock the owner out; its per-IP and per-(account, IP) limits still hold.

An attacker's IP runs out of attempts long before the account does, so the real user, from
elsewhere, is not locked out (SECURITY.md 7); the account as a whole still never sees more than
`account_failures` consecutive failures (ASVS 6.3.1). A count decays once its window passes
with no new failure; a success resets the account's counts (not the IP's).

Times come from the injectable clock, not Redis TTLs, so tests move time instead of sleeping;
Redis TTLs only garbage-collect. Both stores implement the same contract.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from palisade.auth.errors import Throttled
from palisade.common.client_text import client_bucket
from palisade.common.clock import Clock


@dataclass(frozen=True)
class ThrottleLimits:
    ip_failures: int
    account_ip_failures: int
    account_failures: int
    window_seconds: int
    account_window_seconds: int
    # Security notices a stranger can trigger (a sign-up on a taken address): at most one
    # per address within this many seconds.
    notice_seconds: int = 3600
    # A client (IP, or IPv6 /64) that logged in to an account is "known" to it this long
    # after its last success, and passes that account's account-wide cap (SECURITY.md 7).
    known_client_seconds: int = 90 * 24 * 3600


@dataclass(frozen=True)
class Counter:
    """At most `limit` events per key; the count decays once `window` seconds pass quietly."""

    key: str
    limit: int
    window: int


class FailureCounts(Protocol):
    """Decaying failure counters keyed by strings."""

    async def read(self, keys: list[str]) -> list[tuple[int, float]]:
        """(failures, last failure time) per key; (0, 0) for unknown keys."""
        ...

    async def add_failure(self, keys: list[tuple[str, int]], now: float) -> None:
        """Adds one failure to each (key, window): a count older than its window restarts."""
        ...

    async def clear(self, keys: list[str]) -> None: ...

    async def acquire(self, counters: list[tuple[str, int, int]], now: float) -> float:
        """Atomically: if no (key, limit, window) is at its limit, adds one to each and
        returns 0; otherwise changes nothing and returns the seconds until the longest wait ends.
        """
        ...

    async def give_back(self, keys: list[str]) -> None:
        """Takes one back off each key's count (not below zero): an attempt that succeeded."""
        ...

    async def acquire_waivable(
        self,
        counters: list[tuple[str, int, int]],
        now: float,
        *,
        known: tuple[str, int],
        waived: str,
    ) -> float:
        """acquire(), without the counter keyed `waived` if the (key, window) `known` has
        counted anything within its window: that look and the acquire in one atomic step."""
        ...

    async def settle(
        self, *, clear: list[str], give_back: list[str], add: list[tuple[str, int]], now: float
    ) -> None:
        """clear(clear), then give_back(give_back), then add_failure(add, now): one step."""
        ...


class CounterLimiter:
    """Checks and bumps decaying counters: the one rule behind every throttle here."""

    def __init__(self, *, counts: FailureCounts, clock: Clock) -> None:
        self._counts = counts
        self._clock = clock

    async def check(self, counters: list[Counter]) -> None:
        """Raises Throttled (with Retry-After) if any counter is at its limit. One round trip."""
        now = self._clock.timestamp()
        retry_after = 0.0
        for counter, (failures, last) in zip(
            counters, await self._counts.read([c.key for c in counters]), strict=True
        ):
            remaining = counter.window - (now - last)
            if failures >= counter.limit and remaining > 0:
                retry_after = max(retry_after, remaining)
        if retry_after > 0:
            raise Throttled(int(retry_after + 0.999))

    async def acquire(self, counters: list[Counter]) -> None:
        """Counts this attempt, or raises Throttled, in one atomic step (one round trip).

        Counting before the work, not after it, is what stops a burst of parallel requests from
        all passing a check before any of them is counted.
        """
        wait = await self._counts.acquire(
            [(c.key, c.limit, c.window) for c in counters], self._clock.timestamp()
        )
        if wait > 0:
            raise Throttled(int(wait + 0.999))

    async def give_back(self, counters: list[Counter]) -> None:
        await self._counts.give_back([c.key for c in counters])

    async def acquire_waivable(
        self, counters: list[Counter], *, known: Counter, waived: str
    ) -> None:
        """acquire(), leaving out the counter keyed `waived` if `known` is active (see
        active()), decided in the same atomic step (one round trip)."""
        wait = await self._counts.acquire_waivable(
            [(c.key, c.limit, c.window) for c in counters],
            self._clock.timestamp(),
            known=(known.key, known.window),
            waived=waived,
        )
        if wait > 0:
            raise Throttled(int(wait + 0.999))

    async def settle(
        self, *, clear: list[Counter], give_back: list[Counter], hit: list[Counter]
    ) -> None:
        """clear(clear), give_back(give_back) and hit(hit), in one step (one round trip)."""
        await self._counts.settle(
            clear=[c.key for c in clear],
            give_back=[c.key for c in give_back],
            add=[(c.key, c.window) for c in hit],
            now=self._clock.timestamp(),
        )

    async def active(self, counter: Counter) -> bool:
        """Whether the counter has counted anything within its window."""
        [(count, last)] = await self._counts.read([counter.key])
        return count > 0 and self._clock.timestamp() - last < counter.window

    async def hit(self, counters: list[Counter]) -> None:
        await self._counts.add_failure(
            [(c.key, c.window) for c in counters], self._clock.timestamp()
        )

    async def clear(self, counters: list[Counter]) -> None:
        await self._counts.clear([c.key for c in counters])


class LoginThrottle:
    def __init__(self, *, counts: FailureCounts, limits: ThrottleLimits, clock: Clock) -> None:
        self._limiter = CounterLimiter(counts=counts, clock=clock)
        self._limits = limits

    def _counters(self, account_key: str, ip: str | None, *, known: bool) -> list[Counter]:
        limits = self._limits
        counters = []
        if not known:  # the owner's own client is not held back by strangers' failures
            counters.append(
                Counter(
                    f"thr:acct:{account_key}",
                    limits.account_failures,
                    limits.account_window_seconds,
                )
            )
        bucket = client_bucket(ip)
        if bucket:
            counters += [
                Counter(f"thr:ip:{bucket}", limits.ip_failures, limits.window_seconds),
                Counter(
                    f"thr:acct-ip:{account_key}:{bucket}",
                    limits.account_ip_failures,
                    limits.window_seconds,
                ),
            ]
        return counters

    def _known_client(self, account_key: str, ip: str | None) -> Counter | None:
        """The record that this client logged in to this account before. Keyed by a hash of
        the (already keyed) account key and the client: Redis holds no IP next to an account."""
        bucket = client_bucket(ip)
        if not bucket:
            return None
        digest = hashlib.sha256(f"{account_key}\x00{bucket}".encode()).hexdigest()[:40]
        return Counter(f"thr:known:{digest}", 1, self._limits.known_client_seconds)

    async def is_known_client(self, account_key: str, ip: str | None) -> bool:
        """Whether this client logged in to this account before (one look, the same cost for
        any account, existing or not)."""
        known = self._known_client(account_key, ip)
        return known is not None and await self._limiter.active(known)

    async def acquire(self, account_key: str, ip: str | None) -> None:
        """Counts a login attempt before the password is checked; refuses one over a limit.

        A client that logged in to the account before skips the account-wide cap (strangers
        spending it must not lock the owner out), not the per-IP and per-(account, IP) ones.
        Whether it is known is looked at in the same atomic step as the counting (one round
        trip; the same look for any account, existing or not).
        """
        known = self._known_client(account_key, ip)
        counters = self._counters(account_key, ip, known=False)
        if known is None:  # no client bucket: never known
            await self._limiter.acquire(counters)
            return
        await self._limiter.acquire_waivable(
            counters, known=known, waived=f"thr:acct:{account_key}"
        )

    async def accepted(self, account_key: str, ip: str | None) -> None:
        """After acquire(), the password was right: the account's counts reset, and the IP
        gets this attempt back (its earlier failures stay: an attacker's IP can't launder them
        by logging in to its own account). The client is known to the account from now on.
        All in one step (one round trip)."""
        counters = self._counters(account_key, ip, known=False)
        known = self._known_client(account_key, ip)
        await self._limiter.settle(
            clear=[c for c in counters if not c.key.startswith("thr:ip:")],
            give_back=[c for c in counters if c.key.startswith("thr:ip:")],
            hit=[] if known is None else [known],
        )

    async def _remember_client(self, account_key: str, ip: str | None) -> None:
        known = self._known_client(account_key, ip)
        if known is not None:
            await self._limiter.hit([known])

    async def notice_allowed(self, key: str, *, spend: bool = True) -> bool:
        """Whether a notice a stranger can trigger may go to `key` now; counts it if so,
        unless spend is False (a look that costs the same, one round trip)."""
        counters = [Counter(f"notice:{key}", 1, self._limits.notice_seconds)]
        try:
            if spend:
                await self._limiter.acquire(counters)
            else:
                await self._limiter.check(counters)
        except Throttled:
            return False
        return True

    # check() and record_failure() are acquire()'s two halves, non-atomic: they read and feed
    # the same counters (tests and tools inspect the rules through them); logins use acquire().
    async def check(self, account_key: str, ip: str | None) -> None:
        known = await self.is_known_client(account_key, ip)
        await self._limiter.check(self._counters(account_key, ip, known=known))

    async def record_failure(self, account_key: str, ip: str | None) -> None:
        known = await self.is_known_client(account_key, ip)
        await self._limiter.hit(self._counters(account_key, ip, known=known))

    async def record_success(self, account_key: str, ip: str | None) -> None:
        # The IP's count survives a success: an attacker's IP can't launder its failures.
        await self._limiter.clear(
            [
                c
                for c in self._counters(account_key, ip, known=False)
                if not c.key.startswith("thr:ip:")
            ]
        )
        await self._remember_client(account_key, ip)


class MemoryFailureCounts:
    """The embedded stand-in: correct for the one auth process of the embedded default."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}

    async def read(self, keys: list[str]) -> list[tuple[int, float]]:
        return [self._counts.get(k, (0, 0.0)) for k in keys]

    async def add_failure(self, keys: list[tuple[str, int]], now: float) -> None:
        for key, window in keys:
            failures, last = self._counts.get(key, (0, 0.0))
            # At exactly `window` seconds check() already lets the key go: so must this.
            self._counts[key] = (1 if now - last >= window else failures + 1, now)

    async def clear(self, keys: list[str]) -> None:
        for key in keys:
            self._counts.pop(key, None)

    async def acquire(self, counters: list[tuple[str, int, int]], now: float) -> float:
        # No await inside: atomic on the event loop.
        wait, current = 0.0, []
        for key, limit, window in counters:
            failures, last = self._counts.get(key, (0, 0.0))
            if now - last >= window:
                failures = 0
            if failures >= limit:
                wait = max(wait, window - (now - last))
            current.append(failures)
        if wait > 0:
            return wait
        for (key, _, _), failures in zip(counters, current, strict=True):
            self._counts[key] = (failures + 1, now)
        return 0.0

    async def give_back(self, keys: list[str]) -> None:
        for key in keys:
            failures, last = self._counts.get(key, (0, 0.0))
            if failures > 0:
                self._counts[key] = (failures - 1, last)

    async def acquire_waivable(
        self,
        counters: list[tuple[str, int, int]],
        now: float,
        *,
        known: tuple[str, int],
        waived: str,
    ) -> float:
        # No await inside but the ones below, which never suspend: atomic on the event loop.
        key, window = known
        count, last = self._counts.get(key, (0, 0.0))
        if count > 0 and now - last < window:
            counters = [c for c in counters if c[0] != waived]
        return await self.acquire(counters, now)

    async def settle(
        self, *, clear: list[str], give_back: list[str], add: list[tuple[str, int]], now: float
    ) -> None:
        await self.clear(clear)
        await self.give_back(give_back)
        await self.add_failure(add, now)


# Atomic per key: restart the count if the last failure is older than the window.
_ADD_FAILURE = """
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[i + 1])
  local now = tonumber(ARGV[1])
  local last = tonumber(redis.call('HGET', key, 't') or '0')
  local failures = tonumber(redis.call('HGET', key, 'f') or '0')
  if now - last >= window then failures = 0 end
  redis.call('HSET', key, 'f', failures + 1, 't', ARGV[1])
  redis.call('EXPIRE', key, window * 2)
end
return 1
"""


# Atomic over all keys: refuse if any key is at its limit, else count one on each. The wait is
# returned as a string: Lua numbers come back from Redis truncated to integers.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local wait = 0
local current = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  local failures = tonumber(redis.call('HGET', key, 'f') or '0')
  local last = tonumber(redis.call('HGET', key, 't') or '0')
  if now - last >= window then failures = 0 end
  if failures >= limit and window - (now - last) > wait then wait = window - (now - last) end
  current[i] = failures
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('HSET', key, 'f', current[i] + 1, 't', ARGV[1])
  redis.call('EXPIRE', key, window * 2)
end
return '0'
"""

_GIVE_BACK = """
for i, key in ipairs(KEYS) do
  local failures = tonumber(redis.call('HGET', key, 'f') or '0')
  if failures > 0 then redis.call('HSET', key, 'f', failures - 1) end
end
return 1
"""


# _ACQUIRE, leaving out the waived key (ARGV[2]) if KEYS[1] (the "known" record) has counted
# within its window (ARGV[3]). KEYS[2..] are the counters, ARGV[4..] their (limit, window).
_ACQUIRE_WAIVABLE = """
local now = tonumber(ARGV[1])
local known_f = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
local known_t = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local known = known_f > 0 and now - known_t < tonumber(ARGV[3])
local wait = 0
local current = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  if not (known and key == ARGV[2]) then
    local limit = tonumber(ARGV[2 * i])
    local window = tonumber(ARGV[2 * i + 1])
    local failures = tonumber(redis.call('HGET', key, 'f') or '0')
    local last = tonumber(redis.call('HGET', key, 't') or '0')
    if now - last >= window then failures = 0 end
    if failures >= limit and window - (now - last) > wait then wait = window - (now - last) end
    current[i] = failures
  end
end
if wait > 0 then return tostring(wait) end
for i = 2, #KEYS do
  if current[i] ~= nil then
    local window = tonumber(ARGV[2 * i + 1])
    redis.call('HSET', KEYS[i], 'f', current[i] + 1, 't', ARGV[1])
    redis.call('EXPIRE', KEYS[i], window * 2)
  end
end
return '0'
"""

# Clear KEYS[1..ARGV[2]], give one back on the next ARGV[3] keys, and add a failure (as
# _ADD_FAILURE) to the rest, whose windows are ARGV[4..].
_SETTLE = """
local now = tonumber(ARGV[1])
local cleared = tonumber(ARGV[2])
local given = tonumber(ARGV[3])
for i = 1, cleared do redis.call('DEL', KEYS[i]) end
for i = cleared + 1, cleared + given do
  local failures = tonumber(redis.call('HGET', KEYS[i], 'f') or '0')
  if failures > 0 then redis.call('HSET', KEYS[i], 'f', failures - 1) end
end
for i = cleared + given + 1, #KEYS do
  local window = tonumber(ARGV[3 + i - cleared - given])
  local last = tonumber(redis.call('HGET', KEYS[i], 't') or '0')
  local failures = tonumber(redis.call('HGET', KEYS[i], 'f') or '0')
  if now - last >= window then failures = 0 end
  redis.call('HSET', KEYS[i], 'f', failures + 1, 't', ARGV[1])
  redis.call('EXPIRE', KEYS[i], window * 2)
end
return 1
"""


class RedisFailureCounts:
    def __init__(self, redis: Redis, *, prefix: str = "palisade:auth:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._add = redis.register_script(_ADD_FAILURE)
        self._acquire = redis.register_script(_ACQUIRE)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._acquire_waivable = redis.register_script(_ACQUIRE_WAIVABLE)
        self._settle = redis.register_script(_SETTLE)

    async def read(self, keys: list[str]) -> list[tuple[int, float]]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self._prefix + key, "f", "t")
        rows = await pipe.execute()
        return [(int(f or 0), float(t or 0)) for f, t in rows]

    async def add_failure(self, keys: list[tuple[str, int]], now: float) -> None:
        await self._add(keys=[self._prefix + k for k, _ in keys], args=[now, *(w for _, w in keys)])

    async def clear(self, keys: list[str]) -> None:
        if keys:
            await self._redis.delete(*(self._prefix + k for k in keys))

    async def acquire(self, counters: list[tuple[str, int, int]], now: float) -> float:
        args: list[float] = [now]
        for _, limit, window in counters:
            args += [limit, window]
        wait = await self._acquire(keys=[self._prefix + k for k, _, _ in counters], args=args)
        return float(wait)

    async def give_back(self, keys: list[str]) -> None:
        if keys:
            await self._give_back(keys=[self._prefix + k for k in keys])

    async def acquire_waivable(
        self,
        counters: list[tuple[str, int, int]],
        now: float,
        *,
        known: tuple[str, int],
        waived: str,
    ) -> float:
        known_key, known_window = known
        args: list[float | str] = [now, self._prefix + waived, known_window]
        for _, limit, window in counters:
            args += [limit, window]
        keys = [self._prefix + known_key, *(self._prefix + k for k, _, _ in counters)]
        wait = await self._acquire_waivable(keys=keys, args=args)
        return float(wait)

    async def settle(
        self, *, clear: list[str], give_back: list[str], add: list[tuple[str, int]], now: float
    ) -> None:
        keys = [*clear, *give_back, *(k for k, _ in add)]
        if not keys:
            return
        await self._settle(
            keys=[self._prefix + k for k in keys],
            args=[now, len(clear), len(give_back), *(w for _, w in add)],
        )
