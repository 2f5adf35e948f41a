"""The two-token session's rotation table, with the injectable clock (no sleeps)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


async def _refused(call) -> str | None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return _code(caught.value)


@pytest.fixture
async def signed_in(auth):
    await auth.sign_up("rotate@example.com")
    return await auth.login("rotate@example.com")


async def test_refresh_rotates_both_tokens(auth, signed_in) -> None:
    rotated = await auth.refresh(signed_in.refresh_token)
    assert rotated.refresh_token != signed_in.refresh_token
    assert rotated.access_token != signed_in.access_token
    assert (await auth.validate(rotated.access_token)).session_id == (
        await auth.validate(signed_in.access_token)
    ).session_id


async def test_within_grace_the_old_token_returns_the_same_successor(auth, signed_in) -> None:
    first = await auth.refresh(signed_in.refresh_token)
    auth.clock.advance(59)
    again = await auth.refresh(signed_in.refresh_token)
    assert again.refresh_token == first.refresh_token  # one chain, not a branch
    assert again.access_token != first.access_token
    await auth.validate(again.access_token)
    await auth.validate(first.access_token)
    next_one = await auth.refresh(first.refresh_token)  # the family lives on
    await auth.validate(next_one.access_token)


async def test_after_grace_replay_revokes_the_whole_family(auth, signed_in) -> None:
    first = await auth.refresh(signed_in.refresh_token)
    second = await auth.refresh(first.refresh_token)
    auth.clock.advance(61)
    assert await _refused(auth.refresh(signed_in.refresh_token)) == "token_reused"
    # Every token of the family is dead: access tokens old and new, the live refresh token.
    for access in (signed_in.access_token, first.access_token, second.access_token):
        assert await _refused(auth.validate(access)) == "session_revoked"
    assert await _refused(auth.refresh(second.refresh_token)) == "session_revoked"
    [event] = auth.events("session.refresh_reuse_detected")
    assert json.loads(event)["reason"] == "refresh_reuse"


async def test_refresh_token_idle_expiry(auth, signed_in) -> None:
    auth.clock.advance(24 * 3600 + 1)
    assert await _refused(auth.refresh(signed_in.refresh_token)) == "token_expired"


async def test_access_token_expires_after_an_hour(auth, signed_in) -> None:
    auth.clock.advance(3599)
    await auth.validate(signed_in.access_token)
    auth.clock.advance(1)
    assert await _refused(auth.validate(signed_in.access_token)) == "token_expired"


async def test_absolute_expiry_however_often_refreshed(auth, signed_in) -> None:
    tokens = signed_in
    for _ in range(7):  # 7 days of daily refreshes reach the absolute session lifetime
        auth.clock.advance(23 * 3600)
        tokens = await auth.refresh(tokens.refresh_token)
    auth.clock.advance(23 * 3600)
    assert await _refused(auth.refresh(tokens.refresh_token)) == "token_expired"
    assert await _refused(auth.validate(tokens.access_token)) == "token_expired"


async def test_remember_me_lives_thirty_days(auth) -> None:
    await auth.sign_up("remember@example.com")
    tokens = await auth.login("remember@example.com", remember_me=True)
    auth.clock.advance(29 * 24 * 3600)
    tokens = await auth.refresh(tokens.refresh_token)
    auth.clock.advance(2 * 24 * 3600)
    assert await _refused(auth.refresh(tokens.refresh_token)) == "token_expired"


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda t: t.access_token, "wrong_token_type"),
        (lambda t: t.refresh_token[:-1], "invalid_token"),
        (lambda t: t.refresh_token + "A", "invalid_token"),
        (lambda t: "plsd_rt_" + "A" * 43, "invalid_token"),
        (lambda t: "garbage", "invalid_token"),
        (lambda t: "", "invalid_token"),
        (lambda t: t.refresh_token.replace("plsd_rt_", "plsd_xx_"), "invalid_token"),
    ],
)
async def test_bad_refresh_tokens_get_distinct_codes(auth, signed_in, mangle, code) -> None:
    assert await _refused(auth.refresh(mangle(signed_in))) == code


async def test_refresh_token_used_as_access_token_is_refused(auth, signed_in) -> None:
    assert await _refused(auth.validate(signed_in.refresh_token)) == "wrong_token_type"


async def test_fifty_parallel_refreshes_across_two_replicas(auth_factory) -> None:
    async with auth_factory(replicas=2) as auth:
        await auth.sign_up("race@example.com")
        tokens = await auth.login("race@example.com")
        results = await asyncio.gather(
            *(auth.refresh(tokens.refresh_token, stub=auth.stubs[i % 2]) for i in range(50))
        )
        assert len({r.refresh_token for r in results}) == 1  # one successor, one chain
        assert len({r.access_token for r in results}) == 50
        for result in results[:5]:
            await auth.validate(result.access_token)
        with auth.db() as conn:
            rows = conn.execute(
                "SELECT rotated_at IS NOT NULL FROM refresh_tokens ORDER BY created_at"
            ).fetchall()
            revoked = conn.execute("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL")
            assert revoked.fetchone()[0] == 0
        assert [r[0] for r in rows] == [True, False]
        # ...and the family keeps rotating normally.
        onward = await auth.refresh(results[0].refresh_token, stub=auth.stubs[1])
        await auth.validate(onward.access_token)


async def test_replay_after_grace_on_the_other_replica_kills_the_family(auth_factory) -> None:
    async with auth_factory(replicas=2) as auth:
        await auth.sign_up("replay@example.com")
        tokens = await auth.login("replay@example.com")
        fresh = await auth.refresh(tokens.refresh_token, stub=auth.stubs[0])
        auth.clock.advance(120)
        assert await _refused(auth.refresh(tokens.refresh_token, stub=auth.stubs[1])) == (
            "token_reused"
        )
        assert await _refused(auth.refresh(fresh.refresh_token, stub=auth.stubs[0])) == (
            "session_revoked"
        )
