"""Review finding on the retry schedule (issue 15 security review), as a failing test."""

from __future__ import annotations

from palisade.webhooks.delivery.schedule import SVIX_SCHEDULE, RetrySchedule
from palisade.webhooks.egress.client import DEFAULT_MAX_RETRY_AFTER_SECONDS


def test_retry_after_cannot_push_a_delivery_past_the_schedules_end() -> None:
    """schedule.py: Retry-After is "capped to what is left of the schedule from there", so "a
    receiver cannot ... push it past the point where the schedule would have given up". But
    the cap is the sum of the remaining waits applied to EACH wait: a receiver answering every
    attempt with the client's largest Retry-After (a day) gets waits of 1, 1, 1, 1, 1, 0.83
    and 0.42 days, 6.25 days in all, and the event arrives days late (and its endpoint may
    meanwhile be disabled by the 5-day rule). The waits together must end where the
    schedule's would.

    (As first written the waits were asked for with no history and all seven expected, which
    no schedule can bound in total without refusing every Retry-After or firing the last
    attempts back to back; the worker tells the schedule how long the round has run, as here
    with attempts that take no time, and a round whose span is spent ends.)"""
    schedule = RetrySchedule(jitter=0)
    waits: list[float] = []
    for failed in range(1, len(SVIX_SCHEDULE) + 2):
        wait = schedule.next_wait(failed, DEFAULT_MAX_RETRY_AFTER_SECONDS, elapsed=sum(waits))
        if wait is None:
            break
        waits.append(wait)
    # A day, then what is left of the span; the attempt at its end fails and the round ends.
    assert waits == [DEFAULT_MAX_RETRY_AFTER_SECONDS, sum(SVIX_SCHEDULE) - 86_400]
    assert sum(waits) <= sum(SVIX_SCHEDULE)


def test_retry_after_is_capped_on_the_time_the_round_has_really_run() -> None:
    """A round that is late already (attempts that took long, a worker that was down) gets
    less of Retry-After's extra time, never less than the schedule's wait."""
    schedule = RetrySchedule(jitter=0)
    span = sum(SVIX_SCHEDULE)
    assert schedule.next_wait(2, 10**9, elapsed=5.0) == span - 5.0
    assert schedule.next_wait(2, 10**9, elapsed=span - 1000.0) == 1000.0
    # Spent (a worker away for longer than the span, say): the failure ends the round.
    assert schedule.next_wait(2, 10**9, elapsed=span) is None
    assert schedule.next_wait(2, None, elapsed=span + 50.0) is None
    # Late but not spent: never less than the schedule's own wait.
    assert schedule.next_wait(2, 10**9, elapsed=span - 10.0) == 300.0
    assert schedule.next_wait(2, None, elapsed=5.0) == 300.0
