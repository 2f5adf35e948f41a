"""The embedded default: the same GCRA in process, exact for the one gateway process.

No await between reading and writing the state, so a check is atomic on the event loop (the
gateway runs one). Memory is bounded: a subject whose bucket is full again (TAT at or before
now) means exactly what a missing subject means, so such entries are dropped, earliest first,
on every check (a heap ordered by TAT). A subject whose bucket is not full is never dropped:
forgetting it would hand it a full bucket, i.e. let extra requests through. If `max_subjects`
subjects are all mid-bucket and a check needs room for one more, the check raises
RateLimiterUnavailable instead, and the gateway's fail-open/closed policy applies, as it would
for a Redis outage. Reaching that takes max_subjects distinct authenticated callers active at
once (rate limits are spent only after a key or token verifies).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from palisade.common.clock import Clock
from palisade.gateway.rate_limit.gcra import admit, decide, now_us, validate
from palisade.gateway.rate_limit.model import Decision, RateLimiterUnavailable, Subject


class LocalRateLimiter:
    """GCRA in a dict: the same decisions as RedisRateLimiter for the same clock."""

    def __init__(self, *, clock: Clock, max_subjects: int = 100_000) -> None:
        if max_subjects < 1:
            raise ValueError("max_subjects must be at least 1")
        self._clock = clock
        self._max = max_subjects
        self._tats: dict[str, int] = {}
        # (TAT, id) for every write; entries superseded by a later write are skipped when popped
        # and the heap is rebuilt when they pile up, so it stays O(subjects).
        self._expiries: list[tuple[int, str]] = []

    def __len__(self) -> int:
        """How many subjects are held (those whose bucket is not full, after the last check)."""
        return len(self._tats)

    async def check(self, subjects: Sequence[Subject]) -> Decision:
        chosen = validate(subjects)
        now = now_us(self._clock)
        self._drop_full(now)
        outcome = admit(now, [s.limit for s in chosen], [self._tats.get(s.id) for s in chosen])
        if outcome.allowed:
            tats = self._tats
            if len(chosen) == 1:  # most checks: no generator for one subject
                new = 0 if chosen[0].id in tats else 1
            else:
                new = sum(1 for s in chosen if s.id not in tats)
            if len(self._tats) + new > self._max:
                raise RateLimiterUnavailable("the in-process rate-limit table is full")
            for subject, tat in zip(chosen, outcome.tats, strict=True):
                self._tats[subject.id] = tat
                heapq.heappush(self._expiries, (tat, subject.id))
        else:
            for index in outcome.rewrites:  # subjects that exist already: no new room needed
                self._tats[chosen[index].id] = outcome.tats[index]
                heapq.heappush(self._expiries, (outcome.tats[index], chosen[index].id))
        if len(self._expiries) > 2 * len(self._tats) + 1024:
            self._expiries = [(tat, key) for key, tat in self._tats.items()]
            heapq.heapify(self._expiries)
        return decide(now, chosen, outcome)

    def _drop_full(self, now: int) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            tat, key = heapq.heappop(expiries)
            if self._tats.get(key) == tat:
                del self._tats[key]
