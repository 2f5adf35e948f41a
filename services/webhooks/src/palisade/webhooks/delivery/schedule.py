"""When a failed delivery is tried again: Svix's schedule with jitter, and Retry-After.

After the first attempt fails, the waits are 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (eight
attempts over about 27 hours), each moved by up to +-jitter at random (settings.retry_jitter,
20 % by default) so that the deliveries of an outage do not all come back in the same second.
After the last wait's attempt fails, the delivery is given up ("failed").

Retry-After (a 429 or 503 asking us to wait): honoured when it asks for MORE than the schedule's
next wait, never for less, and only as far as the round's first attempt plus the schedule's
whole span (the sum of the waits): the schedule's own waits are always kept, what Retry-After
adds beyond them is not, and an attempt that fails once the span has run out ends the round.
The bound is on the total, not on each wait, or a receiver answering every attempt with a
day's Retry-After would keep a delivery six days instead of the schedule's 27 h. (The worker
passes the time since the round's first attempt; without it the round is taken to have kept
to the schedule so far.) Why:
- never shorter: a receiver's "Retry-After: 0" must not turn the backoff into a tight loop of
  attempts against it (the schedule is also our own protection against hammering one host);
- capped to the remaining span: a receiver cannot park a delivery for weeks (the client caps
  the header at a day anyway) or push it past the point where the schedule would have given up;
- it does not use up an extra attempt: the next attempt is the schedule's next one, later.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

# Seconds to wait after the n-th failed attempt (n from 1).
SVIX_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_JITTER = 0.1


@dataclass(frozen=True)
class RetrySchedule:
    waits: Sequence[float] = SVIX_SCHEDULE
    jitter: float = DEFAULT_JITTER  # each wait times a factor in [1 - jitter, 1 + jitter]
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.waits or any(w <= 0 for w in self.waits):
            raise ValueError("a retry schedule is one or more positive waits")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")

    @property
    def max_attempts(self) -> int:
        """The first attempt and one after each wait."""
        return len(self.waits) + 1

    @property
    def span(self) -> float:
        """Seconds from a round's first attempt to its last, unjittered."""
        return float(sum(self.waits))

    def next_wait(
        self,
        failed_attempts: int,
        retry_after: float | None = None,
        *,
        elapsed: float | None = None,
    ) -> float | None:
        """Seconds until the next attempt after `failed_attempts` attempts have failed (from
        1), or None when the delivery is to be given up. elapsed: seconds from the round's
        first attempt until now (None: as if the schedule's waits had been kept)."""
        if failed_attempts < 1:
            raise ValueError("failed_attempts counts from 1")
        if failed_attempts > len(self.waits):
            return None
        if elapsed is not None and elapsed >= self.span:
            # The round's time is spent (Retry-After pushed it there, or the worker was away).
            return None
        index = failed_attempts - 1
        base = self.waits[index]
        wait = base * (1 + self.rng.uniform(-self.jitter, self.jitter))
        if retry_after is not None and retry_after > wait:
            so_far = float(sum(self.waits[:index])) if elapsed is None else max(0.0, elapsed)
            remaining = self.span - so_far
            wait = max(wait, min(retry_after, remaining))
        return wait
