"""Legacy bcrypt upgrade, Argon2 parameter re-hash, throttling, and a crypto outage."""

from __future__ import annotations

import bcrypt
import grpc
import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
PASSWORD = "correct horse battery staple"


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


def _stored_hash(auth) -> str:
    with auth.db() as conn:
        return conn.execute("SELECT password_hash FROM users").fetchone()[0]


def _set_hash(auth, value: str) -> None:
    with auth.db() as conn:
        conn.execute("UPDATE users SET password_hash = %s", (value,))


async def test_legacy_bcrypt_logs_in_and_is_upgraded(auth) -> None:
    await auth.sign_up("legacy@example.com")
    legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    _set_hash(auth, legacy)
    with pytest.raises(grpc.aio.AioRpcError):
        await auth.login("legacy@example.com", "wrong password here")
    assert _stored_hash(auth) == legacy  # a failed login leaves it as is
    await auth.login("legacy@example.com")
    upgraded = _stored_hash(auth)
    assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    await auth.login("legacy@example.com")  # and the new hash works


async def test_outdated_argon2_parameters_are_rehashed_at_login(auth_factory) -> None:
    async with auth_factory() as auth:
        await auth.sign_up("params@example.com")
        assert ",t=2," in _stored_hash(auth)
    async with auth_factory(argon2_time_cost=3) as auth:
        await auth.login("params@example.com")
        assert _stored_hash(auth).startswith("$argon2id$v=19$m=19456,t=3,p=1$")


THROTTLE = {
    "throttle_account_ip_failures": 3,
    "throttle_ip_failures": 5,
    "throttle_account_failures": 8,
    "throttle_window_seconds": 600,
    "throttle_account_window_seconds": 3600,
}


async def _fail(auth, email: str, ip: str) -> str | None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.login(email, "wrong password here", ip=ip)
    return _code(caught.value)


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "embedded"])
async def test_throttling_per_account_and_ip(auth_factory, use_redis) -> None:
    async with auth_factory(use_redis=use_redis, **THROTTLE) as auth:
        await auth.sign_up("victim@example.com")
        attacker, user = "192.0.2.66", "198.51.100.20"
        for _ in range(3):
            assert await _fail(auth, "victim@example.com", attacker) == "invalid_credentials"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.login("victim@example.com", ip=attacker)  # even the right password
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _code(caught.value) == "rate_limited"
        retry_after = int(dict(caught.value.trailing_metadata())["retry-after"])
        assert 0 < retry_after <= 600
        # The real user, elsewhere, is not locked out; success resets the account's count.
        await auth.login("victim@example.com", ip=user)
        # The attacker's IP is throttled across accounts once it reaches its own limit
        # (5 failures; the refused attempt above was not one).
        assert await _fail(auth, "other@example.com", attacker) == "invalid_credentials"
        assert await _fail(auth, "third@example.com", attacker) == "invalid_credentials"
        assert await _fail(auth, "fourth@example.com", attacker) == "rate_limited"
        # Time, not sleep: past the window the IP may try again.
        auth.clock.advance(601)
        assert await _fail(auth, "other@example.com", attacker) == "invalid_credentials"


async def test_account_cap_holds_across_many_ips(auth_factory) -> None:
    async with auth_factory(**THROTTLE) as auth:
        await auth.sign_up("target@example.com")
        for i in range(8):  # a distributed attack: one failure per IP
            assert await _fail(auth, "target@example.com", f"192.0.2.{i}") == (
                "invalid_credentials"
            )
        assert await _fail(auth, "target@example.com", "192.0.2.200") == "rate_limited"
        # Unknown accounts are throttled the same way (no enumeration through 429s).
        for i in range(8):
            await _fail(auth, "ghost@example.com", f"198.18.0.{i}")
        assert await _fail(auth, "ghost@example.com", "198.18.0.200") == "rate_limited"


async def test_crypto_outage_fails_closed_with_unavailable(auth_factory) -> None:
    async with auth_factory() as auth:
        await auth.sign_up("outage@example.com")
        await auth.crypto_stop()
        for call in (auth.sign_up("new@example.com"), auth.login("outage@example.com")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with auth.db() as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
