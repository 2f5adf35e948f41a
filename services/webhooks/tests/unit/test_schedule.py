"""The retry schedule: Svix's waits with jitter, Retry-After honoured when longer, capped."""

from __future__ import annotations

import random

import pytest

from palisade.webhooks.delivery.schedule import SVIX_SCHEDULE, RetrySchedule


def test_the_waits_are_svixs_without_jitter() -> None:
    schedule = RetrySchedule(jitter=0)
    waits = [schedule.next_wait(n) for n in range(1, 8)]
    assert waits == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert schedule.max_attempts == 8
    assert schedule.next_wait(8) is None  # the eighth attempt failed: given up
    # About a day and a half from the first attempt to the last.
    assert 27 * 3600 < sum(SVIX_SCHEDULE) < 28 * 3600


def test_jitter_stays_within_its_fraction_and_varies() -> None:
    schedule = RetrySchedule(jitter=0.1, rng=random.Random(7))
    for n, base in enumerate(SVIX_SCHEDULE, start=1):
        seen = {schedule.next_wait(n) for _ in range(50)}
        assert all(w is not None and base * 0.9 <= w <= base * 1.1 for w in seen)
        assert len(seen) > 40  # not one fixed value


def test_retry_after_longer_than_the_schedule_is_honoured() -> None:
    schedule = RetrySchedule(jitter=0)
    assert schedule.next_wait(1, retry_after=120) == 120
    assert schedule.next_wait(2, retry_after=1000) == 1000


def test_retry_after_never_shortens_the_wait() -> None:
    schedule = RetrySchedule(jitter=0)
    assert schedule.next_wait(1, retry_after=0) == 5
    assert schedule.next_wait(3, retry_after=60) == 1800


def test_retry_after_is_capped_to_the_rest_of_the_schedule() -> None:
    schedule = RetrySchedule(jitter=0)
    # After the sixth failure only one 10 h wait is left: a week is read as 10 h.
    assert schedule.next_wait(7, retry_after=7 * 86400) == 36000
    assert schedule.next_wait(1, retry_after=10**9) == sum(SVIX_SCHEDULE)
    # With jitter the cap never makes the wait shorter than the jittered schedule's.
    jittered = RetrySchedule(jitter=0.2, rng=random.Random(1))
    for _ in range(50):
        wait = jittered.next_wait(7, retry_after=10**9)
        assert wait is not None
        assert wait >= 36000 * 0.8


def test_a_custom_schedule_and_bad_ones() -> None:
    short = RetrySchedule(waits=(1, 2), jitter=0)
    assert [short.next_wait(1), short.next_wait(2), short.next_wait(3)] == [1, 2, None]
    with pytest.raises(ValueError, match="positive"):
        RetrySchedule(waits=())
    with pytest.raises(ValueError, match="positive"):
        RetrySchedule(waits=(5, 0))
    with pytest.raises(ValueError, match="jitter"):
        RetrySchedule(jitter=1.5)
    with pytest.raises(ValueError, match="from 1"):
        short.next_wait(0)
