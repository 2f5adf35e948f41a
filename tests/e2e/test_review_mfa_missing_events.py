"""Review: SECURITY.md 37, every authentication outcome and authorization failure is logged.
Each test makes one refused request and expects a new security event for it."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pyotp
import pytest

from .conftest import PASSWORD, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _events(suite: Suite) -> list[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(suite.auth_database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        rows = conn.execute("SELECT event_type FROM outbox_events ORDER BY id").fetchall()
    return [r[0] for r in rows]


async def _enrolled(suite: Suite) -> tuple[str, str, str]:
    email = f"ev-{uuid.uuid4().hex[:10]}@example.com"
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    _, body, _ = await suite.json_call("POST", "/v1/me/totp", token=access)
    secret = body["secret"]
    status, _, _ = await suite.json_call(
        "POST",
        "/v1/me/totp/confirm",
        token=access,
        json={"code": pyotp.TOTP(secret).at(suite.clock.now())},
    )
    assert status == 200
    return email, secret, access


async def _mfa_token(suite: Suite, email: str) -> str:
    _, body, _ = await suite.json_call(
        "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    return body["mfaToken"]


async def test_an_expired_mfa_token_is_logged(suite: Suite) -> None:
    email, secret, _ = await _enrolled(suite)
    mfa_token = await _mfa_token(suite, email)
    suite.clock.advance(timedelta(minutes=6))
    before = _events(suite)
    status, _, _ = await suite.json_call(
        "POST",
        "/v1/auth/login/mfa",
        json={"mfaToken": mfa_token, "code": pyotp.TOTP(secret).at(suite.clock.now())},
    )
    assert status == 401
    assert len(_events(suite)) > len(before), "a refused second-factor step left no event"


async def test_a_throttled_second_factor_attempt_is_logged(suite: Suite) -> None:
    email, secret, _ = await _enrolled(suite)
    mfa_token = await _mfa_token(suite, email)
    for _ in range(10):
        await suite.json_call(
            "POST", "/v1/auth/login/mfa", json={"mfaToken": mfa_token, "code": "000000"}
        )
    before = _events(suite)
    status, _, _ = await suite.json_call(
        "POST",
        "/v1/auth/login/mfa",
        json={"mfaToken": mfa_token, "code": pyotp.TOTP(secret).at(suite.clock.now())},
    )
    assert status == 429
    assert len(_events(suite)) > len(before), "a throttled code (maybe the right one) left no event"


async def test_a_refused_totp_disable_is_logged(suite: Suite) -> None:
    """A stolen, old access token trying to switch off the second factor: an authz failure."""
    _, _, access = await _enrolled(suite)
    suite.clock.advance(timedelta(minutes=11))
    before = _events(suite)
    status, _, _ = await suite.json_call("DELETE", "/v1/me/totp", token=access)
    assert status == 403
    assert len(_events(suite)) > len(before), "recent_auth_required left no event"
