"""Review finding on the retry schedule (issue 15 security review), as a failing test."""

from __future__ import annotations

import pytest

from palisade.webhooks.delivery.schedule import SVIX_SCHEDULE, RetrySchedule
from palisade.webhooks.egress.client import DEFAULT_MAX_RETRY_AFTER_SECONDS


@pytest.mark.xfail(
    strict=True,
    reason="Retry-After is capped per wait, not in total: a receiver answering 429 with a day "
    "keeps a delivery for 6 days, not the schedule's 27 h",
)
def test_retry_after_cannot_push_a_delivery_past_the_schedules_end() -> None:
    """schedule.py: Retry-After is "capped to what is left of the schedule from there", so "a
    receiver cannot ... push it past the point where the schedule would have given up". But
    the cap is the sum of the remaining waits applied to EACH wait: a receiver answering every
    attempt with the client's largest Retry-After (a day) gets waits of 1, 1, 1, 1, 1, 0.83
    and 0.42 days, 6.25 days in all, and the event arrives days late (and its endpoint may
    meanwhile be disabled by the 5-day rule). The waits together must end where the
    schedule's would."""
    schedule = RetrySchedule(jitter=0)
    waits = [
        schedule.next_wait(failed, DEFAULT_MAX_RETRY_AFTER_SECONDS)
        for failed in range(1, len(SVIX_SCHEDULE) + 1)
    ]
    assert all(w is not None for w in waits)
    assert schedule.next_wait(len(SVIX_SCHEDULE) + 1, DEFAULT_MAX_RETRY_AFTER_SECONDS) is None
    assert sum(w for w in waits if w is not None) <= sum(SVIX_SCHEDULE)
