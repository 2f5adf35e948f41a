"""The production limiter: one EVALSHA of one Lua script per check, shared by every gateway.

The script runs atomically on the Redis server, so parallel checks from any number of gateway
replicas see one consistent state per subject. It reads every subject's TAT, decides, and only
if every subject admits writes every new TAT, with an expiry (SET ... PX, the PEXPIRE of the
write) so idle subjects vanish: an expired TAT was at or before now, which GCRA treats exactly
like a missing one (gcra.py).

Time is the gateway's injected clock, passed in ARGV (whole microseconds since the epoch: the
emission interval 60 s / rpm is not a whole number of milliseconds, and whole microseconds keep
every value an exact integer in Lua's doubles). Gateway clocks must therefore agree (NTP); a
replica whose clock runs s seconds ahead sees s seconds' more refill. The expiry carries a slack
for exactly that and for Redis's own clock, so a key never vanishes while its TAT is ahead of a
gateway's now.

Cluster mode: the keys of one check (the key's and the user's) hash to different slots, which a
Redis Cluster refuses in one script. We run a single Redis (or a primary with replicas); moving
to a cluster would need a shared hash tag in the key names, e.g. "{ws:<workspace_id>}", chosen so
that every subject a request can name shares it.
"""

from __future__ import annotations

from collections.abc import Sequence

from palisade.common.clock import Clock
from palisade.gateway.rate_limit.gcra import Outcome, decide, now_us, validate
from palisade.gateway.rate_limit.model import Decision, RateLimiterUnavailable, Subject
from palisade.gateway.rate_limit.resp_client import ReplyError, RespClient
from palisade.gateway.rate_limit.scripts import RedisScript

# Extra lifetime of a key past the moment its bucket is full again: covers clock differences
# between gateways and Redis (and slow test runs against a ManualClock). Costs only memory.
EXPIRY_SLACK_MS = 60_000

# KEYS[i]: subject i's TAT. ARGV[1]: now (us). ARGV[2i], ARGV[2i+1]: subject i's T and tau (us).
# ARGV[2n+2]: expiry slack (ms). Returns {admitted (1/0), tat_1, ..., tat_n}: the new TATs if
# admitted, else the stored TAT as gcra.admit reads it. Same arithmetic as gcra.admit, all
# integers below 2**53; values are written with %.0f because tostring() would keep only 14
# significant digits.
_SCRIPT = """
local now = tonumber(ARGV[1])
local n = #KEYS
local tats = {}
local clamped = {}
local admitted = 1
local slack = tonumber(ARGV[2 * n + 2])
local function store(i, tat)
  local ttl = math.floor((tat - now) / 1000) + 1 + slack
  redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', string.format('%.0f', ttl))
end
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '')
  local interval, tau = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  if tat == nil or tat < now then tat = now end
  if tat > now + tau + interval then
    tat = now + tau + interval
    clamped[i] = true
  end
  tats[i] = tat
  if tat - now > tau then admitted = 0 end
end
if admitted == 1 then
  for i = 1, n do
    tats[i] = tats[i] + tonumber(ARGV[2 * i])
    store(i, tats[i])
  end
else
  for i = 1, n do
    if clamped[i] then store(i, tats[i]) end
  end
end
local reply = {admitted}
for i = 1, n do reply[i + 1] = tats[i] end
return reply
"""


class RedisRateLimiter:
    """GCRA on Redis: exact across every gateway replica sharing the Redis."""

    def __init__(
        self, client: RespClient, *, clock: Clock, key_prefix: str = "palisade:ratelimit:"
    ) -> None:
        """`client` bounds how long a check may wait (its connect and reply timeouts): the
        check is on every request's path, and a Redis that takes longer is as good as down.
        """
        self._clock = clock
        self._prefix = key_prefix
        # EVALSHA, and on NOSCRIPT (a restarted or flushed Redis) SCRIPT LOAD and EVALSHA
        # again; checks issued in one event-loop turn share one write (resp_client.py). In
        # steady state one command per check, and at most one round trip.
        self._script = RedisScript(client, _SCRIPT)

    async def check(self, subjects: Sequence[Subject]) -> Decision:
        chosen = validate(subjects)
        now = now_us(self._clock)
        args: list[int] = [now]
        for subject in chosen:
            args += [subject.limit.interval_us, subject.limit.tolerance_us]
        args.append(EXPIRY_SLACK_MS)
        keys = [self._prefix + subject.id for subject in chosen]
        try:
            reply = await self._script.call(keys, args)
        except (ReplyError, OSError) as exc:
            raise RateLimiterUnavailable(f"Redis could not answer: {type(exc).__name__}") from exc
        try:
            if not isinstance(reply, list):
                raise TypeError("not an array")
            admitted, *tats = (int(value) for value in reply)
            outcome = Outcome(admitted == 1, tuple(tats))
            return decide(now, chosen, outcome)
        except (TypeError, ValueError) as exc:  # not what the script returns: not our Redis
            raise RateLimiterUnavailable("Redis gave an unexpected answer") from exc
