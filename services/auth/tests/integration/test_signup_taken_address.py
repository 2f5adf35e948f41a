"""Sign-ups on a taken address (issue 9 items 8 and 9): a parallel race for one new address
answers like any taken-address sign-up (never a 500), and the owner's notices are throttled
per address (the answer stays the same)."""

from __future__ import annotations

import asyncio

import pytest

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
RACERS = 6


def _count(auth, query: str, *args: object) -> int:
    with auth.db() as conn:
        return conn.execute(query, args).fetchone()[0]


def _notices(auth) -> int:
    # Every new account also gets its verification email (one account token each).
    sent = _count(auth, "SELECT count(*) FROM mail_outbox")
    links = _count(
        auth, "SELECT count(*) FROM account_tokens WHERE purpose = %s", "email_verification"
    )
    return sent - links


async def test_parallel_sign_ups_with_one_new_email_all_get_the_usual_answer(auth) -> None:
    for round_ in range(4):
        email = f"race{round_}@example.com"
        results = await asyncio.gather(
            *(auth.sign_up(email, name=f"Racer {i}") for i in range(RACERS)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == []  # before the fix: INTERNAL from an unmapped IntegrityError
        assert all(isinstance(r, pb.SignUpResponse) and r.user_id for r in results)
    assert _count(auth, "SELECT count(*) FROM users") == 4
    assert len(auth.events("user.signed_up")) == 4
    assert len(auth.events("user.signup_existing_email")) == 4 * (RACERS - 1)
    for round_ in range(4):
        await auth.login(f"race{round_}@example.com")


async def test_taken_address_notices_are_throttled_per_address(auth) -> None:
    await auth.sign_up("owner@example.com")
    await auth.sign_up("other@example.com")
    assert _notices(auth) == 0
    answers = [await auth.sign_up("owner@example.com") for _ in range(5)]
    assert _notices(auth) == 1  # one email, not five
    assert len(auth.events("user.signup_existing_email")) == 5  # each still logged
    assert {type(a) for a in answers} == {pb.SignUpResponse}
    await auth.sign_up("other@example.com")  # another address has its own allowance
    assert _notices(auth) == 2
    auth.clock.advance(3601)
    await auth.sign_up("owner@example.com")
    assert _notices(auth) == 3
