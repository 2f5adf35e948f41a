"""GCRA, the generic cell rate algorithm, over several subjects at once (all or nothing).

Standard "virtual scheduling" formulation (ITU-T I.371; as in redis-cell, throttled), in integer
microseconds. Per subject one stored value, the theoretical arrival time TAT; with emission
interval T = 60 s / rpm and delay tolerance tau = T * (burst - 1), a request at `now`:

    tat = max(TAT, now)             # a missing TAT, or one in the past, is a full bucket
    if tat > now + tau + T: tat = now + tau + T    # a clock ahead of ours wrote it (_read)
    admitted iff tat - now <= tau   # i.e. now >= tat - tau
    then TAT := tat + T

So a full bucket takes `burst` requests at once and then one every T. A check over several
subjects admits only if every subject admits, and only then advances every TAT; a refusal
changes nothing anywhere. A TAT at or before `now` means the same as no TAT at all, which is what
makes expiring (Redis) or evicting (in process) such entries exact.

The Lua script in redis_limiter.py is this module's `admit` line for line; `decide` turns the
resulting TATs into a Decision for both backends, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from palisade.common.clock import Clock
from palisade.gateway.rate_limit.model import Decision, Limit, Subject

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SECOND_US = 1_000_000


def now_us(clock: Clock) -> int:
    """The clock's time in whole microseconds since the epoch, exactly (no float rounding)."""
    return (clock.now() - _EPOCH) // _MICROSECOND


def validate(subjects: Sequence[Subject]) -> tuple[Subject, ...]:
    """A check covers at least one subject, each once (a repeated id would be counted once but
    read twice, which no store can make atomic sense of)."""
    chosen = tuple(subjects)
    if not chosen:
        raise ValueError("a rate-limit check needs at least one subject")
    if len({s.id for s in chosen}) != len(chosen):
        raise ValueError("a rate-limit check names each subject once")
    return chosen


@dataclass(frozen=True)
class Outcome:
    allowed: bool
    # Per subject: the new TAT if admitted, else the TAT as read (see _read).
    tats: tuple[int, ...]
    # On a refusal, the subjects whose TAT _read clamped: stored as read. This gives and takes
    # no budget on this clock; it only keeps a future TAT from refusing the subject for long.
    rewrites: tuple[int, ...] = ()


def admit(now: int, limits: Sequence[Limit], stored: Sequence[int | None]) -> Outcome:
    """Checks every subject first, then advances every TAT, or none."""
    if len(limits) == 1 and len(stored) == 1:  # most checks: the same, without the lists
        limit = limits[0]
        tat, clamped = _read(now, stored[0], limit)
        if tat - now > limit.tolerance_us:
            return Outcome(False, (tat,), (0,) if clamped else ())
        return Outcome(True, (tat + limit.interval_us,))
    reads = [_read(now, t, limit) for t, limit in zip(stored, limits, strict=True)]
    tats = [tat for tat, _ in reads]
    pairs = list(zip(tats, limits, strict=True))
    if any(tat - now > limit.tolerance_us for tat, limit in pairs):
        rewrites = tuple(i for i, (_, clamped) in enumerate(reads) if clamped)
        return Outcome(False, tuple(tats), rewrites)
    return Outcome(True, tuple(tat + limit.interval_us for tat, limit in pairs))


def _read(now: int, stored: int | None, limit: Limit) -> tuple[int, bool]:
    """The TAT a check works from, and whether it was clamped.

    No admission stores more than now + tau + T (a drained bucket), so a stored TAT beyond
    that was written by a clock ahead of this one: a replica a few milliseconds ahead (NTP
    skew) writing a drained bucket, or this clock stepped back. It reads as a drained bucket
    on this clock, now + tau + T, and is stored so (even on a refusal), so the subject waits
    one interval T rather than until this clock catches up (an hour after a step of an hour),
    and no replica ever reads a drained bucket as a fuller one: skew between replicas costs at
    most the skew itself in extra capacity, never a burst."""
    if stored is None or stored < now:
        return now, False
    drained = now + limit.tolerance_us + limit.interval_us
    if stored > drained:
        return drained, True
    return stored, False


def _ceil_seconds(us: int) -> int:
    return -(-us // _SECOND_US)


def _remaining(now: int, tat: int, limit: Limit) -> int:
    # Requests admitted right now: the largest k with tat + (k - 1) * T - now <= tau.
    return max(0, (limit.burst * limit.interval_us - (tat - now)) // limit.interval_us)


def decide(now: int, subjects: tuple[Subject, ...], outcome: Outcome) -> Decision:
    """The Decision for the TATs an admission produced (the same for every backend)."""
    if len(subjects) == 1 and outcome.allowed:  # most checks: the one subject is the policy
        return _admitted(now, subjects, subjects[0], outcome.tats[0])
    rows = list(zip(subjects, outcome.tats, strict=True))
    if outcome.allowed:
        # Most constrained: fewest remaining, then longest until full; first on a tie.
        subject, tat = min(
            rows, key=lambda row: (_remaining(now, row[1], row[0].limit), now - row[1])
        )
        return _admitted(now, subjects, subject, tat)
    # The request waits for the slowest refusing subject; the others already admit and nothing
    # was spent, so that wait is exact.
    subject, tat = max(rows, key=lambda row: row[1] - row[0].limit.tolerance_us)
    return Decision(
        allowed=False,
        policy=subject,
        remaining=0,
        reset_seconds=_ceil_seconds(tat - now),
        retry_after_seconds=max(1, _ceil_seconds(tat - subject.limit.tolerance_us - now)),
        subjects=subjects,
    )


def _admitted(now: int, subjects: tuple[Subject, ...], policy: Subject, tat: int) -> Decision:
    return Decision(
        allowed=True,
        policy=policy,
        remaining=_remaining(now, tat, policy.limit),
        reset_seconds=_ceil_seconds(tat - now),
        retry_after_seconds=0,
        subjects=subjects,
    )
